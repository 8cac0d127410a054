"""Picking a checkpoint to resume from: only complete ones (a kill mid-save leaves a folder without its state).

The HF Trainer writes a checkpoint in this order: weights, optimizer.pt + scheduler.pt, rng_state*.pth, and
trainer_state.json last (not atomically). So a checkpoint is complete when all of these exist, are non-empty, and
trainer_state.json parses and names the folder's own step; anything else is a folder the kill interrupted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

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
