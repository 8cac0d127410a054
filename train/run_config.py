"""What a run records of its configuration, with secrets redacted: config.yaml in the output folder, and the recipe
and argv the W&B run is given (mmpc_rl.train.callbacks.init_wandb). Saved configs must never hold credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mmpc_rl.config import Recipe
from mmpc_rl.io import atomic_write_text

SECRET_MARKERS = ("token", "api_key", "apikey", "password", "secret")


def scrub(node: Any) -> Any:
    """Drop values whose key looks like a secret."""
    if isinstance(node, dict):
        return {k: ("<redacted>" if any(m in str(k).lower() for m in SECRET_MARKERS) and v else scrub(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [scrub(v) for v in node]
    return node


def scrub_argv(argv: list[str]) -> list[str]:
    """`key=value` arguments with the values of secret-looking keys redacted (as `scrub` does to a tree)."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        secret = eq and value and any(m in key.split(".")[-1].lower() for m in SECRET_MARKERS)
        out.append(f"{key}=<redacted>" if secret else arg)
    return out


def save_config(recipe: Recipe, output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir) / "config.yaml"
    text = OmegaConf.to_yaml(OmegaConf.create(scrub(recipe.to_dict())))
    atomic_write_text(path, text)
    return path
