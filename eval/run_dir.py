"""`mmpc-rl eval cqbench adapter=RUN_DIR` without `models=`: the base, and how it was loaded, asked and scored, from
the training run that made the adapter.

A run folder holds the adapter (adapter_config.json names its base) and the run's resolved recipe (config.yaml).
The recipe's `model` section gives the base and how it loads (ModelLoading: dtype, qlora, attention, pixel bounds),
its `data` section the items and prompt (ItemSelection, and data.path), its `eval` section how CQBench scored during
training (CQBenchScoring, and items_per_category as `limit`), so the comparison is the run's own CQBench: the base
arm is its "before", the adapter arm its "after" (the final adapter). A `checkpoint-N` folder reads the
config.yaml of the run above it. Keys given on the command line win; `profile=` sets what neither names.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from omegaconf import OmegaConf

from mmpc_rl.config import CQBenchScoring, ItemSelection, ModelLoading
from mmpc_rl.errors import ConfigError, ModelLoadError
from mmpc_rl.eval.profiles import given_keys


def _names(schema) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def adapter_base(adapter: str | Path) -> str | None:
    """The base model an adapter folder names (PEFT's `base_model_name_or_path`)."""
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        raise ModelLoadError(f"adapter={str(adapter)!r} is not a LoRA folder (no adapter_config.json there)")
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        raise ModelLoadError(f"{path} is not a readable adapter config (JSON object)") from None
    return base if isinstance(base, str) and base else None


def run_recipe(adapter: str | Path) -> dict | None:
    """The resolved recipe (config.yaml) of the run an adapter folder belongs to, or None."""
    folder = Path(adapter)
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.is_file():
            try:
                tree = OmegaConf.to_container(OmegaConf.load(candidate), resolve=False)
            except Exception as e:  # noqa: BLE001 - any unreadable recipe is one line
                raise ConfigError(f"{candidate}: not a readable run config ({' '.join(str(e).split())})") from None
            return tree if isinstance(tree, dict) else None
    return None


def from_run(cfg, argv: list[str]):
    """`cfg` with what adapter=RUN_DIR's run trained and evaluated with, for every key `argv` leaves out; unchanged
    unless an adapter is given without models=."""
    given = given_keys(argv)
    if not cfg.adapter or "models" in given:
        return cfg
    base, run = adapter_base(cfg.adapter), run_recipe(cfg.adapter)
    changes: dict = {}
    if run:
        model, data, ev = (run.get(k) or {} for k in ("model", "data", "eval"))
        base = model.get("name_or_path") or base  # the id the run was given; the adapter's may be a cache folder
        changes |= {k: model[k] for k in _names(ModelLoading) if k in model}
        changes |= {k: data[k] for k in _names(ItemSelection) if k in data}
        changes |= {k: ev[k] for k in _names(CQBenchScoring) if k in ev}
        changes["categories"] = ev.get("categories") or data.get("categories")
        changes["limit"] = ev.get("items_per_category")  # the run's own CQBench items: its numbers reproduce
        changes |= {"data": data.get("path", cfg.data), "tasks": [run.get("task") or cfg.tasks[0]]}
    if base is None:
        raise ConfigError(f"adapter={cfg.adapter!r} names no base model and has no run config.yaml: add models=[...]")
    if Path(base).is_absolute() and not Path(base).exists():
        raise ModelLoadError(f"adapter={cfg.adapter!r} was trained on {base}, which is not on this machine: "
                             "add models=[ID or folder of that base]")
    changes["models"] = [base]
    fields = set(_names(type(cfg)))
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if k in fields and k not in given})
