"""The console during training: one short line per logged step instead of transformers' dict of every metric (the
full record is metrics.jsonl and W&B, train/callbacks.py)."""

from __future__ import annotations

from transformers.trainer_callback import PrinterCallback, ProgressCallback


def progress_line(state, logs: dict) -> str | None:
    """One short console line per logged step: the numbers a user watches (the full record is metrics.jsonl, W&B)."""
    if "reward" not in logs and "loss" not in logs:
        return None  # CQBench numbers, the end-of-run totals: the run's summary prints them
    parts = [f"step {state.global_step}/{state.max_steps}"]
    if isinstance(logs.get("reward"), (int, float)):
        terms = [f"{k.split('/')[1]} {v:.3f}" for k, v in logs.items()
                 if k.startswith("rewards/") and k.endswith("/mean") and isinstance(v, (int, float))]
        parts.append(f"reward {logs['reward']:.3f}" + (f" ({', '.join(terms)})" if len(terms) > 1 else ""))
    for key, label, fmt in (("kl", "kl", ".4f"), ("loss", "loss", ".4f"), ("grad_norm", "grad", ".3g"),
                            ("completions/mean_length", "len", ".1f"), ("step_time", "s/step", ".1f")):
        value = logs.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:{fmt}}")
    return "  ".join(parts)


class CompactProgress(ProgressCallback):
    """transformers' progress bar, with `progress_line` printed under it instead of every logged key."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = progress_line(state, logs or {})
        if state.is_world_process_zero and self.training_bar is not None and line:
            self.training_bar.write(line)


class CompactPrinter(PrinterCallback):
    """`progress_line` printed instead of every logged key, when the progress bar is off (`disable_tqdm`)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        line = progress_line(state, logs or {})
        if state.is_world_process_zero and line:
            print(line)


def compact_console(trainer) -> None:
    """Replace the Trainer's console logger (a dict of every metric per step) with CompactProgress/CompactPrinter."""
    for default, compact in ((ProgressCallback, CompactProgress), (PrinterCallback, CompactPrinter)):
        if trainer.pop_callback(default) is not None:
            trainer.add_callback(compact)
