"""When a run has converged, in numbers: the plateau test behind `early_stop.*`, the smoothed reward it reads, the
trends behind the proxy-gold divergence alarm, and the record an early stop leaves (`output_dir/early_stop.json`).

Nothing here imports the trainer stack: the entry point asks `stopped_early` before anything loads.

The paper says "Training continues until the reward curve converges." (Section 4.1, Implementation Details; its
Figure 5 shows the curves) and defines convergence no further; `early_stop.metric=reward` is that criterion made
explicit, with a smoothing and a patience of our choice: the mean training reward over the last `early_stop.window`
logged steps, stopped when it has not gained more than `early_stop.min_delta` over its best for
`early_stop.patience` logged steps. With a CQBench metric (`eval.every_n_steps` set) the patience counts
evaluations.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

from mmpc_rl.config import EarlyStopConfig, Recipe
from mmpc_rl.io import read_json
from mmpc_rl.train.resume import final_problem, resuming


@dataclasses.dataclass
class Plateau:
    """Best value so far and how many values since it improved by more than `min_delta`."""

    patience: int
    min_delta: float = 0.0
    higher_is_better: bool = True
    best: float | None = None
    best_step: int | None = None
    since: int = 0

    def update(self, step: int, value: float) -> bool:
        """Take one value; True when `patience` values in a row brought no gain."""
        gain = None if self.best is None else (value - self.best if self.higher_is_better else self.best - value)
        if gain is None or gain > self.min_delta:
            self.best, self.best_step, self.since = value, step, 0
        else:
            self.since += 1
        return self.since >= self.patience


class SmoothedReward:
    """The mean of the last `window` logged rewards; None until `window` steps are in."""

    def __init__(self, window: int):
        self.window, self.values = window, []

    def add(self, value: float) -> float | None:
        self.values.append(value)
        return sum(self.values[-self.window:]) / self.window if len(self.values) >= self.window else None


def finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y) points (0 for fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return 0.0 if sxx == 0 else sum((x - mx) * (y - my) for x, y in points) / sxx


def describe(cfg: EarlyStopConfig) -> str:
    if cfg.metric == "reward":
        return f"the training reward (mean of the last {cfg.window} logged steps)"
    return f"CQBench {cfg.metric} (held-out items, every eval.every_n_steps)"


def stop_line(cfg: EarlyStopConfig, step: int, plateau: Plateau, value: float) -> str:
    unit = "logged steps" if cfg.metric == "reward" else "evaluations"
    return (f"early stop at step {step}: early_stop.metric={cfg.metric}, {describe(cfg)}, gained no more than "
            f"early_stop.min_delta={cfg.min_delta:g} over its best ({plateau.best:.4f} at step {plateau.best_step}) "
            f"for early_stop.patience={cfg.patience} {unit} (now {value:.4f}); saved the adapter at this step")


RECORD = "early_stop.json"


def stopped_early(recipe: Recipe) -> str | None:
    """Why resuming has nothing to train: the run stopped early under the same early_stop settings, and its final
    state is at that step. With other settings (or early_stop off) a resume trains on from the last checkpoint."""
    trainer = recipe.trainer
    if not resuming(trainer):
        return None
    out = Path(str(trainer.get("output_dir")))
    rec, final = read_json(out / RECORD), read_json(out / "trainer_state.json")
    if rec is None or final is None or rec.get("step") != final.get("global_step"):
        return None
    if final_problem(out) is not None:  # its final result is broken: trained on (and stopped) again
        return None
    if rec.get("settings") != dataclasses.asdict(recipe.early_stop):
        return None
    return (f"the run in {out} stopped early at step {rec['step']} ({rec['line']}); nothing to train and its "
            "adapter is left as it is (change early_stop.* to train on, or use a new output_dir)")
