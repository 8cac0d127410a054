"""Planner inputs from a typed Recipe (mmpc_rl.config). A layout key that is missing or null is open: the planner may
choose it. The models the rewards keep beside the policy come from the caller (train/ asks the rewards:
`mmpc_rl.rewards.reward_memory`), so the planner knows no reward."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from mmpc_rl.errors import ConfigError
from mmpc_rl.plan.memory import (
    EVIDENCE_MARGIN,
    ModelMemory,
    Plan,
    PlanInputs,
    choose_layout,
    plan,
    required_gb,
)
from mmpc_rl.plan.shapes import image_tokens, max_image_tokens, model_shape
from mmpc_rl.prompts import prompt_text

# CQBench's BERTScore encoder in training: roberta-large (the authors' evaluate default; 355,359,744 parameters on the
# meta device), in fp32 on the CPU, where mmpc_rl.models places BERTScore and the training callback leaves it.
CQBENCH_BERTSCORE = ModelMemory("CQBench BERTScore (roberta-large)", params=355_359_744, bytes_per_param=4,
                                device="cpu")
# Chat-template tokens around a Qwen2.5-VL user turn (default system prompt, role markers, vision start/end) and
# English prompt text at ~4 characters per token: an estimate, since the real tokenizer is not here (prompt_tokens=).
TEMPLATE_TOKENS, CHARS_PER_TOKEN, TITLE_CHARS = 21, 4, 120


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
    i2t = recipe.task == "i2t"
    if not i2t:
        n_image = 0
    elif image_px:
        n_image = image_tokens(shape, image_px, image_px, model.min_pixels, model.max_pixels)
    else:  # the worst case a dataset can send: one group is one image x G sequences
        n_image = max_image_tokens(shape, model.max_pixels)
    if prompt_tokens is None:
        prompt_tokens = estimated_prompt_tokens(recipe.task, recipe.data.prompt)
        notes.append(f"prompt text ~{prompt_tokens} tokens (estimated; set prompt_tokens=N)")
    if i2t and image_px:
        notes.append(f"one {image_px}x{image_px} image -> {n_image} image tokens")
    elif i2t:
        notes.append(f"an image at the pixel cap ({model.max_pixels or shape.max_pixels:,} px) -> {n_image} image "
                     "tokens, the most one image can cost (image_px=N plans an N x N image)")
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
    layout choose_layout() picks (settings["chosen_by"] says which). When it does not fit, settings["fits_with"] lists
    what does: a layout with the same objective, a smaller model.max_pixels, or a bigger GPU."""
    inputs = inputs_from_recipe(recipe, **kwargs)
    if None not in (inputs.micro_batch, inputs.grad_accum, inputs.gradient_checkpointing):
        result = plan(inputs, gpu_gb)
        result.settings["chosen_by"] = "recipe"
    else:
        chosen, result = choose_layout(inputs, gpu_gb)
        result.settings["chosen_by"] = "planner" if chosen else "planner: no layout fits"
    if not result.fits:
        result.settings["fits_with"] = fits_with(recipe, inputs, gpu_gb, **kwargs)
        result.notes.append("does not fit; what does: " + "; or ".join(result.settings["fits_with"]))
    return result


def same_objective(inputs: PlanInputs) -> PlanInputs:
    """The layout opened where it keeps the objective (one group per optimizer step); a pinned layout that does not
    (micro-batch x accumulation other than G) stays as it is."""
    if inputs.micro_batch and inputs.grad_accum and inputs.micro_batch * inputs.grad_accum != inputs.num_generations:
        return inputs
    return dataclasses.replace(inputs, micro_batch=None, grad_accum=None, gradient_checkpointing=None,
                               steps_per_generation=None)


def fits_with(recipe, inputs: PlanInputs, gpu_gb: float, **kwargs) -> list[str]:
    """What makes a recipe that does not fit `gpu_gb` fit, as overrides: a layout with the same objective, else the
    largest image cap (model.max_pixels, image->text) that fits with some layout, and always the GPU size that would
    hold the leanest layout."""
    out = []
    opened = same_objective(inputs)
    chosen, smallest = choose_layout(opened, gpu_gb)  # when nothing fits: the smallest plan it tried
    if chosen is not None and (inputs.micro_batch is not None or inputs.gradient_checkpointing is not None):
        out.append("a layout that fits: " + layout_overrides(chosen))
    elif inputs.image_tokens and kwargs.get("image_px") is None:
        factor = (inputs.shape.patch_size * inputs.shape.merge_size) ** 2
        for tokens in range(inputs.image_tokens - 64, 63, -64):
            capped = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, max_pixels=tokens * factor))
            layout, _ = choose_layout(same_objective(inputs_from_recipe(capped, **kwargs)), gpu_gb)
            if layout is not None:
                out.append(f"model.max_pixels={tokens * factor} (images of at most {tokens} tokens) with "
                           + layout_overrides(layout))
                break
    if chosen is not None:  # a layout fits: its smallest plan is what no GPU (0 GiB) holds
        _, smallest = choose_layout(opened, 0.0)
    need = required_gb(smallest.peak_gb)
    out.append(f"a GPU of at least {math.ceil(need)} GiB (gpu_gb={math.ceil(need)}; the fit rule keeps "
               f"{EVIDENCE_MARGIN:.1%} of it free for the planner's measured bias)")
    return out
