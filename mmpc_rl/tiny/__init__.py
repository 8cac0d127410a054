"""Tiny random models with the real architectures, built in-process (no hub anywhere here): the tests and the demo.

`tiny://NAME` works wherever a model id or path is accepted (`mmpc_rl.models.resolve_model_path`): the builder
writes a folder that the real loaders read with `from_pretrained`, cached under `~/.cache/mmpc_rl/tiny/NAME`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from mmpc_rl.errors import ConfigError, did_you_mean

# name -> "module:function"; the function takes an output folder and writes the model there.
BUILDERS = {
    "qwen2.5-vl": "mmpc_rl.tiny.qwen:build",
    "qwen2.5-vl-sft": "mmpc_rl.tiny.qwen_sft:build",  # the demo's policy: already answers in JSON
    "sd3": "mmpc_rl.tiny.sd3:build",
    "clip": "mmpc_rl.tiny.clip:build",
}


def cache_root() -> Path:
    return Path(os.environ.get("MMPC_RL_CACHE", Path.home() / ".cache" / "mmpc_rl"))


def tiny_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model NAME, built on first use (the marker file is written last, so a kill rebuilds)."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown tiny model tiny://{name}" + did_you_mean(name, BUILDERS))
    out = Path(root) if root else cache_root() / "tiny" / name
    module_name, func = BUILDERS[name].split(":")
    module = importlib.import_module(module_name)
    version = str(getattr(module, "VERSION", "1"))
    marker = out / ".complete"
    if not marker.exists() or marker.read_text().strip() != version:
        out.mkdir(parents=True, exist_ok=True)
        getattr(module, func)(out)
        marker.write_text(version + "\n")
    return out


def resolve(name_or_path: str) -> str:
    """The local folder of a `tiny://NAME` reference (built on first use); any other name or path unchanged."""
    name_or_path = str(name_or_path)
    if name_or_path.startswith("tiny://"):
        return str(tiny_path(name_or_path[len("tiny://"):]))
    return name_or_path
