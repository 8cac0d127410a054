"""Training callbacks that keep a run's record on disk whatever the logger: metrics.jsonl, one line per log."""

from __future__ import annotations

import math
import time
from pathlib import Path

from transformers import TrainerCallback

from mmpc_rl.io import append_jsonl


class MetricsLogger(TrainerCallback):
    """Appends every `trainer.log` call (rewards, KL, lengths, timings, CQBench numbers) to output_dir/metrics.jsonl,
    on the main process only. Each line is fsynced, so a killed run keeps every step it logged."""

    def __init__(self, output_dir: str | Path, filename: str = "metrics.jsonl"):
        self.path = Path(output_dir) / filename
        self._t0 = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time() - (self._t0 or 0), 3)}
        for k, v in logs.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                record[k] = v
            elif isinstance(v, str):
                record[k] = v
        append_jsonl(self.path, record)
