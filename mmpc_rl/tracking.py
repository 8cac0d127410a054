"""The W&B run, when one is active. wandb is optional: a process that never imported it has no run, so asking
costs nothing and needs no install."""

from __future__ import annotations

import sys
from types import ModuleType


def active_wandb() -> ModuleType | None:
    """The wandb module while a run is active (for `wandb.log`, `wandb.Image`, `wandb.run.summary`), else None."""
    wandb = sys.modules.get("wandb")
    return wandb if getattr(wandb, "run", None) is not None else None
