"""Reward instrumentation: each reward is wrapped so it logs its own time and feeds the completions table.

The wrapper records what the rewards saw in one generation batch (prompt, completion, data columns, every reward's
scores, and images) in a `CompletionRecorder`; `train.callbacks.CompletionsTable` writes it. Images come from the
dataset's image columns and from `Reward.media()` (the renders a text->image reward made in its last call).
"""

from __future__ import annotations

import inspect
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


def _media_of(reward) -> dict[str, list]:
    media = getattr(reward, "media", None)
    return media() if callable(media) else {}


def instrument_rewards(rewards, recorder: CompletionRecorder | None = None, batch_check=None) -> list:
    """Wrap rewards so each logs its time (`timing/reward/<name>`, through TRL's `log_metric`) and feeds the table.
    `batch_check(completions) -> {key: number}` runs once per generation batch (with the first reward) and is logged
    the same way (e.g. the share of completions that fail the format check)."""
    return [_wrap(r, recorder, batch_check if i == 0 else None) for i, r in enumerate(rewards)]


def _wrap(reward, recorder, batch_check=None):
    name = getattr(reward, "__name__", type(reward).__name__)
    is_async = inspect.iscoroutinefunction(reward) or inspect.iscoroutinefunction(type(reward).__call__)

    def after(t0, kwargs, prompts, completions, scores):
        check_scores(name, scores, len(completions))
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
