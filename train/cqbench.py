"""CQBench inside training: the same `evaluate()` on a held-out CQBench subset at train begin ("before"), every
`eval.every_n_steps` optimizer steps ("step-N") and at train end ("after"), on the model in memory (LoRA included,
greedy, the training prompt).

Every pass is one point of the gold curve, logged under one key per metric, `cqbench/gold/<metric>` (and
`cqbench/gold/parse_ok_rate`), with before and after as its first and last points; before and after are also logged
as `cqbench/before|after/<metric>` (the end-of-run table and the W&B summary). Numbers go through the trainer's
loggers (W&B, TensorBoard, metrics.jsonl, `state.log_history`), on every rank, so that early stopping and the best
checkpoint are decided alike everywhere; unbound (no `callback.bind(trainer)`), they go to `state.log_history` only.

A pass prints its seconds. A pass during training is skipped, with a note, when evaluation would then exceed
`eval.max_fraction` of the time spent training (its cost is estimated by the previous one). Files:
output_dir/cqbench/<tag>/{items.jsonl, summary.json}, and output_dir/cqbench/before_after.md with per-metric deltas.

"before" is reused only under the same fingerprint (`settings`, eval/settings.py: base model by content, prompt,
generation budget, scorers...): a run that starts again from step 0 generates it anew otherwise, a resume refuses
(its base or its evaluation changed under it). "after" and the "step-N" past the step a run resumes from are of
weights it trains again, so they are generated again.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

from transformers import Trainer, TrainerCallback

from mmpc_rl.config import EvalConfig
from mmpc_rl.errors import ConfigError
from mmpc_rl.eval.report import delta_table
from mmpc_rl.eval.runner import Scorers, adapter_off, evaluate
from mmpc_rl.eval.settings import check_settings
from mmpc_rl.io import atomic_write_json, atomic_write_text
from mmpc_rl.lock import raise_on_any_rank
from mmpc_rl.tasks import Task
from mmpc_rl.train.curves import GOLD


def from_main(obj):
    """Rank 0's value on every rank (a no-op in one process): decisions taken on timings or on numbers only rank 0
    computed must be the same everywhere, or one rank generates (a collective under ZeRO-3) while another trains."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def summary_means(res: dict) -> dict[str, float | None]:
    """A pass's mean of each metric (as its summary.json holds them, None or NaN included) and its parse-ok rate."""
    means = {m: s.get("mean") for m, s in res["summary"].items() if isinstance(s, dict)}
    means["parse_ok_rate"] = res["status"].get("ok", 0) / max(res["n_items"], 1)
    return means


def gold_logs(tag: str, res: dict) -> dict[str, float]:
    """The logged numbers of one pass: the gold curve's point, plus the before/after keys for those two passes."""
    means = {m: v for m, v in summary_means(res).items() if v is not None and math.isfinite(v)}
    logs = {f"{GOLD}{m}": v for m, v in means.items()}
    if tag in ("before", "after"):
        logs.update({f"cqbench/{tag}/{m}": v for m, v in means.items()})
    return logs


class CQBenchCallback(TrainerCallback):
    def __init__(self, eval_cfg: EvalConfig, task: Task, items: list[dict], output_dir: str | os.PathLike, *,
                 scorers: Scorers | None = None, seed: int = 42, trainer=None, progress: bool = True,
                 clock=time.monotonic, settings: dict | None = None):
        self.cfg, self.task, self.items = eval_cfg, task, list(items)
        self.root = Path(output_dir) / "cqbench"
        self.scorers = scorers or Scorers()
        self.seed, self.trainer, self.progress, self.clock = seed, trainer, progress, clock
        self.settings = settings  # the "before" pass's fingerprint; None: never reused
        self.results: dict[str, dict] = {}
        self.seconds: dict[str, float] = {}  # tag -> seconds of its pass
        self.skipped: list[int] = []  # steps whose pass the time budget skipped
        self._t0, self._eval_s, self._during_s, self._last = None, 0.0, 0.0, None

    def bind(self, trainer) -> CQBenchCallback:
        self.trainer = trainer
        return self

    # ------------------------------------------------------------------------------------------------- hooks
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._t0 = self.clock()
        problem = None
        if state.is_world_process_zero:
            self._forget_after(state.global_step)
            problem = self._check_before(state.global_step)
        raise_on_any_rank(problem)  # every rank stops, or goes on once the main process has cleared what it must
        # "before" is the base model, whatever was resumed: the Trainer loads a checkpoint's adapter before this hook,
        # so items a cut-short first pass left would otherwise be generated by the trained adapter. A resumed run
        # keeps the first run's point at step 0 (metrics.jsonl keeps it), so it is not logged a second time.
        with adapter_off(model):
            self._run("before", args, state, model, processing_class or kwargs.get("tokenizer"),
                      log=state.global_step == 0)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        n, step = self.cfg.every_n_steps, state.global_step
        if not n or step % n or step >= state.max_steps or not from_main(self._affordable(step, state)):
            return None
        was = control.should_log
        self._run(f"step-{step}", args, state, model, processing_class or kwargs.get("tokenizer"))
        control.should_log = was  # a log from inside on_step_end resets it: the step's own training log still comes
        return control

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._run("after", args, state, model, processing_class or kwargs.get("tokenizer"))
        if state.is_world_process_zero and "before" in self.results and "after" in self.results:
            atomic_write_text(self.root / "before_after.md", "# CQBench before vs after training\n\n" + delta_table(
                self.results["before"], self.results["after"], self.task.name, "before", "after"))

    # ------------------------------------------------------------------------------------------------ work
    def _affordable(self, step: int, state) -> bool:
        """Whether the pass at `step` keeps evaluation within eval.max_fraction of the training time so far, its
        cost estimated by the last pass during training. The first one always runs: "before" is no estimate, as it
        carries the start-up (the demo's: 2.9 s, against 0.6 s for each later pass)."""
        cap = self.cfg.max_fraction
        estimate = next((s for tag, s in reversed(self.seconds.items()) if tag.startswith("step-")), None)
        if cap is None or estimate is None or self._t0 is None:
            return True
        training = max(self.clock() - self._t0 - self._eval_s, 1e-9)
        if self._during_s + estimate <= cap * training:
            return True
        self.skipped.append(step)
        if state.is_world_process_zero:
            share = (self._during_s + estimate) / training
            print(f"mmpc-rl: CQBench at step {step} skipped: one pass takes ~{estimate:.0f} s, which would bring "
                  f"evaluation during training to {share:.0%} of the {training:.0f} s spent training "
                  f"(eval.max_fraction={cap}; raise it or eval.every_n_steps)")
        return False

    def _run(self, tag: str, args, state, model, processor, log: bool = True) -> None:
        if model is None or processor is None:
            raise RuntimeError("CQBenchCallback needs the trainer's model and processing_class")
        t0, step = self.clock(), state.global_step
        last = self._last
        if tag == "after" and last is not None and last[0] == step and last[1].startswith("step-"):
            res = self._reuse(last[1], tag)  # the same weights were just scored: greedy decoding repeats itself
        else:
            # evaluate() puts the model in eval mode and restores train mode afterwards
            res = evaluate(model, processor, self.task, self.items, results_path=self.root / tag / "items.jsonl",
                           scorers=self.scorers, batch_size=self.cfg.batch_size,
                           max_new_tokens=self.cfg.max_new_tokens, seed=self.seed,
                           image_dir=self.root / tag / "images", progress=self.progress, desc=f"cqbench {tag}",
                           trainer=self.trainer, gather=getattr(args, "ds3_gather_for_generation", True))
        seconds = self.clock() - t0
        self.seconds[tag], self._last = seconds, (step, tag)
        self._eval_s += seconds
        if tag.startswith("step-"):
            self._during_s += seconds
        if res is not None:  # the main process
            self.results[tag] = res
            atomic_write_json(self.root / tag / "summary.json",
                              {**{k: v for k, v in res.items() if k != "per_item"}, "step": step, "seconds": seconds})
            print(f"mmpc-rl: CQBench {tag} (step {step}): {res['n_items']} items in {seconds:.1f} s")
        logs = from_main(gold_logs(tag, res) if res is not None else None)
        if log and logs:
            self._log(logs, state)

    def _reuse(self, source: str, tag: str) -> dict | None:
        if source not in self.results:  # not the main process
            return None
        (self.root / tag).mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.root / source / "items.jsonl", self.root / tag / "items.jsonl")
        return self.results[source]

    def _check_before(self, step: int) -> str | None:
        """Why the "before" items on disk may not be resumed, or None. At step 0 (a run that starts again: no
        checkpoint yet) items of another fingerprint are generated anew; a resume keeps the first attempt's "before"
        point, so another fingerprint there means the run's base or evaluation changed under it: refused."""
        before = self.root / "before" / "items.jsonl"
        if self.settings is None:  # no fingerprint to check it against: never reused
            shutil.rmtree(before.parent, ignore_errors=True)
            return None
        try:
            check_settings(before, self.settings, regenerate=step == 0)
        except ConfigError as e:
            return str(e)
        return None

    def _forget_after(self, step: int) -> None:
        """Passes past the checkpoint a run resumes from (all of them when it starts again from 0) were made by
        weights it trains again: their items files would otherwise be taken as done by the new passes."""
        (self.root / "before_after.md").unlink(missing_ok=True)
        for d in self.root.glob("*"):
            n = d.name.removeprefix("step-")
            stale = d.name == "after" or (d.name.startswith("step-") and n.isdigit() and int(n) > step)
            if stale and d.is_dir():
                shutil.rmtree(d)

    def _log(self, logs: dict, state) -> None:
        if self.trainer is not None:
            # the base Trainer.log: GRPOTrainer.log would fold (and clear) its buffered training metrics into ours
            Trainer.log(self.trainer, dict(logs))
        else:
            state.log_history.append({**logs, "step": state.global_step})
