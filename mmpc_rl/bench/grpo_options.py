"""`mmpc-rl benchmark`'s options: parsed before torch, TRL or a model is imported, so a bad one fails in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.options import parse_options

ARMS = ("project", "plain")
SHAPES = ("real", "tiny")
# What defines the algorithm: the plain arm takes these from the recipe and leaves everything else at TRL's defaults.
ALGORITHM_KEYS = ("learning_rate", "loss_type", "beta", "epsilon", "epsilon_high", "delta", "scale_rewards",
                  "temperature", "top_p", "top_k", "num_iterations", "importance_sampling_level", "seed",
                  "mask_truncated_completions", "multi_objective_aggregation")


@dataclass
class BenchOptions:
    recipe: str = "i2t"
    steps: int = 5  # measured steps
    warmup: int = 1  # steps run first and left out of the figures (compilation, allocator warm-up)
    shape: str = "real"  # real: Qwen2.5-VL-7B's config with random weights (GPU); tiny: the 190k-parameter model
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    new_tokens: int = 128  # every completion is forced to this length in both arms
    num_generations: int | None = None  # group size G; None: the recipe's
    image_size: int = 448  # side of the square input image (448 px = 256 image tokens at the real processor)
    rewards: str = "recipe"  # recipe: the recipe's reward functions; stub: a free length reward (no reward model)
    out: str = "outputs/benchmark"
    seed: int = 0


def parse_bench_options(argv: list[str]) -> tuple[BenchOptions, list[str]]:
    """Bench options and the recipe overrides (`trainer.x=...`, `lora.r=...`) from recipe-style key=value args."""
    opts, overrides = parse_options(BenchOptions, argv, "mmpc-rl benchmark", recipe_keys=True)
    opts.arms = [opts.arms] if isinstance(opts.arms, str) else list(opts.arms)
    for name, value, valid in [("shape", opts.shape, SHAPES), ("rewards", opts.rewards, ("recipe", "stub"))]:
        if value not in valid:
            raise ConfigError(f"{name}={value!r}; valid choices: {', '.join(valid)}")
    for arm in opts.arms:
        if arm not in ARMS:
            raise ConfigError(f"unknown arm {arm!r}" + did_you_mean(str(arm), ARMS))
    if opts.steps < 1 or opts.warmup < 0 or opts.new_tokens < 1:
        raise ConfigError("steps and new_tokens must be >= 1 and warmup >= 0")
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
