"""Tiny random models with the real architectures, built in-process (no hub anywhere here): the tests and the demo.

Importing this package registers `tiny://` with the model loader (`mmpc_rl.models.hub.register_scheme`); from then
on `tiny://NAME` works wherever a model id or path is accepted. The loader cannot import these builders itself: they
sit above it (the tokenizer is trained on the sample catalog's words, the SFT model on its items). So the layers that
take model names from users import this package: train/, eval/ and rewards/ (which covers the CLI, `train/grpo.py`
under accelerate, library use of those packages) and the tests' conftest. A builder writes a folder that the real
loaders read with `from_pretrained`, cached under `<cache>/tiny/NAME` (mmpc_rl.data.default_cache_dir).
"""

from __future__ import annotations

import os
from pathlib import Path

from mmpc_rl.data import default_cache_dir
from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.models.hub import register_scheme
from mmpc_rl.tiny import clip, qwen, qwen_sft, sd3

# name -> the module whose build(out_dir) writes the model; its VERSION (default "1") rebuilds older cached copies
BUILDERS = {
    "qwen2.5-vl": qwen,
    "qwen2.5-vl-sft": qwen_sft,  # the demo's policy: already answers in JSON
    "sd3": sd3,
    "clip": clip,
}


def tiny_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """Folder of tiny model NAME, built on first use (the marker file is written last, so a kill rebuilds)."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown tiny model tiny://{name}" + did_you_mean(name, BUILDERS))
    out = Path(root) if root else default_cache_dir() / "tiny" / name
    module = BUILDERS[name]
    version = str(getattr(module, "VERSION", "1"))
    marker = out / ".complete"
    if not marker.exists() or marker.read_text().strip() != version:
        out.mkdir(parents=True, exist_ok=True)
        module.build(out)
        marker.write_text(version + "\n")
    return out


def resolve(name_or_path: str) -> str:
    """The local folder of a `tiny://NAME` reference (built on first use); any other name or path unchanged."""
    name_or_path = str(name_or_path)
    if name_or_path.startswith("tiny://"):
        return str(tiny_path(name_or_path[len("tiny://"):]))
    return name_or_path


register_scheme("tiny", resolve)
