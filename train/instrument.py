"""Reward instrumentation: each reward is wrapped so it logs its own time, feeds the completions table, and has its
scores checked.

The wrapper records what the rewards saw in one generation batch (prompt, completion, data columns, every reward's
scores, and images) in a `CompletionRecorder`; `train.callbacks.CompletionsTable` writes it. Images come from the
dataset's image columns and from `Reward.media()` (the renders a text->image reward made in its last call).

`RewardCheck` stops the run at the generation batch where a reward returns what cannot teach. TRL turns None into NaN
and reads it as "this reward does not apply to this completion": the weighted sum skips it (nansum), the reward's
mean is over the others, and a completion that no reward scores gets advantage 0. So a real NaN beside other rewards
silently dropped out, and a reward that returned None (or NaN) for everything left every advantage 0: exit 0,
nothing learned. Here:
- a non-finite number (NaN, inf) from a reward stops the run, naming the reward and the step;
- None for every completion of a generation batch (over all processes) stops it too: a reward that applies to no
  completion is broken, or the run has nothing to learn from it;
- None for some completions is TRL's "does not apply" and is kept.
"""

from __future__ import annotations

import inspect
import math
import os
import time
from typing import Any

from PIL import Image

from mmpc_rl.errors import ConfigError
from mmpc_rl.tasks import completion_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")

def _text(x: Any) -> str:
    if isinstance(x, list) and x and isinstance(x[0], dict) and "role" in x[0]:
        parts = []
        for msg in x:
            content = msg.get("content")
            if isinstance(content, list):
                content = " ".join("<image>" if c.get("type") == "image" else str(c.get("text") or "")
                                   for c in content if isinstance(c, dict))
            parts.append(str(content or ""))
        return "\n".join(parts)
    return completion_text(x)


def _is_image(v: Any) -> bool:
    if isinstance(v, Image.Image):
        return True
    if isinstance(v, list) and v and all(isinstance(i, Image.Image) or hasattr(i, "ndim") for i in v):
        return True
    return isinstance(v, str) and v.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(v)


class CompletionRecorder:
    """The latest generation batch as the rewards saw it: prompt, completion, columns, per-reward scores, images."""

    def __init__(self):
        self.batch: dict | None = None
        self._key = None

    def record(self, name: str, step: int, prompts, completions, columns: dict, scores, images: dict) -> None:
        key = id(completions)  # every reward of one batch gets the same list object
        if key != self._key or self.batch is None:
            self._key = key
            self.batch = {"step": step, "prompt": [_text(p) for p in prompts or []],
                          "completion": [_text(c) for c in completions], "columns": {}, "images": {}, "rewards": {}}
        n = len(completions)
        for col, vals in columns.items():
            if isinstance(vals, list) and len(vals) == n and col not in self.batch["columns"]:
                if any(_is_image(v) for v in vals):
                    self.batch["images"][col] = vals
                elif all(v is None or isinstance(v, (str, int, float, bool)) for v in vals):
                    self.batch["columns"][col] = vals
        for col, vals in images.items():
            if len(vals) == n:
                self.batch["images"][col] = vals
        self.batch["rewards"][name] = [None if s is None else float(s) for s in scores]


def check_scores(name: str, scores, n: int) -> None:
    """A reward returns one number (or None: no opinion) per completion; anything else stops the run at once with
    one line naming the reward, not a TypeError from deep inside TRL's reward tensor."""
    if not isinstance(scores, (list, tuple)) or len(scores) != n:
        got = f"{type(scores).__name__} of {len(scores)}" if isinstance(scores, (list, tuple)) else repr(scores)[:80]
        raise ConfigError(f"reward {name!r} returned {got} for {n} completions: a reward returns a list of one "
                          "float (or None) per completion")
    bad = next((s for s in scores if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float))
                                                        and not hasattr(s, "__float__"))), None)
    if bad is not None:
        raise ConfigError(f"reward {name!r} returned {bad!r} ({type(bad).__name__}) among its scores: a reward "
                          "returns floats (or None)")


class RewardCheck:
    """Per reward, over one generation batch: how many completions it scored with a non-finite number, how many with
    None, and of how many (`see`, from the wrapped rewards). `attach(trainer)` checks each batch after TRL scored it,
    summed over every process, so that every rank stops at the same batch with the same line."""

    def __init__(self):
        self.counts: dict[str, list] = {}  # name -> [non-finite, None, total, first non-finite value]

    def see(self, name: str, scores) -> None:
        c = self.counts.setdefault(name, [0, 0, 0, None])
        for s in scores:
            c[2] += 1
            if s is None:
                c[1] += 1
                continue
            try:
                value = float(s)
            except (TypeError, ValueError):
                value = math.nan
            if not math.isfinite(value):
                c[0] += 1
                c[3] = c[3] or (str(value) if isinstance(s, (int, float)) else repr(s)[:40])

    def problem(self, step: int, counts: dict[str, list]) -> str | None:
        for name, (bad, none, total, value) in counts.items():
            if bad:
                return (f"reward {name!r} returned {value or 'a non-finite number'} for {int(bad)} of {int(total)} "
                        f"completions at step {step}: a reward must return a finite number (or None for a completion "
                        "it does not apply to); nothing after the last checkpoint was saved")
            if total and none == total:
                return (f"reward {name!r} returned None for all {int(total)} completions at step {step}: None means "
                        "'does not apply', and a reward that applies to no completion teaches nothing (check it, or "
                        "drop it with rewards.<name>=null); nothing after the last checkpoint was saved")
        return None

    def attach(self, trainer) -> None:
        """Check every generation batch TRL scores (GRPOTrainer._calculate_rewards, which every rank calls)."""
        import torch

        original = trainer._calculate_rewards

        def _calculate_rewards(*args, **kwargs):
            self.counts = {}
            rewards_per_func = original(*args, **kwargs)
            names = list(self.counts)
            local = torch.tensor([self.counts[n][:3] for n in names] or [[0, 0, 0]], dtype=torch.float64,
                                 device=trainer.accelerator.device)
            total = trainer.accelerator.reduce(local, reduction="sum") if trainer.accelerator.num_processes > 1 \
                else local
            counts = {n: [*total[i].tolist(), self.counts[n][3]] for i, n in enumerate(names)}
            problem = self.problem(trainer.state.global_step + 1, counts)
            if problem:
                raise ConfigError(problem)
            return rewards_per_func

        trainer._calculate_rewards = _calculate_rewards


def _media_of(reward) -> dict[str, list]:
    media = getattr(reward, "media", None)
    return media() if callable(media) else {}


def instrument_rewards(rewards, recorder: CompletionRecorder | None = None, batch_check=None,
                       check: RewardCheck | None = None) -> list:
    """Wrap rewards so each logs its time (`timing/reward/<name>`, through TRL's `log_metric`), feeds the table and
    reports its scores to `check`. `batch_check(completions) -> {key: number}` runs once per generation batch (with
    the first reward) and is logged the same way (e.g. the share of completions that fail the format check)."""
    return [_wrap(r, recorder, batch_check if i == 0 else None, check) for i, r in enumerate(rewards)]


def _wrap(reward, recorder, batch_check=None, check=None):
    name = getattr(reward, "__name__", type(reward).__name__)
    is_async = inspect.iscoroutinefunction(reward) or inspect.iscoroutinefunction(type(reward).__call__)

    def after(t0, kwargs, prompts, completions, scores):
        check_scores(name, scores, len(completions))
        if check is not None:
            check.see(name, scores)
        if kwargs.get("log_metric") is not None:
            kwargs["log_metric"](f"timing/reward/{name}", time.perf_counter() - t0)
            for key, value in (batch_check(completions) if batch_check is not None else {}).items():
                kwargs["log_metric"](key, value)
        images = _media_of(reward)
        if recorder is not None:
            state = kwargs.get("trainer_state")
            columns = {k: v for k, v in kwargs.items() if k not in ("trainer_state", "log_extra", "log_metric")}
            recorder.record(name, getattr(state, "global_step", 0), prompts, completions, columns, scores, images)
        return scores

    if is_async:
        async def timed(prompts=None, completions=None, completion_ids=None, **kwargs):
            t0 = time.perf_counter()
            scores = await reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
            return after(t0, kwargs, prompts, completions, scores)
    else:
        def timed(prompts=None, completions=None, completion_ids=None, **kwargs):
            t0 = time.perf_counter()
            scores = reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
            return after(t0, kwargs, prompts, completions, scores)
    timed.__name__ = name  # TRL names the curves rewards/<__name__>/mean
    timed.__wrapped__ = reward
    return timed
