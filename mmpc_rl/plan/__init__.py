"""The memory planner: predicted peak GPU memory of a GRPO step, and the fastest layout that fits a GPU.

Core (no TRL import): `plan(inputs, gpu_gb)`, `choose_layout(inputs, gpu_gb)`, `inputs_from_recipe(recipe, ...)`.
"""

from mmpc_rl.plan.memory import ModelMemory, Plan, PlanInputs, choose_layout, device_gb, plan
from mmpc_rl.plan.recipe import inputs_from_recipe, plan_recipe
from mmpc_rl.plan.shapes import ModelShape, image_tokens, model_shape

__all__ = ["ModelMemory", "ModelShape", "Plan", "PlanInputs", "choose_layout", "device_gb", "image_tokens",
           "inputs_from_recipe", "model_shape", "plan", "plan_recipe"]
