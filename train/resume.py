"""Picking a checkpoint to resume from: only complete, intact ones (a kill mid-save leaves a folder without its state,
a full disk or a copy cut short leaves a truncated file).

The HF Trainer writes a checkpoint in this order: weights, optimizer.pt + scheduler.pt, rng_state*.pth, and
trainer_state.json last (not atomically). A checkpoint is used when all of these exist, each file verifies (a
safetensors header that parses and a size that matches it; torch's zip archives whose every member passes its CRC),
and trainer_state.json parses and names the folder's own step. Otherwise the previous checkpoint is taken, and why
the newer one was passed over is printed.
"""

from __future__ import annotations

import json
import re
import struct
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmpc_rl.io import read_json

REQUIRED = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
WEIGHTS = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json")
MAX_HEADER = 100 * 2**20


def _safetensors_problem(p: Path) -> str | None:
    """None when the header parses and the file holds exactly the bytes it declares (a truncation shows here)."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(MAX_HEADER, size - 8):
                return f"{p.name}: header length {n} does not fit a {size}-byte file"
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError, RecursionError) as e:
        return f"{p.name}: unreadable safetensors header ({type(e).__name__})"
    if not isinstance(header, dict):
        return f"{p.name}: safetensors header is not an object"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return f"{p.name}: safetensors header without data offsets"
    if 8 + n + end != size:
        return f"{p.name}: {size} bytes on disk, the header describes {8 + n + end} (truncated?)"
    return None


def _torch_file_problem(p: Path) -> str | None:
    """None when a torch.save file (a zip archive since torch 1.6) is whole: every member's CRC is checked."""
    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError) as e:
        return f"{p.name}: not a whole torch archive ({type(e).__name__})"
    return f"{p.name}: member {bad} fails its CRC" if bad else None


def _weights_problem(ckpt: Path) -> str | None:
    index = ckpt / "model.safetensors.index.json"
    singles = [ckpt / n for n in WEIGHTS[:2] if (ckpt / n).is_file()]
    if singles:
        return next(filter(None, map(_safetensors_problem, singles)), None)
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index.name}: unreadable"
        for shard in shards:
            if not (ckpt / shard).is_file():
                return f"{shard}: missing"
            if problem := _safetensors_problem(ckpt / shard):
                return problem
        return None
    return "no weights (" + ", ".join(WEIGHTS) + ")"


def why_incomplete(ckpt: str | Path) -> str | None:
    """None for a checkpoint that can be resumed from, else the first reason it cannot."""
    ckpt = Path(ckpt)
    for name in REQUIRED:
        if not (ckpt / name).is_file() or (ckpt / name).stat().st_size == 0:
            return f"{name}: missing or empty"
    rng = sorted(ckpt.glob("rng_state*.pth"))
    if not rng:
        return "rng_state*.pth: missing"
    if problem := _weights_problem(ckpt):
        return problem
    for p in [ckpt / "optimizer.pt", ckpt / "scheduler.pt", *rng]:
        if problem := _torch_file_problem(p):
            return problem
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (ValueError, OSError):
        return "trainer_state.json: does not parse"
    m = re.fullmatch(r"checkpoint-(\d+)", ckpt.name)
    if not isinstance(state, dict) or (m is not None and state.get("global_step") != int(m.group(1))):
        return "trainer_state.json: does not name this checkpoint's step"
    return None


def is_complete(ckpt: str | Path) -> bool:
    return why_incomplete(ckpt) is None


def last_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The highest-step complete `checkpoint-N` in output_dir, or None (a fresh start); newer ones passed over are
    named with the reason."""
    out = Path(output_dir)
    steps = []
    for p in out.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir():
            steps.append((int(m.group(1)), p))
    for _, ckpt in sorted(steps, reverse=True):
        problem = why_incomplete(ckpt)
        if problem is None:
            return str(ckpt)
        print(f"mmpc-rl: not resuming from {ckpt.name}: {problem}; trying the previous checkpoint", file=sys.stderr)
    return None


_ASK = object()  # refinish_point asks resume_point itself


def resume_point(trainer: Mapping[str, Any]) -> str | bool | None:
    """trainer.resume_from_checkpoint: a checkpoint folder, or `auto` for the last complete one in output_dir (the
    recipe's trainer section, or the TrainingArguments made from it)."""
    get = trainer.get if isinstance(trainer, Mapping) else lambda key: getattr(trainer, key)
    value = get("resume_from_checkpoint")
    if value in (None, "", False):
        return None
    if str(value).lower() == "auto":
        return last_complete_checkpoint(get("output_dir"))
    return value


def final_problem(output_dir: str | Path) -> str | None:
    """None when output_dir holds a whole final result, else the first reason it does not: trainer_state.json (RunEnd
    writes it last, after the adapter, the processor and the curves) that parses, weights that verify (header and
    size), the adapter's config and the processor's files (tokenizer_config.json; every JSON beside them parses)."""
    out = Path(output_dir)
    try:
        state = json.loads((out / "trainer_state.json").read_text())
    except OSError:
        return "trainer_state.json: missing"
    except ValueError:
        return "trainer_state.json: does not parse"
    if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
        return "trainer_state.json: names no step"
    if problem := _weights_problem(out):
        return problem
    if (out / "adapter_model.safetensors").is_file() and not (out / "adapter_config.json").is_file():
        return "adapter_config.json: missing"
    if not (out / "tokenizer_config.json").is_file():
        return "tokenizer_config.json (the processor): missing"
    for path in sorted(out.glob("*.json")):
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return f"{path.name}: does not parse"
    return None


def _state(path: Path | None) -> dict | None:
    state = read_json(path) if path is not None else None
    return state if state is not None and isinstance(state.get("global_step"), int) else None


def _trained_out(trainer: Mapping[str, Any], state: dict) -> int | None:
    """The step at which `state` has trained all the recipe asks for, or None when there is more to train."""
    step, wanted = state["global_step"], trainer.get("max_steps", -1)
    if wanted is None or wanted <= 0:  # epoch-based: finished if the epochs asked for are the ones it ran
        if float(trainer.get("num_train_epochs", 3.0)) > float(state.get("num_train_epochs") or 0):
            return None
        wanted = state.get("max_steps") or 0
    return wanted if 0 < wanted <= step else None


def finished_run(trainer: Mapping[str, Any]) -> str | None:
    """Why resuming has nothing to do, or None. A run that reached its max_steps and left a whole final result
    (final_problem), resumed, would train one more step past it (the HF Trainer always takes a step after loading
    a checkpoint) and overwrite its final adapter; the entry point stops instead."""
    if not resuming(trainer):
        return None
    out = Path(str(trainer.get("output_dir")))
    state = _state(out / "trainer_state.json")
    if state is None or final_problem(out) is not None or (wanted := _trained_out(trainer, state)) is None:
        return None
    return (f"the run in {out} already finished at step {state['global_step']} (max_steps={wanted}), see "
            f"{out / 'trainer_state.json'}; nothing to train and its adapter is left as it is (raise "
            "trainer.max_steps to train on, or use a new output_dir)")


def refinish_point(trainer: Mapping[str, Any], checkpoint: Any = _ASK) -> str | None:
    """The checkpoint to finish a run again from, when its training is done (the checkpoint a resume would load is
    at max_steps) but its final result is missing or broken (killed while saving it, a truncated adapter); None
    otherwise. The entry point then loads that checkpoint and ends the run (train.builder.finish_again) instead of
    training: a resume from it would train a step past max_steps. `checkpoint`: resume_point's answer, when the
    caller has it already (each call of it checks every checkpoint's files)."""
    if not resuming(trainer) or finished_run(trainer) is not None:
        return None
    out = Path(str(trainer.get("output_dir")))
    ckpt = resume_point(trainer) if checkpoint is _ASK else checkpoint
    ckpt = last_complete_checkpoint(out) if ckpt is True else ckpt
    state = _state(Path(ckpt) / "trainer_state.json") if ckpt else None
    if state is None or _trained_out(trainer, state) is None:
        return None
    print(f"mmpc-rl: the run in {out} trained to step {state['global_step']} but its final result is incomplete "
          f"({final_problem(out)}): finishing it again from {Path(ckpt).name}", file=sys.stderr)
    return ckpt


def resuming(trainer: Mapping[str, Any]) -> bool:
    """Whether the recipe's trainer section continues a run (trainer.resume_from_checkpoint is set)."""
    return trainer.get("resume_from_checkpoint") not in (None, "", False)
