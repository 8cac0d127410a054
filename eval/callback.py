"""CQBench inside training: the same `evaluate()` on a held-out CQBench subset at train begin ("before"), at train
end ("after") and optionally every N steps ("step-N"), on the model in memory (LoRA included).

Numbers go through the trainer's loggers as `cqbench/<tag>/<metric>` (W&B, TensorBoard, metrics.jsonl, and
`state.log_history`) once the callback is bound to its trainer (`callback.bind(trainer)`); unbound, they still go
to `state.log_history` and to files. Files: output_dir/cqbench/<tag>/{items.jsonl, summary.json}, and
output_dir/cqbench/before_after.md with per-metric deltas.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from transformers import TrainerCallback

from mmpc_rl.io import atomic_write_json, atomic_write_text
from mmpc_rl.tasks import Task


class CQBenchCallback(TrainerCallback):
    def __init__(self, eval_cfg, task: Task, items: list[dict], output_dir: str | os.PathLike, *, scorers=None,
                 seed: int = 42, trainer=None, progress: bool = True):
        from mmpc_rl.eval.runner import Scorers

        self.cfg, self.task, self.items = eval_cfg, task, list(items)
        self.root = Path(output_dir) / "cqbench"
        self.scorers = scorers or Scorers()
        self.seed, self.trainer, self.progress = seed, trainer, progress
        self.results: dict[str, dict] = {}

    @classmethod
    def from_recipe(cls, cfg, task: Task, *, renderer=None, **kwargs) -> CQBenchCallback:
        """From a validated recipe: `eval` (EvalConfig) picks the subset and the scorers; `data` where items live."""
        from mmpc_rl.config import section
        from mmpc_rl.data import load_items
        from mmpc_rl.eval.scorers import build_scorers

        ev, data = section(cfg, "eval"), section(cfg, "data")
        items = load_items(data.path, split=ev.split, categories=ev.categories or data.categories,
                           limit_per_category=ev.items_per_category, seed=data.seed, cache_dir=data.cache_dir)
        sc = build_scorers([task.name], bertscore=ev.bertscore, bertscore_layers=ev.bertscore_layers, lpips=ev.lpips,
                           clip=ev.clip, renderer=renderer)
        return cls(ev, task, items, cfg.trainer.output_dir, scorers=sc, seed=data.seed, **kwargs)

    def bind(self, trainer) -> CQBenchCallback:
        self.trainer = trainer
        return self

    # ------------------------------------------------------------------------------------------------- hooks
    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._run("before", args, state, model, processing_class or kwargs.get("tokenizer"))

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        n = getattr(self.cfg, "every_n_steps", None)
        if n and state.global_step % n == 0 and state.global_step < state.max_steps:
            self._run(f"step-{state.global_step}", args, state, model, processing_class or kwargs.get("tokenizer"))

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._run("after", args, state, model, processing_class or kwargs.get("tokenizer"))
        if state.is_world_process_zero and "before" in self.results and "after" in self.results:
            from mmpc_rl.eval.report import delta_table

            atomic_write_text(self.root / "before_after.md", "# CQBench before vs after training\n\n" + delta_table(
                self.results["before"], self.results["after"], self.task.name, "before", "after"))

    # ------------------------------------------------------------------------------------------------ work
    def _run(self, tag: str, args, state, model, processor) -> None:
        from mmpc_rl.eval.runner import evaluate

        if model is None or processor is None:
            raise RuntimeError("CQBenchCallback needs the trainer's model and processing_class")
        # evaluate() puts the model in eval mode and restores train mode afterwards
        res = evaluate(model, processor, self.task, self.items, results_path=self.root / tag / "items.jsonl",
                       scorers=self.scorers, batch_size=self.cfg.batch_size, max_new_tokens=self.cfg.max_new_tokens,
                       seed=self.seed, image_dir=self.root / tag / "images",
                       progress=self.progress, desc=f"cqbench {tag}", trainer=self.trainer or _calling_trainer(),
                       gather=getattr(args, "ds3_gather_for_generation", True))
        if res is None:  # not the main process
            return
        self.results[tag] = res
        atomic_write_json(self.root / tag / "summary.json", {k: v for k, v in res.items() if k != "per_item"})
        self._log(tag, res, state)

    def _log(self, tag: str, res: dict, state) -> None:
        logs = {f"cqbench/{tag}/{m}": s["mean"] for m, s in res["summary"].items()
                if s["mean"] is not None and math.isfinite(s["mean"])}
        n = max(res["n_items"], 1)
        logs[f"cqbench/{tag}/parse_ok_rate"] = res["status"].get("ok", 0) / n
        from transformers import Trainer

        trainer = self.trainer or _calling_trainer()
        if trainer is not None:
            # the base Trainer.log: GRPOTrainer.log would fold (and clear) its buffered training metrics into ours
            Trainer.log(trainer, dict(logs))
        else:
            state.log_history.append({**logs, "step": state.global_step})


def _calling_trainer():
    """The Trainer whose training loop called this hook, when the callback was not bound: hooks get the model but
    not the trainer, and only `trainer.log` reaches every logger (W&B, TensorBoard, metrics.jsonl)."""
    import inspect

    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer):
                return candidate
            frame = frame.f_back
    finally:
        del frame
    return None
