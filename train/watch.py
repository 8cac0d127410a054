"""A run that watches itself: the signs of a run that stopped learning or learned the wrong thing, and stopping at
convergence.

Logged every step (W&B, metrics.jsonl and reward_curves.png all have them): `frac_reward_zero_std` (TRL: the share
of groups whose completions all scored the same, which give no gradient), `completions/mean_length` (TRL),
`completions/length_drift` (`LengthDrift`: the mean length over its mean in the run's first steps, minus 1) and
`completions/format_fail_rate` (through TRL's log_metric: the share of completions the task's parser cannot read,
`Task.parse` status other than "ok"). At the end `Watch` writes output_dir/watch.json: each of them over the first
and the last quarter of the run, notes on what looks wrong, and the proxy-gold divergence.

The proxy-gold divergence alarm: at each CQBench evaluation (`cqbench/gold/<metric>`, train/cqbench.py), over the
last `eval.divergence_window` evaluations, the least-squares trend of the training reward going up while a CQBench
metric's trend goes the wrong way, printed once in one line with the steps and both changes. The reward is what GRPO
optimises; CQBench on held-out items is what the run is for.

`EarlyStop` stops the run on `early_stop.*` (train/stopping.py holds the rule).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path

from transformers import TrainerCallback

from mmpc_rl.config import EarlyStopConfig, Recipe
from mmpc_rl.eval.metrics import METRICS
from mmpc_rl.io import atomic_write_json, read_json, read_jsonl
from mmpc_rl.tasks import Task, completion_text
from mmpc_rl.train.best import KeepBest
from mmpc_rl.train.cqbench import GOLD
from mmpc_rl.train.curves import quarter_means
from mmpc_rl.train.stopping import RECORD, Plateau, SmoothedReward, finite_number, slope, stop_line

FORMAT_KEY = "completions/format_fail_rate"
LENGTH_KEY, DRIFT_KEY = "completions/mean_length", "completions/length_drift"
WATCHED = ("frac_reward_zero_std", LENGTH_KEY, FORMAT_KEY)
BASELINE_STEPS = 5  # the length drift's baseline: the mean length of the run's first 5 logged steps (our choice)
# notes in the end-of-run summary (our choice of thresholds): half the groups teaching nothing, a length that moved by
# half, format failures up by ten points
ZERO_STD_NOTE, LENGTH_DRIFT_NOTE, FORMAT_RISE_NOTE = 0.5, 0.5, 0.1


def higher_is_better(metric: str) -> bool:
    return METRICS[metric].higher_is_better if metric in METRICS else True  # parse_ok_rate, reward


def format_check(task: Task):
    """Per generation batch: the share of completions the task's parser cannot read (logged via TRL's log_metric)."""
    def check(completions) -> dict[str, float]:
        fails = sum(task.parse(completion_text(c)).status != "ok" for c in completions)
        return {FORMAT_KEY: fails / max(len(completions), 1)}

    return check


def history(output_dir: str | Path, up_to: int) -> list[dict]:
    """What a resumed run logged up to the checkpoint it continues from (metrics.jsonl; later lines are replayed)."""
    return [r for r in read_jsonl(Path(output_dir) / "metrics.jsonl") if r.get("step", 0) <= up_to]


def quarters(points: list[tuple[int, float]]) -> dict | None:
    if not points:
        return None
    first, last = quarter_means([v for _, v in points])
    return {"first_quarter": first, "last_quarter": last, "steps": [points[0][0], points[-1][0]]}


class LengthDrift(TrainerCallback):
    """Adds `completions/length_drift` to each step's logs. The loggers (W&B, metrics.jsonl) read the same logs after
    the callbacks before them, so `bind` puts this one first in the trainer's callback order."""

    def __init__(self, output_dir: str | Path):
        self.out_dir, self.baseline = Path(output_dir), []

    def bind(self, trainer) -> LengthDrift:
        callbacks = trainer.callback_handler.callbacks
        callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:
            self.baseline = [float(r[LENGTH_KEY]) for r in history(self.out_dir, state.global_step)
                             if finite_number(r.get(LENGTH_KEY))][:BASELINE_STEPS]

    def on_log(self, args, state, control, logs=None, **kwargs):
        length = (logs or {}).get(LENGTH_KEY)
        if not finite_number(length):
            return
        if len(self.baseline) < BASELINE_STEPS:
            self.baseline.append(float(length))
            return
        base = sum(self.baseline) / len(self.baseline)
        if base > 0:
            logs[DRIFT_KEY] = length / base - 1


class Watch(TrainerCallback):
    def __init__(self, output_dir: str | Path, window: int = 3, out=print):
        self.out_dir, self.window, self.out = Path(output_dir), window, out
        self.rewards: list[tuple[int, float]] = []
        self.series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.gold: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.divergence: dict | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.global_step > 0:
            for rec in history(self.out_dir, state.global_step):
                self.observe(rec["step"], rec, quiet=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.observe(state.global_step, logs)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            atomic_write_json(self.out_dir / "watch.json", self.summary())

    def observe(self, step: int, logs: dict, quiet: bool = False) -> None:
        if finite_number(logs.get("reward")):
            self.rewards.append((step, float(logs["reward"])))
        for key in WATCHED:
            if finite_number(logs.get(key)):
                self.series[key].append((step, float(logs[key])))
        gold = {k[len(GOLD):]: float(v) for k, v in logs.items() if k.startswith(GOLD) and finite_number(v)}
        for metric, value in gold.items():
            self.gold[metric].append((step, value))
        if gold and self.divergence is None:
            self.divergence = self.diverging()
            if self.divergence is not None and not quiet:
                self.out(f"mmpc-rl: alarm: {self.divergence['line']}")

    def diverging(self) -> dict | None:
        """The reward trending up while a CQBench metric trends worse over the last `window` evaluations."""
        found = []
        for metric, pts in self.gold.items():
            last = pts[-self.window:]
            if len(last) < self.window:
                continue
            s0, s1 = last[0][0], last[-1][0]
            rewards = [p for p in self.rewards if s0 <= p[0] <= s1]
            if len(rewards) < 2 or s1 <= s0:
                continue
            reward_change, gold_change = slope(rewards) * (s1 - s0), slope(last) * (s1 - s0)
            worse = gold_change < 0 if higher_is_better(metric) else gold_change > 0
            if reward_change > 0 and worse:
                found.append({"metric": metric, "steps": [s0, s1], "reward_change": reward_change,
                              "gold_change": gold_change})
        if not found:
            return None
        s0, s1 = found[0]["steps"]
        parts = ", ".join(f"{f['metric']} {f['gold_change']:+.4f}" for f in found)
        line = (f"proxy-gold divergence over steps {s0}-{s1} (the last {self.window} CQBench evaluations): the "
                f"training reward trends {found[0]['reward_change']:+.4f} while held-out {parts} (trend, worse); the "
                "policy may be gaming its reward: read completions/ and cqbench/")
        return {"steps": [s0, s1], "metrics": found, "line": line}

    def summary(self) -> dict:
        out: dict = {"divergence": self.divergence, "notes": []}
        for key in WATCHED:
            out[key] = quarters(self.series.get(key, []))
        zero, length, fmt = (out[k] for k in WATCHED)
        if zero and zero["last_quarter"] >= ZERO_STD_NOTE:
            out["notes"].append(f"{zero['last_quarter']:.0%} of the groups in the last quarter scored every "
                                "completion alike (frac_reward_zero_std): they give no gradient")
        if length and length["first_quarter"] > 0:
            length["drift"] = length["last_quarter"] / length["first_quarter"] - 1
            if abs(length["drift"]) >= LENGTH_DRIFT_NOTE:
                out["notes"].append(f"completion length drifted {length['drift']:+.0%} (first to last quarter)")
        if fmt and fmt["last_quarter"] - fmt["first_quarter"] >= FORMAT_RISE_NOTE:
            out["notes"].append(f"format failures rose from {fmt['first_quarter']:.0%} to {fmt['last_quarter']:.0%}")
        if self.divergence:
            out["notes"].append(self.divergence["line"])
        return out


def summary_lines(output_dir: str | Path) -> list[str]:
    """The watch summary for the end of the run (from output_dir/watch.json)."""
    s = read_json(Path(output_dir) / "watch.json")
    if s is None:
        return []
    rows = []
    labels = {"frac_reward_zero_std": ("groups with zero reward spread", "{:.2f}"),
              "completions/mean_length": ("completion length (tokens)", "{:.1f}"),
              FORMAT_KEY: ("completions failing the format check", "{:.0%}")}
    for key, (label, fmt) in labels.items():
        q = s.get(key)
        if q:
            drift = f" (drift {q['drift']:+.0%})" if "drift" in q else ""
            first, last = fmt.format(q["first_quarter"]), fmt.format(q["last_quarter"])
            rows.append(f"  {label + ':':<40}{first} -> {last}{drift}")
    if not rows:
        return []
    head = "mmpc-rl: watch (first -> last quarter of the run):"
    tail = [f"  ! {n}" for n in s.get("notes", [])] or ["  no alarm"]
    return [head, *rows, *tail]


class EarlyStop(TrainerCallback):
    """Stops the run when `early_stop.metric` stops improving: one line naming the metric and the patience, a
    checkpoint at that step (when the run saves checkpoints), and output_dir/early_stop.json. Every rank decides on the
    same logged numbers (TRL's reward is gathered, CQBench's numbers are sent from rank 0)."""

    def __init__(self, cfg: EarlyStopConfig, output_dir: str | Path, out=print):
        self.cfg, self.out_dir, self.out = cfg, Path(output_dir), out
        self.plateau = Plateau(cfg.patience, cfg.min_delta, higher_is_better(cfg.metric))
        self.smoothed = SmoothedReward(cfg.window) if cfg.metric == "reward" else None
        self.stopped: dict | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:  # the plateau as the first run left it at the checkpoint
            for rec in history(self.out_dir, state.global_step):
                value = self.value(rec)
                if value is not None:
                    self.plateau.update(rec["step"], value)

    def value(self, logs: dict) -> float | None:
        if self.smoothed is not None:
            return self.smoothed.add(float(logs["reward"])) if finite_number(logs.get("reward")) else None
        key = f"{GOLD}{self.cfg.metric}"
        return float(logs[key]) if finite_number(logs.get(key)) else None

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = self.value(logs or {})
        if value is None or self.stopped is not None:
            return None
        if not self.plateau.update(state.global_step, value):
            return None
        control.should_training_stop = True
        if str(getattr(args, "save_strategy", "no")).split(".")[-1].lower() != "no":
            control.should_save = True
        line = stop_line(self.cfg, state.global_step, self.plateau, value)
        self.stopped = {"step": state.global_step, "line": line, "value": value, "best": self.plateau.best,
                        "best_step": self.plateau.best_step, "settings": dataclasses.asdict(self.cfg)}
        if state.is_world_process_zero:
            atomic_write_json(self.out_dir / RECORD, self.stopped)
            self.out(f"mmpc-rl: {line}")
        return control


def watch_callbacks(recipe: Recipe, output_dir: str | Path) -> list:
    """The watch, early stop (when `early_stop.metric` is set) and best-adapter keeper (`eval.select_best`)."""
    cbs: list = [LengthDrift(output_dir), Watch(output_dir, window=recipe.eval.divergence_window)]
    if recipe.early_stop.metric is not None:
        cbs.append(EarlyStop(recipe.early_stop, output_dir))
    if recipe.eval.enabled and recipe.eval.select_best:
        cbs.append(KeepBest(recipe.eval.select_best, output_dir, higher=higher_is_better(recipe.eval.select_best)))
    return cbs
