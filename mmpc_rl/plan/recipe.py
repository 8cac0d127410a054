"""Planner inputs from a recipe (today's DictConfig or the typed Recipe of issue 10: read only as attributes and
`.get`). A layout key that is missing or null is open: the planner may choose it."""

from __future__ import annotations

import dataclasses
import math

from mmpc_rl.plan.memory import GIB, Plan, PlanInputs, RewardModel, choose_layout, plan
from mmpc_rl.plan.shapes import image_tokens, model_shape
from mmpc_rl.prompts import DEFAULT_PROMPT, prompt_text

# GRPOConfig defaults in TRL 1.16 (trl/trainer/grpo_config.py) for keys a recipe leaves out.
TRL_DEFAULTS = {"num_generations": 8, "max_completion_length": 512, "beta": 0.0}
# Parameter counts on the meta device from the published configs (diffusers 0.42 / transformers 5.2x):
# SD3.5-large MMDiT 8,056,627,520 + VAE 83,819,683 + T5-XXL encoder 4,762,310,656 + CLIP-L 123,650,304 + CLIP-G
# 694,659,840; open_clip ViT-B/32 151,277,313; all-MiniLM-L6-v2 22,713,216; roberta-large 355,359,744.
SD35_LARGE_PARAMS = 13_721_068_003
SD3_HIDDEN, SD3_TEXT_TOKENS, SD3_T5_WIDTH = 2432, 77, 4096
CLIP_B32_PARAMS, MINILM_PARAMS, ROBERTA_LARGE_PARAMS = 151_277_313, 22_713_216, 355_359_744
# Chat-template tokens around a Qwen2.5-VL user turn (default system prompt, role markers, vision start/end) and
# English prompt text at ~4 characters per token: an estimate, since the real tokenizer is not here (prompt_tokens=).
TEMPLATE_TOKENS, CHARS_PER_TOKEN, TITLE_CHARS = 21, 4, 120
DEFAULT_IMAGE_PX = 500  # an Amazon-2023 "large" product image is about 500 px on its longest side


def _get(section, key, default=None):
    if section is None:
        return default
    value = section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)
    return default if value is None else value


def estimated_prompt_tokens(task: str, prompt: str = DEFAULT_PROMPT) -> int:
    text = prompt_text(task, prompt)
    text = text.format(description="x" * TITLE_CHARS) if "{description}" in text else text
    return TEMPLATE_TOKENS + math.ceil(len(text) / CHARS_PER_TOKEN)


def _on_policy_gpu(opts: dict) -> bool:
    device = str(opts.get("device") or "cuda")
    return device in ("cuda", "cuda:0")


def reward_models(rewards) -> tuple[list[RewardModel], list[str]]:
    models, notes = [], []
    for name, opts in (rewards or {}).items():
        opts = dict(opts or {})
        if name == "minilm_cosine" and _on_policy_gpu(opts):
            models.append(RewardModel("MiniLM (reward)", MINILM_PARAMS * 4 / GIB))
        elif name == "sd35_clip":
            if not _on_policy_gpu(opts):
                notes.append(f"sd35_clip on {opts.get('device')}: not counted on the policy's GPU")
                continue
            size = int(opts.get("size", 1024))
            ctx = SD3_TEXT_TOKENS + int(opts.get("max_sequence_length", 512))
            cache = int(opts.get("text_cache_size", 256)) * ctx * SD3_T5_WIDTH * 2
            weights = SD35_LARGE_PARAMS * 2 + CLIP_B32_PARAMS * 2
            # analytic, unmeasured: an MMDiT block's bf16 temporaries (~12 x hidden per token) for max_batch images,
            # or the VAE decoder's 128-channel full-resolution maps (~4 live, bf16) for decode_batch images
            tokens = int(opts.get("max_batch", 16)) * ((size // 16) ** 2 + ctx)
            mmdit = tokens * 12 * SD3_HIDDEN * 2
            vae = int(opts.get("decode_batch", 4)) * size * size * 128 * 2 * 4
            models.append(RewardModel("SD3.5-large + CLIP (reward)", (weights + cache) / GIB, max(mmdit, vae) / GIB))
    return models, notes


def inputs_from_recipe(recipe, *, image_px: int | None = None, prompt_tokens: int | None = None,
                       device: str = "cuda", kbit_upcast: bool = False,
                       qlora_fp32_adapters: bool = True) -> PlanInputs:
    """PlanInputs for `recipe`. The two QLoRA switches describe the trainer, not the recipe: train.builder upcasts no
    non-NF4 weight to fp32 (kbit_upcast=False: no prepare_model_for_kbit_training) and keeps the adapters fp32 after
    TRL's bf16 cast (qlora_fp32_adapters=True). Plain TRL (the anchors) is kbit_upcast=False, adapters bf16."""
    model, trainer, lora = recipe.model, recipe.trainer, recipe.get("lora") if hasattr(recipe, "get") else recipe.lora
    shape = model_shape(str(model.name_or_path), _get(model, "revision"))
    task = str(recipe.task)
    notes = []
    if shape.source == "built-in":
        notes.append(f"{shape.name} is not cached here: planned from the built-in shape table (nothing downloaded)")
    px = image_px or DEFAULT_IMAGE_PX
    n_image = image_tokens(shape, px, px, _get(model, "min_pixels"), _get(model, "max_pixels")) if task == "i2t" else 0
    if prompt_tokens is None:
        prompt_tokens = estimated_prompt_tokens(task, _get(recipe.data, "prompt", DEFAULT_PROMPT))
        notes.append(f"prompt text ~{prompt_tokens} tokens (estimated; set prompt_tokens=N)")
    if task == "i2t":
        notes.append(f"one {px}x{px} image -> {n_image} image tokens")
    dropout = 0.0 if _get(trainer, "disable_dropout", False) else float(_get(lora, "lora_dropout", 0.0))
    rewards, reward_notes = reward_models(recipe.rewards)
    notes += reward_notes
    ev = recipe.get("eval") if hasattr(recipe, "get") else recipe.eval
    cqbench, eval_batch, eval_tokens = None, 0, 0
    if _get(ev, "enabled", False):
        bert = ROBERTA_LARGE_PARAMS * 4 / GIB if _get(ev, "bertscore") else 0.0
        cqbench = RewardModel("CQBench scorers", bert)
        eval_batch, eval_tokens = int(_get(ev, "batch_size", 16)), int(_get(ev, "max_new_tokens", 128))
    gc = _get(trainer, "gradient_checkpointing")
    return PlanInputs(
        shape=shape, prompt_text_tokens=int(prompt_tokens), image_tokens=n_image,
        completion_tokens=int(_get(trainer, "max_completion_length", TRL_DEFAULTS["max_completion_length"])),
        num_generations=int(_get(trainer, "num_generations", TRL_DEFAULTS["num_generations"])),
        micro_batch=_get(trainer, "per_device_train_batch_size"),
        grad_accum=_get(trainer, "gradient_accumulation_steps"),
        steps_per_generation=_get(trainer, "steps_per_generation"),
        gradient_checkpointing=None if gc is None else bool(gc),
        lora_r=int(_get(lora, "r", 8)), lora_dropout=dropout, lora_targets=_get(lora, "target_modules"),
        qlora=bool(_get(model, "qlora", False)), kbit_upcast=kbit_upcast, qlora_fp32_adapters=qlora_fp32_adapters,
        beta=float(_get(trainer, "beta", TRL_DEFAULTS["beta"])),
        device=device, rewards=tuple(rewards), cqbench=cqbench, eval_batch=eval_batch, eval_new_tokens=eval_tokens,
        notes=tuple(notes))


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
