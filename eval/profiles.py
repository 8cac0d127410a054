"""`profile=NAME` for `mmpc-rl eval cqbench`: a named set of defaults. A profile sets only the keys the command line
leaves out (explicit keys win), and results.json records the profile and what it set.

`paper`: the authors' inference, each value from their released code (GAIR-Lab/MMPCBench):
- `qlora=true`, `dtype=family`: bitsandbytes NF4 with double quantisation; weights and compute in float16 for Qwen
  (and LLaVA), bfloat16 for Gemma (CQBench/imagine_amazon_data_bench.py and Recbench/imagine_amazon_data_rec.py,
  `load_model`). The paper: "with 4-bit quantization for inference".
- `prompt=paper` (each family's wording, mmpc_rl.prompts), `paper-rec` with `split=recbench` (the RecBench script
  words every family's title prompt as Gemma's).
- `render_dtype=float16`: SD3.5 as Recbench/generate_images_from_prompts.py loads it (`torch_dtype=torch.float16`;
  its `variant="fp16"` file choice is not copied: the released weights are cast).
- `clip=ViT-B-32/openai`: OpenAI's ViT-B/32 (QuickGELU) as CQBench/benchmark_all_models_bench.py's
  `clip.load("ViT-B/32")`; `bertscore=roberta-large`: what CQBench/text_benchmark_all_models_bench.py's
  `evaluate.load("bertscore")` with `lang="en"` loads.
- RecBench `select_by=test`: MMRec's `quick_start` (Recbench/src/main.py) keeps the grid point with the best test
  Recall@20. It is a `mmpc-rl recbench` option; CQBench records it under `profile.recbench` for that command.

Not in the profile, so a `profile=paper` run still differs from the authors' in: batching (they generated one item
per call; `batch_size=1` does the same, slowly), Qwen's decoding (they called `generate` with the checkpoint's
generation config; this project passes `do_sample=False`), render seeds (theirs were random, these are per item),
LPIPS (it needs `lpips=` torchvision AlexNet weights).
"""

from __future__ import annotations

import dataclasses

from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.models import DEFAULT_CLIP
from mmpc_rl.prompts import model_family

PROFILES: dict[str, dict[str, object]] = {
    "paper": {"qlora": True, "dtype": "family", "prompt": "paper", "render_dtype": "float16",
              "clip": DEFAULT_CLIP, "bertscore": "roberta-large"},
}
# settings a profile holds for other commands: recorded in results.json, applied there
RECBENCH: dict[str, dict[str, object]] = {"paper": {"select_by": "test"}}
# the authors' `load_model`: Gemma in bfloat16, every other family (Qwen, LLaVA) in float16
FAMILY_DTYPES = {"gemma": "bfloat16"}


def given_keys(argv: list[str]) -> set[str]:
    """Top-level keys named on the command line (`clip=...`, `+seed=1`, `grid.x=...` -> clip, seed, grid)."""
    return {a.split("=", 1)[0].lstrip("+").split(".", 1)[0] for a in argv if "=" in a}


def profile_defaults(name: str, split: str) -> dict[str, object]:
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}" + did_you_mean(str(name), PROFILES))
    defaults = dict(PROFILES[name])
    if name == "paper" and split == "recbench":
        defaults["prompt"] = "paper-rec"
    return defaults


def apply_profile(cfg, argv: list[str]):
    """`cfg` with each of `cfg.profile`'s defaults that `argv` leaves out."""
    if cfg.profile is None:
        return cfg
    given = given_keys(argv)
    return dataclasses.replace(cfg, **{key: value for key, value in profile_defaults(cfg.profile, cfg.split).items()
                                       if key not in given})


def profile_record(cfg) -> dict | None:
    """What results.json says of the profile: its defaults, those the run overrode, and its settings for RecBench."""
    if cfg.profile is None:
        return None
    defaults = profile_defaults(cfg.profile, cfg.split)
    return {"name": cfg.profile, "defaults": defaults,
            "overridden": {k: getattr(cfg, k) for k, v in defaults.items() if getattr(cfg, k) != v},
            "recbench": dict(RECBENCH.get(cfg.profile, {}))}


def model_dtype(dtype: str, name: str) -> str:
    """`dtype=family`: the dtype the authors loaded `name`'s family in; any other value as given."""
    return FAMILY_DTYPES.get(model_family(name), "float16") if dtype == "family" else dtype
