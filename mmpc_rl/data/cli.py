"""`mmpc-rl data sample out=DIR [base_url=URL] [seed=0]` and `mmpc-rl data build source=DIR out=DIR ...`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from mmpc_rl.data.build import DEFAULTS, build
from mmpc_rl.data.sample import build_sample_catalog
from mmpc_rl.errors import ConfigError
from mmpc_rl.io import prepare_output_dir
from mmpc_rl.options import parse_options

USAGE = ("usage: mmpc-rl data sample out=DIR [base_url=URL] [seed=0]\n"
         "       mmpc-rl data build source=DIR|hub out=DIR [categories=[...]] [cqbench_per_category=1000] "
         "[cqbench_population=filtered|catalog] ...")


def options(argv: list[str], valid: dict[str, object], required: tuple[str, ...], command: str,
            usage: str) -> dict:
    """key=value args as a dict typed like the defaults (through the one option parser); an unknown key names the
    valid ones, a value of the wrong type is one line."""
    typed = {bool: bool, int: int, float: float, str: str}
    schema = dataclasses.make_dataclass("Options", [
        (k, typed.get(type(v), Any) | None if v is None or type(v) not in typed else typed[type(v)],
         dataclasses.field(default=v)) for k, v in valid.items()])
    opts = dataclasses.asdict(parse_options(schema, argv, command, usage=usage))
    for key in required:
        if opts.get(key) in (None, ""):
            raise ConfigError(f"{key}= is required\n{USAGE}")
    return opts


def sample(argv: list[str]) -> int:
    opts = options(argv, {"out": None, "base_url": None, "seed": 0}, ("out",), "mmpc-rl data sample",
                   USAGE.splitlines()[0])
    prepare_output_dir(str(opts["out"]))
    out = build_sample_catalog(str(opts["out"]), base_url=opts["base_url"], seed=opts["seed"])
    print(f"sample catalog: {out}")
    return 0


def build_main(argv: list[str]) -> int:
    opts = options(argv, DEFAULTS, ("source", "out"), "mmpc-rl data build",
                   "usage: " + USAGE.splitlines()[1].strip() + "\n(docs/data.md explains each key)")
    out = build(**opts)
    summary = json.loads((out / "summary.json").read_text())
    for cat, s in summary["categories"].items():
        rec = s["recbench"]
        print(f"{cat}: {s['eligible']}/{s['items']} eligible, cqbench {s['cqbench']}, train {s['train']}, "
              f"recbench {rec.get('users', 0)} users / {rec.get('items', 0)} items / "
              f"{rec.get('interactions', 0)} interactions ({rec.get('train_interactions', 0)} train), "
              f"{sum(s['failed_images']['counts'].values())} failed images")
        if s["cqbench_population"]["note"]:
            print(f"{cat}: {s['cqbench_population']['note']}")
    print(f"{summary['images_downloaded_this_run']} images downloaded; summary: {out / 'summary.json'}")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    sub, rest = argv[0], argv[1:]
    if sub == "sample":
        return sample(rest)
    if sub == "build":
        return build_main(rest)
    raise ConfigError(f"unknown data command {sub!r}; valid choices: build, sample")
