"""Recipes: `recipes/base.yaml` <- `recipes/<name>.yaml` (which may `inherit:` another recipe) <- CLI `key=value`.

Every section is validated against the object it becomes, so a typo fails at once with the valid choices:
`model` -> ModelConfig, `lora` -> peft.LoraConfig, `trainer` -> trl.GRPOConfig, `rewards` -> the reward registry
(each entry's options against its factory's signature), `data` -> DataConfig, `eval` -> EvalConfig, `wandb` ->
WandbConfig. Objects are built from plain Python containers (`OmegaConf.to_container`).
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.prompts import DEFAULT_PROMPT, prompt_text

TASKS = ("i2t", "t2i")
DTYPES = ("auto", "bfloat16", "float16", "float32")
TOP_LEVEL = ("recipe", "inherit", "task", "model", "lora", "trainer", "rewards", "data", "eval", "wandb")


@dataclass
class ModelConfig:
    name_or_path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    dtype: str = "bfloat16"
    attn_implementation: str | None = None  # None: transformers' default (sdpa)
    qlora: bool = False  # 4-bit NF4 + double quantisation, bf16 compute (the paper's setup)
    trust_remote_code: bool = False
    revision: str | None = None
    min_pixels: int | None = None  # image-processor bounds: fewer pixels = fewer image tokens
    max_pixels: int | None = None


@dataclass
class DataConfig:
    path: str = "sample"  # "sample" (bundled catalog), a raw Amazon-2023 folder, or a `mmpc-rl data build` output
    categories: list[str] | None = None  # None: every category found
    split: str = "train"  # which item set GRPO trains on (train / cqbench)
    limit_per_category: int | None = None
    seed: int = 42
    text_field: str = "title"
    prompt: str = DEFAULT_PROMPT  # mmpc_rl.prompts: "paper" (the authors' wording) or "detailed"; training and CQBench
    image_size: int | None = None  # longest side of the policy's input image; None keeps the file's size
    cache_dir: str | None = None  # where images and the built sample catalog are kept


@dataclass
class EvalConfig:
    enabled: bool = False  # CQBench before and after training (the callback)
    every_n_steps: int | None = None
    items_per_category: int = 20
    categories: list[str] | None = None
    split: str = "cqbench"
    batch_size: int = 16
    max_new_tokens: int = 128
    bertscore: str | None = None  # None: no BERTScore; "roberta-large" for paper parity, or a local folder
    bertscore_layers: int | None = None
    lpips: str | None = None  # LPIPS backbone weights (t2i)
    clip: str | None = None  # CLIP ViT-B/32 weights (t2i)


@dataclass
class WandbConfig:
    project: str = "mmpc-rl"
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    entity: str | None = None
    log_completions_every: int = 10  # steps between completion tables (with images)


SECTION_SCHEMAS = {"model": ModelConfig, "data": DataConfig, "eval": EvalConfig, "wandb": WandbConfig}


# ----------------------------------------------------------------------------------------------- loading
def recipe_dir() -> Path:
    return Path(str(resources.files("mmpc_rl.recipes")))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml") if p.stem != "base")


def _recipe_path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"recipe file {name!r} does not exist")
        return path
    path = recipe_dir() / f"{name}.yaml"
    if name == "base" or not path.is_file():
        raise ConfigError(f"unknown recipe {name!r}" + did_you_mean(name, list_recipes()))
    return path


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, OSError, ValueError) as e:
        raise ConfigError(f"cannot read recipe {path}: {e}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"recipe {path} must be a mapping of sections")
    return cfg


def _compose(name: str, seen: tuple[str, ...] = ()) -> DictConfig:
    if name in seen:
        raise ConfigError(f"recipe inheritance loops: {' -> '.join((*seen, name))}")
    cfg = _load_yaml(_recipe_path(name))
    parent = cfg.pop("inherit", None)
    below = _compose(parent, (*seen, name)) if parent else _load_yaml(recipe_dir() / "base.yaml")
    return OmegaConf.merge(below, cfg)


def parse_overrides(argv: list[str]) -> tuple[str | None, list[str]]:
    recipe, overrides = None, []
    for arg in argv:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"arguments are key=value pairs, got {arg!r} (e.g. recipe=i2t trainer.max_steps=10)")
        key, value = arg.split("=", 1)
        key = key.lstrip("+")
        if key == "recipe":
            recipe = value
        else:
            overrides.append(f"{key}={value}")
    return recipe, overrides


def parse_options(schema, argv: list[str], command: str):
    """A subcommand's `key=value` options as its `schema` dataclass, typed by OmegaConf: an unknown key names the
    valid ones, a value of the wrong type is one line. Dotted keys (`grid.VBPR.reg_weight=[0.1]`) reach mappings."""
    recipe, overrides = parse_overrides(argv)
    if recipe is not None:
        raise ConfigError(f"{command} takes no recipe=; pass its options as key=value")
    valid = [f.name for f in dataclasses.fields(schema)]
    for item in overrides:
        key = item.split("=", 1)[0].split(".", 1)[0]
        if key not in valid:
            raise ConfigError(f"unknown key {key!r}" + did_you_mean(key, valid))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad option: {str(e).splitlines()[0]}") from None
    return schema(**OmegaConf.to_container(merged, resolve=True))


def load_recipe(argv: list[str] | None = None, default: str | None = None) -> DictConfig:
    """Compose base <- recipe <- overrides, validate every section, and return the DictConfig."""
    recipe, overrides = parse_overrides(list(argv or []))
    recipe = recipe or default
    if recipe is None:
        raise ConfigError("no recipe given: add recipe=NAME; valid choices: " + ", ".join(list_recipes()))
    cfg = _compose(recipe)
    try:
        cli = OmegaConf.from_dotlist(overrides)
        cfg = OmegaConf.merge(cfg, cli)
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad override: {e}") from None
    cfg.recipe = recipe
    validate(cfg)
    return cfg


# -------------------------------------------------------------------------------------------- validation
def _check_keys(section: str, given: dict, valid: list[str]) -> None:
    for key in given:
        if key not in valid:
            raise ConfigError(f"unknown key {section}.{key}" + did_you_mean(str(key), valid))


def grpo_fields() -> list[str]:
    from trl import GRPOConfig

    return [f.name for f in dataclasses.fields(GRPOConfig) if f.init]


def lora_fields() -> list[str]:
    from peft import LoraConfig

    return [f.name for f in dataclasses.fields(LoraConfig) if f.init]


def to_dict(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def validate(cfg: DictConfig) -> None:
    _check_keys("recipe", {k: None for k in cfg}, list(TOP_LEVEL))
    if cfg.get("task") not in TASKS:
        raise ConfigError(f"unknown task {cfg.get('task')!r}; valid choices: {', '.join(TASKS)}")
    for name, schema in SECTION_SCHEMAS.items():
        given = to_dict(cfg.get(name)) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"section {name!r} must be a mapping, got {given!r}")
        _check_keys(name, given, [f.name for f in dataclasses.fields(schema)])
    prompt_text(cfg.task, cfg.data.prompt)  # an unknown prompt name fails here, not after model loading
    if cfg.model.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={cfg.model.dtype!r}; valid choices: {', '.join(DTYPES)}")
    _check_keys("lora", to_dict(cfg.get("lora")) or {}, lora_fields())
    trainer = to_dict(cfg.get("trainer")) or {}
    _check_keys("trainer", trainer, grpo_fields())
    if "reward_weights" in trainer:
        raise ConfigError("set reward weights as rewards.<name>.weight, not trainer.reward_weights")
    if not trainer.get("output_dir"):
        raise ConfigError("trainer.output_dir is required")
    validate_rewards(cfg)


def validate_rewards(cfg: DictConfig) -> None:
    from mmpc_rl.rewards import REGISTRY

    rewards = active_rewards(cfg)
    if not rewards:
        raise ConfigError("the recipe names no reward; valid choices: " + ", ".join(sorted(REGISTRY)))
    for name, opts in rewards.items():
        if name not in REGISTRY:
            raise ConfigError(f"unknown reward {name!r}" + did_you_mean(name, REGISTRY))
        spec = REGISTRY[name]
        if spec.tasks and cfg.task not in spec.tasks:
            raise ConfigError(f"reward {name!r} is for task(s) {', '.join(spec.tasks)}, not {cfg.task!r}")
        params = inspect.signature(spec.factory).parameters
        valid = ["weight"] + [p for p in params if p not in ("task", "context")]
        _check_keys(f"rewards.{name}", opts, valid)
        if not isinstance(opts.get("weight", 1.0), (int, float)):
            raise ConfigError(f"rewards.{name}.weight must be a number, got {opts['weight']!r}")


def active_rewards(cfg: DictConfig) -> dict[str, dict]:
    """Rewards in recipe order; `rewards.<name>=null` removes one."""
    rewards = to_dict(cfg.get("rewards")) or {}
    return {name: dict(opts or {}) for name, opts in rewards.items() if opts is not None}


# ----------------------------------------------------------------------------------------------- building
def section(cfg: DictConfig, name: str):
    """A validated section as its dataclass (model, data, eval, wandb)."""
    return SECTION_SCHEMAS[name](**(to_dict(cfg.get(name)) or {}))


def build_lora_config(cfg: DictConfig):
    from peft import LoraConfig

    opts = to_dict(cfg.get("lora"))
    if not opts:
        return None
    try:
        return LoraConfig(**opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"lora: {e}") from None


def build_grpo_config(cfg: DictConfig):
    """trl.GRPOConfig from `trainer`, with reward weights from `rewards.<name>.weight` in recipe order."""
    import torch
    from trl import GRPOConfig

    opts = dict(to_dict(cfg.trainer))
    opts["reward_weights"] = [float(o.get("weight", 1.0)) for o in active_rewards(cfg).values()]
    if not torch.cuda.is_available() and not opts.get("use_cpu"):
        # TRL would stop with "Your setup doesn't support bf16/gpu"; a CPU run of a real recipe is what a
        # user without a GPU means (e.g. a tiny local model), so say so and go on.
        print("mmpc-rl: no CUDA device found: training on CPU in float32 (trainer.use_cpu=true, bf16=false)")
        opts.update(use_cpu=True, bf16=False, fp16=False)
    for key, value in opts.items():
        if key.endswith("_strategy") and isinstance(value, bool):
            opts[key] = "no" if value is False else "steps"  # YAML 1.1 reads `no` as false
    if opts.get("report_to") in (None, [], "none"):
        opts["report_to"] = "none"
    try:
        return GRPOConfig(**opts)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"trainer: {e}") from None


SECRET_MARKERS = ("token", "api_key", "apikey", "password", "secret")


def scrub(node: Any) -> Any:
    """Drop values whose key looks like a secret: saved configs must never hold credentials."""
    if isinstance(node, dict):
        return {k: ("<redacted>" if any(m in str(k).lower() for m in SECRET_MARKERS) and v else scrub(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [scrub(v) for v in node]
    return node


def save_config(cfg: DictConfig, output_dir: str | os.PathLike) -> Path:
    from mmpc_rl.io import atomic_write_text

    path = Path(output_dir) / "config.yaml"
    text = OmegaConf.to_yaml(OmegaConf.create(scrub(to_dict(cfg))))
    atomic_write_text(path, text)
    return path
