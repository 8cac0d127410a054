"""One per-process cache of loaded models, keyed on (kind, resolved source, device, dtype, options).

The T->I reward and CQBench share SD3.5 (~28 GB) and CLIP this way, and a GRPO step that calls a reward many times
loads its model once. The key holds the resolved placement, so `device=None` and the device it stands for find the
same copy. Trainable models (the policy) are never cached here: a shared copy would carry one run's updates into
the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from mmpc_rl.zero3 import whole_weights

_CACHE: dict[tuple, Any] = {}
# Re-entrant: TRL may call rewards from threads, and a loader may itself load a cached part.
_LOCK = threading.RLock()


def cache_key(kind: str, source: str, device, dtype, options: Mapping[str, Hashable] | None = None) -> tuple:
    return (kind, str(source), str(device), str(dtype), tuple(sorted((options or {}).items())))


def cached(key: tuple, build: Callable[[], Any]) -> Any:
    """The object under `key`, built by `build()` on the first request; a failed build caches nothing. Cached models
    are frozen scorers and renderers: loaded whole even under ZeRO-3's zero.Init, which would shard them into weights
    no DeepSpeed engine ever gathers."""
    with _LOCK:
        if key not in _CACHE:
            with whole_weights():
                _CACHE[key] = build()
        return _CACHE[key]


def cached_keys(kind: str | None = None) -> list[tuple]:
    return [k for k in _CACHE if kind is None or k[0] == kind]


def clear_cache(kind: str | None = None) -> None:
    """Drop cached models (all, or one kind) so their memory can be freed once no caller holds them."""
    with _LOCK:
        for key in cached_keys(kind):
            del _CACHE[key]
