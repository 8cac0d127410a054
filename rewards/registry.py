"""The reward registry and the objects it builds (see the package docstring)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mmpc_rl.checks import check_arguments
from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.plan import ModelMemory

# What a reward keeps beside the policy, for the memory planner: its options (the factory's defaults filled in) ->
# one ModelMemory per model it loads, () for none.
Memory = Callable[[dict[str, Any]], tuple[ModelMemory, ...]]


@dataclass(frozen=True)
class RewardSpec:
    name: str
    factory: Callable[..., Callable]
    tasks: tuple[str, ...]  # tasks it applies to; empty = any
    memory: Memory | None = None  # None: undeclared (a reward from outside the package), so not counted


def no_model(options: dict[str, Any]) -> tuple[ModelMemory, ...]:
    """The memory of a reward that loads no model."""
    return ()


@dataclass
class RewardContext:
    """What a factory may need besides its options: where to run, and models the caller already holds (tests and
    the CQBench callback inject models here instead of loading them again)."""

    device: str | None = None
    models: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None
    is_main_process: bool = True  # only the main process writes files a reward keeps (render panels)


REGISTRY: dict[str, RewardSpec] = {}


def register(name: str, tasks: tuple[str, ...] = (), memory: Memory | None = None) -> Callable:
    def deco(factory: Callable) -> Callable:
        if name in REGISTRY and REGISTRY[name].factory is not factory:
            raise ValueError(f"reward {name!r} is registered twice")
        REGISTRY[name] = RewardSpec(name, factory, tuple(tasks), memory)
        return factory

    return deco


class Reward:
    """A named reward callable. TRL logs a reward under its `__name__`, so this is the registry name."""

    def __init__(self, name: str, fn: Callable[..., list[float | None]]):
        self.__name__ = name
        self.fn = fn

    def __call__(self, prompts=None, completions=None, completion_ids=None, **kwargs) -> list[float | None]:
        return self.fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)

    def media(self) -> dict[str, list]:
        """Images the last call made, per completion ({column: [[images of completion i], ...]}), for the
        completions table; a reward that renders implements `media()` on its function."""
        media = getattr(self.fn, "media", None)
        return media() if callable(media) else {}

    def __repr__(self) -> str:
        return f"Reward({self.__name__})"


@dataclass(frozen=True)
class RewardSet:
    """The recipe's rewards, built: functions, weights and names in one order (TRL matches them by position)."""

    names: tuple[str, ...]
    funcs: tuple[Reward, ...]
    weights: tuple[float, ...]

    def __iter__(self) -> Iterator[Reward]:
        return iter(self.funcs)

    def __len__(self) -> int:
        return len(self.funcs)

    def get(self, name: str) -> Reward | None:
        return dict(zip(self.names, self.funcs, strict=True)).get(name)


# ------------------------------------------------------------------------------------------------ lookup
def _outside(path: str) -> RewardSpec:
    """The reward at `package.module:attribute`: a registered factory, a factory by signature, or a plain
    TRL reward function (no options)."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ConfigError(f"reward {path!r}: name a reward from outside the package as package.module:function")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, ValueError, TypeError) as e:  # ValueError/TypeError: a malformed module name
        raise ConfigError(f"reward {path!r}: cannot import module {module!r} ({e})") from None
    except AttributeError:
        raise ConfigError(f"reward {path!r}: module {module!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigError(f"reward {path!r} is not callable")
    registered = next((s for s in REGISTRY.values() if s.factory is obj), None)
    if registered is not None:
        return registered
    try:
        takes_task = "task" in inspect.signature(obj).parameters
    except (TypeError, ValueError):  # a builtin or C function without a signature: a plain reward function
        takes_task = False
    if takes_task:
        return RewardSpec(path, obj, ())

    def plain(task, context=None):
        return obj

    return RewardSpec(path, plain, ())


def spec(name: str) -> RewardSpec:
    if ":" in name:
        return _outside(name)
    if name not in REGISTRY:
        raise ConfigError(f"unknown reward {name!r}" + did_you_mean(name, REGISTRY)
                          + " (or package.module:function for one outside the package)")
    return REGISTRY[name]


def options_of(s: RewardSpec) -> list[str]:
    return [p for p in inspect.signature(s.factory).parameters if p not in ("task", "context")]


def validate_rewards(rewards: Mapping[str, Mapping], task: str) -> None:
    """Names, tasks and options of the recipe's rewards: each fails at once with the valid choices (weights are
    numbers already: config.build_recipe checks them for every reward)."""
    if not rewards:
        raise ConfigError("the recipe names no reward; valid choices: " + ", ".join(sorted(REGISTRY)))
    for name, opts in rewards.items():
        s = spec(name)
        if s.tasks and task not in s.tasks:
            raise ConfigError(f"reward {name!r} is for task(s) {', '.join(s.tasks)}, not {task!r}")
        valid = ["weight", *options_of(s)]
        for key in opts:
            if key not in valid:
                raise ConfigError(f"unknown key rewards.{name}.{key}" + did_you_mean(str(key), valid))
        check_arguments(f"rewards.{name}", s.factory, {k: v for k, v in opts.items() if k != "weight"})


def reward_memory(rewards: Mapping[str, Mapping]) -> tuple[ModelMemory, ...]:
    """What the recipe's rewards keep beside the policy, for the memory planner (train/ passes it on): each reward's
    `memory` on its options as the factory sees them, the factory's own defaults filled in. A reward that declares
    none is a note in the plan: any model it loads is not counted."""
    out = []
    for name, opts in rewards.items():
        s = spec(name)
        if s.memory is None:
            out.append(ModelMemory(f"{name} (reward)", note=f"reward {name} declares no memory: any model it loads "
                                                            "is not counted"))
            continue
        params = inspect.signature(s.factory).parameters
        given = dict(opts or {})
        out.extend(s.memory({key: given.get(key, params[key].default) for key in options_of(s)}))
    return tuple(out)


# ------------------------------------------------------------------------------------------------ building
def build_reward(name: str, task, context: RewardContext | None = None, **options) -> Reward:
    fn = spec(name).factory(task=task, context=context or RewardContext(), **options)
    return fn if isinstance(fn, Reward) else Reward(name, fn)


def build_rewards(rewards: Mapping[str, Mapping], task, context: RewardContext | None = None) -> RewardSet:
    """The RewardSet for `{name: {weight, **options}}`, in recipe order."""
    context = context or RewardContext()
    funcs, weights = [], []
    for name, opts in rewards.items():
        opts = dict(opts or {})
        weights.append(float(opts.pop("weight", 1.0)))
        funcs.append(build_reward(name, task, context, **opts))
    return RewardSet(tuple(rewards), tuple(funcs), tuple(weights))
