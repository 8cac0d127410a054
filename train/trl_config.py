"""The TRL and PEFT objects of a Recipe: `trl.GRPOConfig` from `trainer` (reward weights from `rewards`) and
`peft.LoraConfig` from `lora`. The recipe checked their keys and values while it was built (mmpc_rl.checks)."""

from __future__ import annotations

import torch
from peft import LoraConfig
from trl import GRPOConfig

from mmpc_rl.checks import TRAINER_ALIASES
from mmpc_rl.config import Recipe, thaw
from mmpc_rl.errors import ConfigError

TRL_DEFAULTS = {"gradient_checkpointing": True}  # what TRL sets when the recipe says nothing


def build_lora_config(recipe: Recipe) -> LoraConfig | None:
    if not recipe.lora:
        return None
    try:
        return LoraConfig(**thaw(recipe.lora))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"lora: {e}") from None


def build_grpo_config(recipe: Recipe) -> GRPOConfig:
    """trl.GRPOConfig from `trainer`, with reward weights from `rewards.<name>.weight` in recipe order."""
    opts = thaw(recipe.trainer)
    if opts.get("per_device_train_batch_size") is None:
        # TRL's default (8) would be checked against the group size with a message about generation batches
        raise ConfigError("the recipe leaves its memory layout open (trainer.per_device_train_batch_size unset): "
                          "resolve it first with mmpc_rl.train.builder.resolve_layout(recipe), as build_trainer does")
    opts.pop("overwrite_output_dir", None)  # ours, not GRPOConfig's (mmpc_rl.checks.TRAINER_EXTRA)
    opts["reward_weights"] = recipe.reward_weights
    if recipe.model.device == "cpu":
        opts.update(use_cpu=True, bf16=False, fp16=False)
    elif not torch.cuda.is_available() and not opts.get("use_cpu"):
        # TRL would stop with "Your setup doesn't support bf16/gpu"; for a policy under 1 B parameters (a >= 1 B one
        # was refused by train.cuda_check) a CPU run is what a user without a GPU means, so say so and go on.
        print("mmpc-rl: no CUDA device found: training on CPU in float32 (model.device=cpu says so)")
        opts.update(use_cpu=True, bf16=False, fp16=False)
    for key, value in opts.items():
        if key.endswith("_strategy") and isinstance(value, bool):
            opts[key] = "no" if value is False else "steps"  # YAML 1.1 reads `no` as false
    if opts.get("report_to") in (None, [], "none"):
        opts["report_to"] = "none"
    # transformers 5 renamed gradient_checkpointing* to activation_checkpointing* (the old names warn on every run);
    # TRL's own default (True) is kept when the recipe says nothing, and TRL reads the old names, which transformers
    # sets to mirror the new ones
    for new, old in TRAINER_ALIASES.items():
        value = opts.pop(old, TRL_DEFAULTS.get(old))
        opts[new], opts[old] = value, None
    try:
        return GRPOConfig(**opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer: {e}") from None
