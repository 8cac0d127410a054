"""Key and value checks of a recipe's `trainer` and `lora` mappings, run while the recipe is built: the valid keys
are the fields of the object each mapping becomes, and a value TRL or peft would reject late (after ~30 s of model
loading), or accept and train nonsense with (`learning_rate=1e400` gives an all-NaN adapter and exit 0), is one line
before anything loads.

Types come from the object each mapping becomes (trl.GRPOConfig, peft.LoraConfig): a field typed `int`/`float` (or
`... | None`) takes a finite number of that kind. Ranges are for the values whose nonsense is silent or slow."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmpc_rl.errors import ConfigError

AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "num_generations", "max_completion_length", "num_iterations")
POSITIVE = ("learning_rate",)
NON_NEGATIVE = ("beta", "temperature", "max_grad_norm", "weight_decay", "warmup_steps", "epsilon")


# `trainer` keys that are not GRPOConfig fields. overwrite_output_dir is the HF Trainer's flag (gone from transformers
# 5): a fresh run first removes another run's files from its output_dir (train/run_folder.py), instead of refusing.
TRAINER_EXTRA = ("overwrite_output_dir",)


def grpo_fields() -> list[str]:
    """The keys of a recipe's `trainer` section: trl.GRPOConfig's fields and TRAINER_EXTRA."""
    from trl import GRPOConfig  # TRL costs seconds to import: only when a recipe is checked

    return [f.name for f in dataclasses.fields(GRPOConfig) if f.init] + list(TRAINER_EXTRA)


def lora_fields() -> list[str]:
    from peft import LoraConfig

    return [f.name for f in dataclasses.fields(LoraConfig) if f.init]


def _number_type(tp: Any) -> type | None:
    """int or float when a dataclass field holds a number (or None), else None. peft annotates with strings."""
    if isinstance(tp, str):
        names = {s.strip() for s in tp.split("|")}
    else:
        names = {getattr(a, "__name__", str(a)) for a in (typing.get_args(tp) or (tp,))}
    names -= {"None", "NoneType"}
    if names == {"int"}:
        return int
    if names in ({"float"}, {"int", "float"}):
        return float
    return None


def check_numbers(section: str, given: Mapping[str, Any], schema: type) -> None:
    """Every value of a numeric field is a finite number of the field's kind (bools are not numbers here)."""
    kinds = {f.name: _number_type(f.type) for f in dataclasses.fields(schema) if f.init}
    for key, value in given.items():
        kind = kinds.get(key)
        if kind is None or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{section}.{key} must be a number ({kind.__name__}), got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{section}.{key}={value} is not a finite number")
        if kind is int and value != int(value):
            raise ConfigError(f"{section}.{key} must be a whole number, got {value!r}")


def check_trainer(trainer: Mapping[str, Any]) -> None:
    from trl import GRPOConfig  # only when a recipe is built (the key check imported it already)

    check_numbers("trainer", trainer, GRPOConfig)
    for key in AT_LEAST_ONE:
        if trainer.get(key) is not None and trainer[key] < 1:
            raise ConfigError(f"trainer.{key}={trainer[key]}: must be at least 1")
    for key in POSITIVE:
        if trainer.get(key) is not None and trainer[key] <= 0:
            raise ConfigError(f"trainer.{key}={trainer[key]}: must be greater than 0")
    for key in NON_NEGATIVE:
        if trainer.get(key) is not None and trainer[key] < 0:
            raise ConfigError(f"trainer.{key}={trainer[key]}: must not be negative")
    steps = trainer.get("max_steps")
    if steps is not None and steps != -1 and steps < 1:
        raise ConfigError(f"trainer.max_steps={steps} trains nothing: give a number of steps >= 1, "
                          "or -1 to train trainer.num_train_epochs epochs")
    overwrite = trainer.get("overwrite_output_dir", False)
    if not isinstance(overwrite, bool):
        raise ConfigError(f"trainer.overwrite_output_dir must be true or false, got {overwrite!r}")
    resume = trainer.get("resume_from_checkpoint")
    if isinstance(resume, str) and resume and resume.lower() != "auto" and not Path(resume).is_dir():
        raise ConfigError(f"trainer.resume_from_checkpoint={resume!r} is not a folder "
                          "(give a checkpoint-N folder, or auto for the last complete one in trainer.output_dir)")


def check_lora(lora: Mapping[str, Any]) -> None:
    from peft import LoraConfig

    check_numbers("lora", lora, LoraConfig)
    if lora.get("r") is not None and lora["r"] < 1:
        raise ConfigError(f"lora.r={lora['r']}: the adapter rank must be at least 1")
    if lora.get("lora_dropout") is not None and not 0 <= lora["lora_dropout"] < 1:
        raise ConfigError(f"lora.lora_dropout={lora['lora_dropout']}: must be in [0, 1)")
