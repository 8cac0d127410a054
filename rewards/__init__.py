"""Reward registry: factories registered by name, so a recipe that does not name a reward never loads its model.

A reward module is one file in this folder with a factory decorated by `@register("name")`. The factory takes the
task, a `RewardContext` and the recipe's options (`rewards.<name>.<option>`), and returns a callable with TRL's
reward signature `(prompts, completions, completion_ids, **columns) -> list[float | None]`. Its weight is
`rewards.<name>.weight`; it is logged as `rewards/<name>/mean|std`. Every module in this folder is imported when the
package is imported (models load inside the factories, so importing one loads no weights), so adding a reward is
one file plus one recipe line.

`@register("name", memory=fn)` declares what the reward keeps on its GPU: `fn(options)` returns a tuple of
`mmpc_rl.plan.ModelMemory` (parameters, resident caches, one call's activations, device) from the options as the
factory sees them. train/ collects them (`reward_memory`) for the memory planner, which knows no reward by name; a
reward without `memory` is named in the plan's notes as not counted.

A reward from outside the package is named by its dotted path, `package.module:attribute`, in the recipe
(`rewards.my_pkg.my_rewards:brevity.weight=0.5`). The attribute is either a factory like the ones here (it takes
`task` and `context`, and its other parameters are the reward's options) or a plain TRL reward function.

`build_rewards` returns a `RewardSet`: the functions, their weights and their names together, in recipe order.
"""

from __future__ import annotations

import importlib
import pkgutil

import mmpc_rl.tiny  # noqa: F401 - registers tiny:// with mmpc_rl.models: reward options may name tiny models
from mmpc_rl.rewards.registry import (
    REGISTRY,
    Reward,
    RewardContext,
    RewardSet,
    RewardSpec,
    build_reward,
    build_rewards,
    no_model,
    options_of,
    register,
    reward_memory,
    spec,
    validate_rewards,
)

__all__ = ["REGISTRY", "Reward", "RewardContext", "RewardSet", "RewardSpec", "build_reward", "build_rewards",
           "no_model", "options_of", "register", "reward_memory", "spec", "validate_rewards"]

# The reward modules of this folder register themselves on import; `registry` is not one of them.
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "registry":
        importlib.import_module(f"{__name__}.{_mod.name}")
