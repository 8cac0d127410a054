"""Picking a checkpoint to resume from: only complete ones (a kill mid-save leaves a folder without its state).

The HF Trainer writes a checkpoint in this order: weights, optimizer.pt + scheduler.pt, rng_state*.pth, and
trainer_state.json last (not atomically). So a checkpoint is complete when all of these exist, are non-empty, and
trainer_state.json parses and names the folder's own step; anything else is a folder the kill interrupted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")


def _nonempty(p: Path) -> bool:
    return p.is_file() and p.stat().st_size > 0


def is_complete(ckpt: str | Path) -> bool:
    ckpt = Path(ckpt)
    if not all(_nonempty(ckpt / name) for name in REQUIRED):
        return False
    if not any(_nonempty(ckpt / name) for name in WEIGHTS):
        return False
    if not any(_nonempty(p) for p in ckpt.glob("rng_state*.pth")):
        return False
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (ValueError, OSError):
        return False
    m = re.fullmatch(r"checkpoint-(\d+)", ckpt.name)
    return isinstance(state, dict) and (m is None or state.get("global_step") == int(m.group(1)))


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The highest-step complete `checkpoint-N` in output_dir, or None (a fresh start)."""
    out = Path(output_dir)
    steps = []
    for p in out.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir():
            steps.append((int(m.group(1)), p))
    for _, ckpt in sorted(steps, reverse=True):
        if is_complete(ckpt):
            return str(ckpt)
    return None


def resume_point(args) -> str | bool | None:
    """trainer.resume_from_checkpoint: a checkpoint folder, or `auto` for the last complete one in output_dir."""
    value = args.resume_from_checkpoint
    if value in (None, "", False):
        return None
    if str(value).lower() == "auto":
        return last_complete_checkpoint(args.output_dir)
    return value


def finished_run(trainer: Mapping[str, Any]) -> str | None:
    """Why resuming has nothing to train, or None. A run that reached its max_steps, resumed, would train one more
    step past it and overwrite its final adapter; the entry point stops instead. The state read is the one the run
    left with its final adapter (RunEnd writes output_dir/trainer_state.json), else the checkpoint it would resume."""
    value = trainer.get("resume_from_checkpoint")
    if value in (None, "", False):
        return None
    out = Path(str(trainer.get("output_dir")))
    if value is True or str(value).lower() == "auto":
        final = out / "trainer_state.json"
        if final.is_file() and any(_nonempty(out / w) for w in WEIGHTS):
            source = final
        else:
            ckpt = last_complete_checkpoint(out)
            source = Path(ckpt) / "trainer_state.json" if ckpt else None
    else:
        source = Path(str(value)) / "trainer_state.json"
    try:
        state = json.loads(source.read_text()) if source is not None else None
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return None
    step, wanted = state["global_step"], trainer.get("max_steps", -1)
    if wanted is None or wanted <= 0:  # epoch-based: finished if the epochs asked for are the ones it ran
        if float(trainer.get("num_train_epochs", 3.0)) > float(state.get("num_train_epochs") or 0):
            return None
        wanted = state.get("max_steps") or 0
    if wanted <= 0 or step < wanted:
        return None
    return (f"the run in {out} already finished at step {step} (max_steps={wanted}), see {source}; nothing to "
            "train and its adapter is left as it is (raise trainer.max_steps to train on, or use a new output_dir)")
