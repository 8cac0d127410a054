"""`eval.select_best=<CQBench metric>`: the adapter of the best-scoring evaluation during training (a `step-N` pass or
"after"; "before" is the base model, not a checkpoint) kept in output_dir/best/, with best.json naming its step, metric
and score. The last step is often not the best one.

Written so that a kill never leaves a half-written best/ that looks complete: the adapter goes to .best.tmp/,
best.json is written into it last, and it replaces best/ by renames (best/ -> .best.old/, .best.tmp/ -> best/); a
folder named best/ is always whole. The next start of the run finishes or undoes a swap a kill cut short.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from transformers import TrainerCallback

from mmpc_rl.io import atomic_write_json, read_json
from mmpc_rl.train.cqbench import GOLD, from_main, summary_means
from mmpc_rl.train.stopping import finite_number

BEST, TMP, OLD, INFO = "best", ".best.tmp", ".best.old", "best.json"


def read_best(output_dir: str | Path) -> dict | None:
    info = read_json(Path(output_dir) / BEST / INFO)
    return info if info is not None and isinstance(info.get("step"), int) else None


def recover(output_dir: str | Path) -> None:
    """After a kill: a best/ without best.json is dropped; with no best/, the newest whole one (.best.tmp/ when its
    best.json was written, else .best.old/) becomes best/; leftovers go."""
    out = Path(output_dir)
    if (out / BEST).exists() and not (out / BEST / INFO).is_file():
        shutil.rmtree(out / BEST)
    if not (out / BEST).exists():
        for name in (TMP, OLD):
            if (out / name / INFO).is_file():
                (out / name).rename(out / BEST)
                break
    for name in (TMP, OLD):
        shutil.rmtree(out / name, ignore_errors=True)


def swap_in(output_dir: str | Path) -> None:
    out = Path(output_dir)
    shutil.rmtree(out / OLD, ignore_errors=True)
    if (out / BEST).exists():
        (out / BEST).rename(out / OLD)
    (out / TMP).rename(out / BEST)
    shutil.rmtree(out / OLD, ignore_errors=True)


class KeepBest(TrainerCallback):
    def __init__(self, metric: str, output_dir: str | Path, *, higher: bool = True, trainer=None, out=print):
        self.metric, self.out_dir, self.higher, self.trainer, self.out = metric, Path(output_dir), higher, trainer, out
        self.best: dict | None = None

    def bind(self, trainer) -> KeepBest:
        self.trainer = trainer
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        info = None
        if state.is_world_process_zero:
            recover(self.out_dir)
            info = read_best(self.out_dir)
            if info is not None and (info["step"] > state.global_step or info.get("metric") != self.metric):
                why = (f"it comes from step {info['step']}, past the checkpoint this run resumes from"
                       if info.get("metric") == self.metric else f"it was selected on {info.get('metric')}")
                self.out(f"mmpc-rl: dropping {self.out_dir / BEST}: {why}")
                shutil.rmtree(self.out_dir / BEST)
                info = None
        self.best = from_main(info)

    def on_log(self, args, state, control, logs=None, **kwargs):
        value = (logs or {}).get(f"{GOLD}{self.metric}")
        if state.global_step == 0 or not finite_number(value):  # step 0 is "before": the base model
            return
        if self.best is not None:
            gain = value - self.best["score"] if self.higher else self.best["score"] - value
            if gain <= 0:
                return
        self.save(args, state, float(value))

    def save(self, args, state, score: float) -> None:
        if self.trainer is None:
            raise RuntimeError("KeepBest must be bound to its trainer (KeepBest(...).bind(trainer))")
        tmp = self.out_dir / TMP
        if state.is_world_process_zero:
            shutil.rmtree(tmp, ignore_errors=True)
        self.trainer.save_model(str(tmp), _internal_call=True)  # every rank: ZeRO-3 gathers; never a hub push
        info = {"step": state.global_step, "metric": self.metric, "score": score, "higher_is_better": self.higher}
        if state.is_world_process_zero:
            atomic_write_json(tmp / INFO, info)  # last: a .best.tmp/ with best.json in it is whole
            swap_in(self.out_dir)
        self.best = info


def best_lines(output_dir: str | Path) -> list[str]:
    """'last and best' for the end of the run: the selection metric at the last evaluation and at the best one."""
    out = Path(output_dir)
    best = read_best(out)
    if best is None:
        return []
    last = None
    try:
        after = read_json(out / "cqbench" / "after" / "summary.json")
        last, last_step = summary_means(after).get(best["metric"]), after.get("step")
    except (AttributeError, KeyError, TypeError):  # no (or a partial) after pass
        pass
    head = f"mmpc-rl: CQBench {best['metric']}: "
    if last is not None:
        head += f"last {last:.4f} (step {last_step}), "
    return [head + f"best {best['score']:.4f} (step {best['step']}) kept in {out / BEST}"]
