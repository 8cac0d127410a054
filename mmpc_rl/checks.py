"""Key and value checks of a recipe's `trainer` and `lora` mappings, run while the recipe is built: the valid keys
are the fields of the object each mapping becomes, and a value TRL or peft would reject late (after ~30 s of model
loading), or accept and train nonsense with (`learning_rate=1e400` gives an all-NaN adapter and exit 0), is one line
before anything loads.

Types come from the object each mapping becomes (trl.GRPOConfig, peft.LoraConfig): a field typed `int`/`float` (or
`... | None`) takes a finite number of that kind. Ranges are for the values whose nonsense is silent or slow.

The project's own option dataclasses (the recipe's model/data/eval/wandb sections, every subcommand's options) are
checked by `check_fields`: the type from the annotation, the range from the field's metadata (`at_least`,
`greater_than`, `one_of`), the same metadata `--help` shows (`describe_field`)."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmpc_rl.errors import ConfigError

AT_LEAST_ONE = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "num_generations", "max_completion_length", "num_iterations")
POSITIVE = ("learning_rate", "temperature")  # temperature 0 divides the logits by zero at the first generation
NON_NEGATIVE = ("beta", "max_grad_norm", "weight_decay", "warmup_steps", "epsilon")
# transformers deprecates the names users know (a FutureWarning on every run) for these; the recipe keeps the known
# name and trl_config passes the new one
TRAINER_ALIASES = {"activation_checkpointing": "gradient_checkpointing",
                   "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs"}


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
        if kind is int and (isinstance(value, float) or value != int(value)):  # 8.0 is refused, not truncated
            raise ConfigError(f"{section}.{key} must be a whole number, got {value!r}")


def trainer_aliases(trainer: Mapping[str, Any]) -> dict[str, Any]:
    """The trainer mapping under the names the recipe uses (`activation_checkpointing` -> `gradient_checkpointing`):
    the memory planner and the layout read one name."""
    out = dict(trainer)
    for new, old in TRAINER_ALIASES.items():
        if new in out:
            value = out.pop(new)
            if old in out and out[old] != value:
                raise ConfigError(f"trainer.{new}={value!r} and trainer.{old}={out[old]!r} disagree: "
                                  f"set trainer.{old} only")
            out[old] = value
    return out


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


# ------------------------------------------------------------------------------------- the project's own options
def at_least(n: float, **more: Any) -> dict[str, Any]:
    """Field metadata: the value (each element of a list) is >= n; `not_below="other"` also orders two fields."""
    return {"min": n, **more}


def greater_than(n: float) -> dict[str, Any]:
    return {"gt": n}


def one_of(*choices: Any) -> dict[str, Any]:
    return {"choices": choices}


def _kind(tp: Any) -> tuple[str, Any, bool]:
    """(kind, element type for lists, None allowed) of a resolved annotation; kind is one of bool, int, float, str,
    list, other."""
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else Any
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return "list", (typing.get_args(tp) or (Any,))[0], optional
    if tp in (bool, int, float, str):
        return tp.__name__, None, optional
    return "other", None, optional


WORDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "text"}


def _hints(schema: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(schema)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is simply not type-checked
        return {}


def _scalar(name: str, value: Any, kind: str, meta: Mapping[str, Any]) -> Any:
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be {WORDS[kind]}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name}={value} is not a finite number")
        if kind == "int" and isinstance(value, float):  # 8.0 is refused, not truncated
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{name}={value}: " + ("must not be negative" if meta["min"] == 0 else
                                                     f"must be at least {meta['min']}"))
        if "gt" in meta and value <= meta["gt"]:
            raise ConfigError(f"{name}={value}: must be greater than {meta['gt']}")
        value = float(value) if kind == "float" else value
    elif kind == "str":
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise ConfigError(f"{name} must be text, got {value!r}")
        value = str(value)  # `wandb.name=2024` is the text "2024"
    if "choices" in meta and value not in meta["choices"]:
        choices = [str(c) for c in meta["choices"]]
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{name}={value!r}{hint}; valid choices: {', '.join(choices)}")
    return value


def check_fields(section: str | None, schema: type, given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` (YAML-typed values for fields of the dataclass `schema`) checked against each field's annotation and
    metadata, converted where the meaning is plain: a bare value for a list field is a one-element list
    (`data.categories=All_Beauty`), an int for a float field a float, a number for a text field its text. Keys that
    are not fields are left for the caller's unknown-key message."""
    hints, fields = _hints(schema), {f.name: f for f in dataclasses.fields(schema)}
    out = dict(given)
    for key, value in given.items():
        if key not in fields:
            continue
        name = f"{section}.{key}" if section else str(key)
        kind, elem, optional = _kind(hints.get(key, Any))
        meta = fields[key].metadata
        if value is None:
            if not optional and kind != "other":
                raise ConfigError(f"{name} must be {describe_type(kind, elem)}, got null")
            continue
        if kind == "list":
            items = value if isinstance(value, (list, tuple)) else [value]
            ekind = _kind(elem)[0]
            out[key] = [_scalar(name, v, ekind, meta) if ekind != "other" else v for v in items]
        elif kind != "other":
            out[key] = _scalar(name, value, kind, meta)
    for key, other in ((k, f.metadata.get("not_below")) for k, f in fields.items()):
        if other and key in given:
            low = out.get(other, getattr(schema, other, None))
            if out[key] is not None and low is not None and out[key] < low:
                prefix = f"{section}." if section else ""
                raise ConfigError(f"{prefix}{key}={out[key]} is below {prefix}{other}={low}: "
                                  "the bounds must be ordered")
    return out


def check_arguments(section: str, fn: Any, given: Mapping[str, Any]) -> None:
    """`given` keyword arguments of `fn` (a reward factory's options) against its annotations: a number where it
    takes an int, true/false where it takes a bool, text where it takes text (no ranges: the factory states none)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is simply not type-checked
        return
    for key, value in given.items():
        kind, elem, optional = _kind(hints.get(key, Any))
        if value is None or kind == "other":
            continue
        name = f"{section}.{key}"
        if kind == "list":
            ekind = _kind(elem)[0]
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if ekind != "other":
                    _scalar(name, v, ekind, {})
        else:
            _scalar(name, value, kind, {})


def describe_type(kind: str, elem: Any = None) -> str:
    if kind == "list":
        plural = {"bool": "true/false", "int": "whole numbers", "float": "numbers", "str": "text"}
        return f"a list of {plural.get(_kind(elem)[0], 'values')} (a bare value is a one-element list)"
    return WORDS.get(kind, "a value")


def describe_field(schema: type, f: dataclasses.Field) -> str:
    """What a field accepts, in words, for `--help`: `whole number >= 1, or null`."""
    kind, elem, optional = _kind(_hints(schema).get(f.name, Any))
    text = describe_type(kind, elem)
    meta = f.metadata
    if "min" in meta:
        text += f" >= {meta['min']}"
    if "gt" in meta:
        text += f" > {meta['gt']}"
    if meta.get("not_below"):
        text += f" (and >= {meta['not_below']})"
    if "choices" in meta:
        text += ": " + " | ".join(map(str, meta["choices"]))
    return text + (", or null" if optional else "")
