"""`mmpc-rl data sample out=DIR [base_url=URL] [seed=0]` and `mmpc-rl data build source=DIR out=DIR ...`."""

from __future__ import annotations

from mmpc_rl.config import parse_overrides
from mmpc_rl.errors import ConfigError, did_you_mean

USAGE = ("usage: mmpc-rl data sample out=DIR [base_url=URL] [seed=0]\n"
         "       mmpc-rl data build source=DIR|hub out=DIR [categories=[...]] [cqbench_per_category=1000] ...")


def options(argv: list[str], valid: dict[str, object], required: tuple[str, ...]) -> dict:
    """key=value args as a dict typed like the defaults; an unknown key names the valid ones."""
    from omegaconf import OmegaConf

    _, dotlist = parse_overrides(argv)
    try:
        given = OmegaConf.to_container(OmegaConf.from_dotlist(dotlist), resolve=True)
    except Exception as e:  # OmegaConf raises several unrelated types for bad syntax
        raise ConfigError(f"bad option: {e}") from None
    for key in given:
        if key not in valid:
            raise ConfigError(f"unknown option {key!r}" + did_you_mean(str(key), valid))
    for key in required:
        if given.get(key) in (None, ""):
            raise ConfigError(f"{key}= is required\n{USAGE}")
    opts = dict(valid)
    opts.update(given)
    for key, default in valid.items():
        if isinstance(default, int) and not isinstance(opts[key], int):
            raise ConfigError(f"{key} must be an integer, got {opts[key]!r}")
    return opts


def sample(argv: list[str]) -> int:
    from mmpc_rl.data.sample import build_sample_catalog

    opts = options(argv, {"out": None, "base_url": None, "seed": 0}, ("out",))
    out = build_sample_catalog(str(opts["out"]), base_url=opts["base_url"], seed=opts["seed"])
    print(f"sample catalog: {out}")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    sub, rest = argv[0], argv[1:]
    if sub == "sample":
        return sample(rest)
    if sub == "build":
        from mmpc_rl.data.build import main as build_main

        return build_main(rest)
    raise ConfigError(f"unknown data command {sub!r}; valid choices: build, sample")
