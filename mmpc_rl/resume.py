"""Picking a checkpoint to resume from: only complete ones (a kill mid-save leaves a folder without its state)."""

from __future__ import annotations

import json
import re
from pathlib import Path

# What the HF Trainer writes for a checkpoint; trainer_state.json comes last in `_save_checkpoint`.
REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def is_complete(ckpt: Path) -> bool:
    if not all((ckpt / name).is_file() and (ckpt / name).stat().st_size > 0 for name in REQUIRED):
        return False
    if not any(ckpt.glob("adapter_model.safetensors")) and not any(ckpt.glob("model*.safetensors")):
        return False
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except ValueError:
        return False
    return True


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
