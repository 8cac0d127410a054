"""What a run records of its configuration, with secrets redacted: config.yaml in the output folder, and the recipe
and argv the W&B run is given (mmpc_rl.train.callbacks.init_wandb). Saved configs must never hold credentials."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mmpc_rl.config import Recipe
from mmpc_rl.io import atomic_write_text

# Key names whose values are credentials: GRPOConfig's `hub_token`, a W&B or hub key given where it does not belong.
# By name, not by substring: `max_new_tokens`, `pad_token` and `max_completion_length` are settings, and a saved
# config must show them.
SECRET_KEYS = frozenset({"hub_token", "push_to_hub_token", "token", "hf_token", "access_token", "auth_token",
                         "api_key", "apikey", "wandb_api_key", "openai_api_key", "password", "passwd", "secret",
                         "secret_key", "client_secret", "private_key"})


def is_secret(key: Any) -> bool:
    return str(key).lower().rsplit(".", 1)[-1] in SECRET_KEYS


def scrub(node: Any) -> Any:
    """Drop the values of credential keys (SECRET_KEYS)."""
    if isinstance(node, dict):
        return {k: ("<redacted>" if is_secret(k) and v else scrub(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [scrub(v) for v in node]
    return node


def scrub_argv(argv: list[str]) -> list[str]:
    """`key=value` arguments with the values of credential keys redacted (as `scrub` does to a tree)."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        out.append(f"{key}=<redacted>" if eq and value and is_secret(key) else arg)
    return out


def save_config(recipe: Recipe, output_dir: str | os.PathLike) -> Path:
    path = Path(output_dir) / "config.yaml"
    text = OmegaConf.to_yaml(OmegaConf.create(scrub(recipe.to_dict())))
    atomic_write_text(path, text)
    return path
