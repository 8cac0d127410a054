"""The recipe of a training-side command: the typed Recipe, with its rewards checked by the reward package.

Light on purpose (no TRL, no torch model code): entry points call it first, so a bad recipe, key or reward fails in
seconds, before the heavy imports."""

from __future__ import annotations

from mmpc_rl.config import Recipe, load_recipe
from mmpc_rl.rewards import validate_rewards


def load_training_recipe(argv: list[str] | None = None, default: str | None = None) -> Recipe:
    recipe = load_recipe(argv, default)
    validate_rewards(recipe.rewards, recipe.task)
    return recipe
