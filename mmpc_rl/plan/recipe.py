"""Planner inputs from a typed Recipe (mmpc_rl.config). A layout key that is missing or null is open: the planner may
choose it. The models the rewards keep beside the policy come from the caller (train/ asks the rewards:
`mmpc_rl.rewards.reward_memory`), so the planner knows no reward."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from mmpc_rl.errors import ConfigError
from mmpc_rl.plan.memory import ModelMemory, Plan, PlanInputs, choose_layout, plan
from mmpc_rl.plan.shapes import image_tokens, model_shape
from mmpc_rl.prompts import prompt_text

# CQBench's BERTScore encoder in training: roberta-large (the authors' evaluate default; 355,359,744 parameters on the
# meta device), in fp32 on the CPU, where mmpc_rl.models places BERTScore and the training callback leaves it.
CQBENCH_BERTSCORE = ModelMemory("CQBench BERTScore (roberta-large)", params=355_359_744, bytes_per_param=4,
                                device="cpu")
# Chat-template tokens around a Qwen2.5-VL user turn (default system prompt, role markers, vision start/end) and
# English prompt text at ~4 characters per token: an estimate, since the real tokenizer is not here (prompt_tokens=).
TEMPLATE_TOKENS, CHARS_PER_TOKEN, TITLE_CHARS = 21, 4, 120
DEFAULT_IMAGE_PX = 500  # an Amazon-2023 "large" product image is about 500 px on its longest side


def estimated_prompt_tokens(task: str, prompt: str) -> int:
    text = prompt_text(task, prompt)
    text = text.format(description="x" * TITLE_CHARS) if "{description}" in text else text
    return TEMPLATE_TOKENS + math.ceil(len(text) / CHARS_PER_TOKEN)


def trainer_value(trainer, key: str):
    """A trainer value the planner needs; recipes/base.yaml states each, so only an explicit null is missing."""
    value = trainer.get(key)
    if value is None:
        raise ConfigError(f"trainer.{key} is null: the memory planner needs a value (recipes/base.yaml states one)")
    return value


def on_policy_gpu(models: Iterable[ModelMemory], notes: list[str]) -> tuple[ModelMemory, ...]:
    """The models that take memory on the policy's GPU; each one elsewhere, and each one's own caveat, as a note."""
    kept = []
    for m in models:
        if m.note:
            notes.append(m.note)
        if not m.on_policy_gpu:
            notes.append(f"{m.name} on {m.device}: not counted on the policy's GPU")
        elif m.resident_gb or m.transient_gb:
            kept.append(m)
    return tuple(kept)


def inputs_from_recipe(recipe, *, models: Iterable[ModelMemory] = (), image_px: int | None = None,
                       prompt_tokens: int | None = None, device: str = "cuda", kbit_upcast: bool = False,
                       qlora_fp32_adapters: bool = True) -> PlanInputs:
    """PlanInputs for `recipe`, with `models` beside the policy (what its rewards declare). The two QLoRA switches
    describe the trainer, not the recipe: train.builder upcasts no non-NF4 weight to fp32 (kbit_upcast=False: no
    prepare_model_for_kbit_training) and keeps the adapters fp32 after TRL's bf16 cast (qlora_fp32_adapters=True).
    Plain TRL (the anchors) is kbit_upcast=False, adapters bf16."""
    model, trainer, lora, ev = recipe.model, recipe.trainer, recipe.lora, recipe.eval
    shape = model_shape(str(model.name_or_path), model.revision)
    notes = []
    if shape.source == "built-in":
        notes.append(f"{shape.name} is not cached here: planned from the built-in shape table (nothing downloaded)")
    px = image_px or DEFAULT_IMAGE_PX
    i2t = recipe.task == "i2t"
    n_image = image_tokens(shape, px, px, model.min_pixels, model.max_pixels) if i2t else 0
    if prompt_tokens is None:
        prompt_tokens = estimated_prompt_tokens(recipe.task, recipe.data.prompt)
        notes.append(f"prompt text ~{prompt_tokens} tokens (estimated; set prompt_tokens=N)")
    if i2t:
        notes.append(f"one {px}x{px} image -> {n_image} image tokens")
    dropout = 0.0 if trainer.get("disable_dropout") else float(lora.get("lora_dropout") or 0.0)
    rewards = on_policy_gpu(models, notes)
    eval_models = on_policy_gpu([CQBENCH_BERTSCORE] if ev.enabled and ev.bertscore and i2t else [], notes)
    gc = trainer.get("gradient_checkpointing")
    return PlanInputs(
        shape=shape, prompt_text_tokens=int(prompt_tokens), image_tokens=n_image,
        completion_tokens=int(trainer_value(trainer, "max_completion_length")),
        num_generations=int(trainer_value(trainer, "num_generations")),
        micro_batch=trainer.get("per_device_train_batch_size"),
        grad_accum=trainer.get("gradient_accumulation_steps"),
        steps_per_generation=trainer.get("steps_per_generation"),
        gradient_checkpointing=None if gc is None else bool(gc),
        lora_r=int(lora.get("r") or 0), lora_dropout=dropout, lora_targets=lora.get("target_modules"),
        qlora=model.qlora, kbit_upcast=kbit_upcast, qlora_fp32_adapters=qlora_fp32_adapters,
        beta=float(trainer_value(trainer, "beta")), device=device, rewards=rewards,
        eval_batch=ev.batch_size if ev.enabled else 0, eval_new_tokens=ev.max_new_tokens if ev.enabled else 0,
        eval_models=eval_models, notes=tuple(notes))


def layout_overrides(settings: dict) -> str:
    """A layout as the recipe overrides that pin it."""
    return (f"trainer.per_device_train_batch_size={settings['micro_batch']} "
            f"trainer.gradient_accumulation_steps={settings['grad_accum']} "
            f"trainer.gradient_checkpointing={str(settings['gradient_checkpointing']).lower()}")


def plan_recipe(recipe, gpu_gb: float, **kwargs) -> Plan:
    """The plan for a recipe on a `gpu_gb` device: its pinned layout as is, or, where it leaves the layout open, the
    layout choose_layout() picks (settings["chosen_by"] says which)."""
    inputs = inputs_from_recipe(recipe, **kwargs)
    pinned = None not in (inputs.micro_batch, inputs.grad_accum, inputs.gradient_checkpointing)
    if pinned:
        result = plan(inputs, gpu_gb)
        result.settings["chosen_by"] = "recipe"
        if not result.fits and inputs.micro_batch * inputs.grad_accum == inputs.num_generations:
            # the same objective (one group per optimizer step) with the layout left open
            opened = dataclasses.replace(inputs, micro_batch=None, grad_accum=None, gradient_checkpointing=None,
                                         steps_per_generation=None)
            chosen, alt = choose_layout(opened, gpu_gb)
            result.settings["fitting_layout"] = chosen
            if chosen:
                result.notes.append("a layout that fits: " + layout_overrides(chosen) + f" ({alt.peak_gb:.1f} GiB)")
        return result
    chosen, result = choose_layout(inputs, gpu_gb)
    result.settings["chosen_by"] = "planner" if chosen else "planner: no layout fits"
    return result
