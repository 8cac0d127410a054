"""Reward registry: factories registered by name, so a recipe that does not name a reward never loads its model.

A reward module is one file in this folder with a factory decorated by `@register("name")`. The factory takes the
task, a `RewardContext` and the recipe's options (`rewards.<name>.<option>`), and returns a callable with TRL's
reward signature `(prompts, completions, completion_ids, **columns) -> list[float | None]`. Its weight is
`rewards.<name>.weight`; it is logged as `rewards/<name>/mean|std`. Every module in this folder is imported when the
package is imported (they keep heavy imports inside their factories), so adding a reward is one file plus one
recipe line.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmpc_rl.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class RewardSpec:
    name: str
    factory: Callable[..., Callable]
    tasks: tuple[str, ...]  # tasks it applies to; empty = any
    higher_is_better: bool = True


@dataclass
class RewardContext:
    """What a factory may need besides its options: where to run, and models the caller already holds (tests and
    the CQBench callback inject models here instead of loading them again)."""

    device: str | None = None
    models: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None


REGISTRY: dict[str, RewardSpec] = {}


def register(name: str, tasks: tuple[str, ...] = ()) -> Callable:
    def deco(factory: Callable) -> Callable:
        if name in REGISTRY and REGISTRY[name].factory is not factory:
            raise ValueError(f"reward {name!r} is registered twice")
        REGISTRY[name] = RewardSpec(name, factory, tuple(tasks))
        return factory

    return deco


class Reward:
    """A named reward callable. TRL logs a reward under its `__name__`, so this is the registry name."""

    def __init__(self, name: str, fn: Callable[..., list[float | None]]):
        self.__name__ = name
        self.fn = fn

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs) -> list[float | None]:
        return self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)

    def __repr__(self) -> str:
        return f"Reward({self.__name__})"


def build_reward(name: str, task, context: RewardContext | None = None, **options) -> Reward:
    if name not in REGISTRY:
        raise ConfigError(f"unknown reward {name!r}" + did_you_mean(name, REGISTRY))
    fn = REGISTRY[name].factory(task=task, context=context or RewardContext(), **options)
    return fn if isinstance(fn, Reward) else Reward(name, fn)


def build_rewards(rewards: dict[str, dict], task, context: RewardContext | None = None) -> list[Reward]:
    """Rewards in recipe order from `{name: {weight, **options}}` (weights go to GRPOConfig, not here)."""
    context = context or RewardContext()
    out = []
    for name, opts in rewards.items():
        opts = {k: v for k, v in (opts or {}).items() if k != "weight"}
        out.append(build_reward(name, task, context, **opts))
    return out


# Last, so that `register` exists when each module registers itself.
for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")
