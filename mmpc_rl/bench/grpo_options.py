"""`mmpc-rl benchmark`'s options: parsed before torch, TRL or a model is imported, so a bad one fails in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmpc_rl.checks import at_least, one_of
from mmpc_rl.errors import ConfigError
from mmpc_rl.options import parse_options

ARMS = ("project", "plain")
SHAPES = ("real", "tiny")
# What defines the algorithm: the plain arm takes these from the recipe and leaves everything else at TRL's defaults.
ALGORITHM_KEYS = ("learning_rate", "loss_type", "beta", "epsilon", "epsilon_high", "delta", "scale_rewards",
                  "temperature", "top_p", "top_k", "num_iterations", "importance_sampling_level", "seed",
                  "mask_truncated_completions", "multi_objective_aggregation")


@dataclass
class BenchOptions:
    """N steps of a recipe on a random-weight model in the real shape: the project arm (a training run of the
    recipe) vs plain TRL, with the same model, prompts, group size and completion length."""

    recipe: str = "i2t"
    steps: int = field(default=5, metadata=at_least(1))  # measured steps
    # steps run first and left out of the figures (compilation, allocator warm-up)
    warmup: int = field(default=1, metadata=at_least(0))
    # real: Qwen2.5-VL-7B's config with random weights (GPU); tiny: the 190k-parameter model
    shape: str = field(default="real", metadata=one_of(*SHAPES))
    arms: list[str] = field(default_factory=lambda: list(ARMS), metadata=one_of(*ARMS))
    # every completion is forced to this length in both arms
    new_tokens: int = field(default=128, metadata=at_least(1))
    # group size G; None: the recipe's
    num_generations: int | None = field(default=None, metadata=at_least(1))
    # side of the square input image (448 px = 256 image tokens at the real processor)
    image_size: int = field(default=448, metadata=at_least(28))
    # recipe: the recipe's reward functions; stub: a free length reward (no reward model)
    rewards: str = field(default="recipe", metadata=one_of("recipe", "stub"))
    out: str = "outputs/benchmark"
    seed: int = 0


def parse_bench_options(argv: list[str]) -> tuple[BenchOptions, list[str]]:
    """Bench options and the recipe overrides (`trainer.x=...`, `lora.r=...`) from recipe-style key=value args."""
    opts, overrides = parse_options(BenchOptions, argv, "mmpc-rl benchmark", recipe_keys=True,
                                    usage="usage: mmpc-rl benchmark recipe=i2t [shape=real|tiny] [steps=5] "
                                          "[key=value ...]\n       mmpc-rl benchmark suite=gpu (the one-shot GPU "
                                          "check: mmpc-rl benchmark suite=gpu --help)")
    if not opts.arms:
        raise ConfigError("arms=[] measures nothing; valid choices: " + ", ".join(ARMS))
    return opts, overrides

def ratios(arms: dict) -> dict:
    """plain / project for time (above 1: the project arm is faster), project / plain for memory."""
    if not {"plain", "project"} <= set(arms):
        return {}
    p, q = arms["plain"], arms["project"]
    ratio = {"s_per_step": p["s_per_step"] / q["s_per_step"], "peak_mem": q["peak_mem_gb"] / p["peak_mem_gb"]}
    if p.get("decode_ms_per_token") and q.get("decode_ms_per_token"):
        ratio["decode_ms_per_token"] = p["decode_ms_per_token"] / q["decode_ms_per_token"]
    return {k: round(v, 3) for k, v in ratio.items()}
