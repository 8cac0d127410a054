"""`mmpc-rl plan recipe=NAME [gpu_gb=80] [image_px=N] [prompt_tokens=N] [format=text|json] [key=value ...]`:
the predicted peak GPU memory of one GRPO step of a recipe, with its breakdown and whether it fits. Nothing is
loaded or downloaded: the model is counted on the meta device, and the rewards' models from what each reward
declares. Planner options are split out first; every other key=value overrides the recipe, as for `mmpc-rl train`.
Exit status 0 when it fits, 1 when it does not (the output then names a layout, a model.max_pixels or a GPU size
that fits), 2 on bad input."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mmpc_rl.checks import at_least, greater_than, one_of
from mmpc_rl.options import parse_options
from mmpc_rl.plan import plan_recipe
from mmpc_rl.rewards import reward_memory
from mmpc_rl.train.recipe import load_training_recipe

USAGE = ("usage: mmpc-rl plan recipe=NAME [gpu_gb=80] [image_px=N] [prompt_tokens=N] [format=text|json] "
         "[key=value ...]\n(docs/memory.md)")


@dataclass
class PlanOptions:
    """The predicted peak GPU memory of one GRPO step of a recipe, its breakdown and whether it fits (exit 0 when it
    fits, 1 when it does not, 2 on bad input); nothing is loaded or downloaded."""

    # the paper: "All experiments are conducted on a single 80 GB H100 GPU"
    gpu_gb: float = field(default=80.0, metadata=greater_than(0))
    # side of the (square) product image; None: an image at the model.max_pixels cap
    image_px: int | None = field(default=None, metadata=at_least(1))
    # prompt text tokens; None: estimated from the task's prompt
    prompt_tokens: int | None = field(default=None, metadata=at_least(1))
    format: str = field(default="text", metadata=one_of("text", "json"))


def render_text(result, recipe_name: str) -> str:
    s = result.settings
    width = max(map(len, result.breakdown)) + 2
    lines = [f"recipe {recipe_name}: peak {result.peak_gb:.1f} GiB of {result.gpu_gb:g} GiB "
             f"(at the {result.phase}) -> {'fits' if result.fits else 'DOES NOT FIT'}",
             f"layout ({s.get('chosen_by', 'recipe')}): per_device_train_batch_size={s['micro_batch']} "
             f"gradient_accumulation_steps={s['grad_accum']} steps_per_generation={s['steps_per_generation']} "
             f"gradient_checkpointing={str(s['gradient_checkpointing']).lower()}",
             f"sequence: {s['tokens_per_sequence']} tokens ({s['prompt_text_tokens']} text + {s['image_tokens']} "
             f"image + {s['completion_tokens']} completion); {s['activation_kib_per_token_per_layer']} KiB saved per "
             "token per layer", ""]
    lines += [f"  {name:<{width}}{gb:8.2f} GiB" for name, gb in result.breakdown.items()]
    lines += ["", "phases (peak GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in result.phases.items())]
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    opts, rest = parse_options(PlanOptions, list(argv), "mmpc-rl plan", recipe_keys=True, usage=USAGE)
    recipe = load_training_recipe(rest)
    result = plan_recipe(recipe, opts.gpu_gb, models=reward_memory(recipe.rewards), image_px=opts.image_px,
                         prompt_tokens=opts.prompt_tokens)
    if opts.format == "json":
        print(json.dumps(result.as_dict()))
    else:
        print(render_text(result, recipe.name))
    return 0 if result.fits else 1
