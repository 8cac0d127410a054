"""Recipes: `recipes/base.yaml` <- `recipes/<name>.yaml` (which may `inherit:` another recipe) <- CLI `key=value`.

The YAML tree is merged once, here, into a frozen, typed `Recipe` that is handed down; nothing below the entry point
reads the raw tree. Every section is checked against the object it becomes, so a typo fails at once with the valid
choices: `model` -> ModelConfig, `lora` -> peft.LoraConfig, `trainer` -> trl.GRPOConfig (their fields and values are
read by mmpc_rl.checks), `data` -> DataConfig, `eval` -> EvalConfig, `early_stop` -> EarlyStopConfig, `wandb` ->
WandbConfig. `rewards` is checked by
the reward package (`mmpc_rl.rewards.validate_rewards`), which owns the registry: the core never imports its plug-ins.

The typed sections' defaults are the dataclasses below; `base.yaml` holds only what has no dataclass (task, lora,
trainer, rewards). `key=value` arguments are parsed by mmpc_rl.options; the TRL and PEFT objects are built from a
Recipe by mmpc_rl.train.trl_config.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmpc_rl.checks import (
    at_least,
    check_fields,
    check_lora,
    check_trainer,
    greater_than,
    grpo_fields,
    lora_fields,
    one_of,
    trainer_aliases,
)
from mmpc_rl.data import SPLITS
from mmpc_rl.data.reader import CATEGORIES
from mmpc_rl.data.schema import TEXT_FIELDS
from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.options import read_yaml, split_pairs, typed_tree
from mmpc_rl.prompts import DEFAULT_PROMPT, prompt_text
from mmpc_rl.tasks import TASKS

DTYPES = ("auto", "bfloat16", "float16", "float32")
MODEL_DEVICES = (None, "cpu")
COMPILED_DECODING = (False, True, "force")
SECTIONS = ("model", "lora", "trainer", "rewards", "data", "eval", "early_stop", "wandb")
TOP_LEVEL = ("recipe", "inherit", "task", *SECTIONS)
MAX_REWARD_WEIGHT = 1e6  # a reward weighted beyond this drowns the others (and 1e308 overflows float32 to inf)
MAX_INHERIT = 32  # recipes that inherit deeper than this are a loop in all but name


# Three groups of fields are shared by a training recipe and `mmpc-rl eval cqbench` (eval/cqbench.py's CQBenchConfig
# inherits all three), so a CQBench run and the in-training callback read the same fields with the same defaults.
@dataclass(frozen=True)
class ModelLoading:
    """How a policy's weights are loaded."""

    dtype: str = "bfloat16"  # auto | bfloat16 | float16 | float32
    attn_implementation: str | None = None  # None: transformers' default (sdpa)
    qlora: bool = False  # 4-bit NF4 + double quantisation, computing in `dtype` (bf16 if "auto")
    # image-processor bounds: fewer pixels = fewer image tokens
    min_pixels: int | None = field(default=None, metadata=at_least(1))
    max_pixels: int | None = field(default=None, metadata=at_least(1, not_below="min_pixels"))


@dataclass(frozen=True)
class ItemSelection:
    """Which catalog items are read, and the prompt they are asked with."""

    categories: list[str] | None = field(default=None, metadata=one_of(*CATEGORIES))  # None: every category found
    seed: int = 42
    prompt: str = DEFAULT_PROMPT  # mmpc_rl.prompts: "paper" (the authors' wording) or "detailed"; training and CQBench
    cache_dir: str | None = None  # where images and the built sample catalog are kept


@dataclass(frozen=True)
class CQBenchScoring:
    """What a CQBench pass generates on and scores with."""

    split: str = field(default="cqbench", metadata=one_of(*SPLITS))
    batch_size: int = field(default=16, metadata=at_least(1))
    max_new_tokens: int | None = field(default=128, metadata=at_least(1))
    bertscore: str | None = None  # None: no BERTScore; "roberta-large" (the authors' evaluate default), or a folder
    bertscore_layers: int | None = field(default=None, metadata=at_least(1))
    lpips: str | None = None  # t2i: torchvision AlexNet weights file; "random": random trunk (smoke tests); None: none
    clip: str | None = None  # t2i: CLIP ViT-B/32 (hub id, local folder or tiny://clip); None: no CLIP similarity


@dataclass(frozen=True)
class ModelConfig(ModelLoading):
    name_or_path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    trust_remote_code: bool = False
    revision: str | None = None
    # static KV cache + torch.compile for TRL's decoding (mmpc_rl.train.decoding): true compiles on CUDA/XPU, "force"
    # on any device (CPU tests, profiling); a compile or runtime failure falls back to eager decoding
    compiled_decoding: bool | str = False
    compile_backend: str | None = None  # a torch.compile backend name or module:function; None: transformers' own
    device: str | None = None  # "cpu": train on the CPU in float32; None: CUDA where usable (a >= 1B policy needs it)
    # torch's intra-op threads for a run on the CPU (None: torch's default). Float sums split over threads round
    # differently, so a seeded CPU run gives the same numbers on every machine only with a fixed count.
    cpu_threads: int | None = None


@dataclass(frozen=True)
class DataConfig(ItemSelection):
    path: str = "data/mmpcbench"  # a `mmpc-rl data build` output, "sample" (bundled catalog) or a raw Amazon-2023 dir
    split: str = field(default="train", metadata=one_of(*SPLITS))  # which item set GRPO trains on (train / cqbench)
    limit_per_category: int | None = field(default=None, metadata=at_least(1))
    text_field: str = field(default="title", metadata=one_of(*TEXT_FIELDS))


@dataclass(frozen=True)
class EvalConfig(CQBenchScoring):
    enabled: bool = False  # CQBench before and after training (the callback)
    # also every N optimizer steps: the gold curve `cqbench/gold/<metric>`
    every_n_steps: int | None = field(default=None, metadata=at_least(1))
    items_per_category: int = field(default=20, metadata=at_least(1))
    categories: list[str] | None = field(default=None, metadata=one_of(*CATEGORIES))  # None: data.categories
    # a pass during training is skipped (with a note) if evaluation would then exceed this share of the training
    # time (our choice: a quarter); None: never skipped
    max_fraction: float | None = field(default=0.25, metadata=greater_than(0))
    select_best: str | None = None  # a CQBench metric: the best-scoring step's adapter is kept in output_dir/best/
    divergence_window: int = 3  # the proxy-gold divergence alarm compares trends over the last K evaluations


@dataclass(frozen=True)
class EarlyStopConfig:
    """Stop when a metric stops improving (off while `metric` is None)."""

    metric: str | None = None  # "reward" (total training reward, smoothed) or a CQBench metric (eval.every_n_steps)
    # evaluations (a CQBench metric) or logged steps (reward) without a gain of min_delta
    patience: int = field(default=10, metadata=at_least(1))
    min_delta: float = field(default=0.0, metadata=at_least(0))
    # the smoothed reward is the mean of the last `window` logged steps
    window: int = field(default=10, metadata=at_least(1))


@dataclass(frozen=True)
class WandbConfig:
    project: str = "mmpc-rl"
    name: str | None = None
    tags: list[str] = field(default_factory=list)
    entity: str | None = None
    # steps between completion tables (with images)
    log_completions_every: int = field(default=10, metadata=at_least(1))


SECTION_SCHEMAS = {"model": ModelConfig, "data": DataConfig, "eval": EvalConfig, "early_stop": EarlyStopConfig,
                   "wandb": WandbConfig}


@dataclass(frozen=True)
class Recipe:
    """A validated run: typed sections, plus the `lora`, `trainer` and `rewards` mappings checked against
    peft.LoraConfig, trl.GRPOConfig and the reward registry. Read-only: derive a variant with `replace`."""

    name: str
    task: str
    model: ModelConfig
    lora: Mapping[str, Any]  # peft.LoraConfig kwargs; empty: full fine-tuning
    trainer: Mapping[str, Any]  # trl.GRPOConfig kwargs (reward weights come from `rewards`)
    rewards: Mapping[str, Mapping[str, Any]]  # name -> {weight, factory options}, in recipe order
    data: DataConfig
    eval: EvalConfig
    early_stop: EarlyStopConfig
    wandb: WandbConfig

    @property
    def reward_weights(self) -> list[float]:
        return [float(opts.get("weight", 1.0)) for opts in self.rewards.values()]

    def replace(self, **changes: Any) -> Recipe:
        """A copy with whole sections replaced; `trainer={...}` merges into the trainer mapping."""
        if "trainer" in changes:
            changes["trainer"] = _frozen({**self.trainer, **changes["trainer"]})
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain containers, in the YAML's shape (what config.yaml and the W&B run config hold)."""
        out: dict[str, Any] = {"recipe": self.name, "task": self.task}
        for name in SECTIONS:
            value = getattr(self, name)
            out[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else thaw(value)
        return out


class FrozenMap(Mapping):
    """A read-only mapping whose keys also read as attributes (`recipe.trainer.beta`, `recipe.trainer["beta"]`)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping):
        object.__setattr__(self, "_data", MappingProxyType(dict(data)))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"recipes are read-only: use Recipe.replace (tried to set {key!r})")

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self._data)!r})"


def _frozen(d: Mapping) -> FrozenMap:
    return FrozenMap({k: (_frozen(v) if isinstance(v, Mapping) else v) for k, v in d.items()})


def thaw(value: Any) -> Any:
    """Plain dicts and lists from a recipe's frozen mappings (what TRL and PEFT take)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------- loading
def recipe_dir() -> Path:
    return Path(str(resources.files("mmpc_rl.recipes")))


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml") if p.stem != "base")


def _recipe_path(name: str, relative_to: Path | None = None) -> Path:
    """A recipe file (`*.yaml`, relative to the folder of the recipe that inherits it, else to the working
    directory) or a shipped recipe's name. `base` is only a parent (`inherit: base`), never a run of its own."""
    if name.endswith((".yaml", ".yml")):
        path = Path(name).expanduser()
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        if not path.is_file():
            raise ConfigError(f"recipe file {str(path)!r} does not exist")
        return path
    path = recipe_dir() / f"{name}.yaml"
    if (name == "base" and relative_to is None) or "/" in name or "\\" in name or not path.is_file():
        raise ConfigError(f"unknown recipe {name!r}" + did_you_mean(name, list_recipes()))
    return path


def _compose(name: str, seen: tuple[str, ...] = (), relative_to: Path | None = None) -> DictConfig:
    path = _recipe_path(name, relative_to).resolve()  # absolute: its own `inherit:` is relative to its folder
    key = str(path)
    if key in seen:
        raise ConfigError(f"recipe inheritance loops: {' -> '.join((*seen, key))}")
    if len(seen) >= MAX_INHERIT:
        raise ConfigError(f"recipe {seen[0]} inherits more than {MAX_INHERIT} recipes deep (at {key})")
    cfg = read_yaml(path)
    try:
        parent = cfg.pop("inherit", None)
    except OmegaConfBaseException as e:  # e.g. `inherit: ${oc.env:UNSET}`
        raise ConfigError(f"recipe {path}: inherit: {str(e).splitlines()[0]}") from None
    if parent is not None and not isinstance(parent, str):
        raise ConfigError(f"recipe {path}: inherit: must be a recipe name or a .yaml path, got {parent!r}")
    if parent == "base" or not parent:
        below = read_yaml(recipe_dir() / "base.yaml")
    else:
        below = _compose(parent, (*seen, key), path.parent)
    return OmegaConf.merge(below, cfg)


def recipe_values(name: str) -> dict:
    """The composed recipe `name` (base <- its parents <- it) as plain containers, for `--help`; an interpolation
    that does not resolve here is shown as written."""
    tree = _compose(name)
    tree.recipe = name
    try:
        return OmegaConf.to_container(tree, resolve=True)
    except OmegaConfBaseException:
        return OmegaConf.to_container(tree, resolve=False)


def load_recipe(argv: list[str] | None = None, default: str | None = None) -> Recipe:
    """Compose base <- recipe <- overrides, validate every section but `rewards`' options, and build the Recipe."""
    pairs = split_pairs(list(argv or []))
    recipe = next((v for k, v in reversed(pairs) if k == "recipe"), None) or default
    if recipe is None:
        raise ConfigError("no recipe given: add recipe=NAME; valid choices: " + ", ".join(list_recipes()))
    tree = _compose(recipe)
    overrides = [(k, v) for k, v in pairs if k != "recipe"]
    try:
        tree = OmegaConf.merge(tree, typed_tree(overrides))
        tree.recipe = recipe
        raw = OmegaConf.to_container(tree, resolve=True)
    except (OmegaConfBaseException, TypeError, ValueError) as e:
        # a mapping given where the recipe has a list (or the reverse): name the override that does it
        culprit = next((f"{k}={v}: " for k, v in overrides if not _merges(tree, k, v)), "")
        raise ConfigError(f"bad override: {culprit}{str(e).splitlines()[0]}") from None
    return build_recipe(raw)


def _merges(tree: DictConfig, key: str, value: str) -> bool:
    try:
        OmegaConf.merge(tree, typed_tree([(key, value)]))
    except (OmegaConfBaseException, TypeError, ValueError):
        return False
    return True


# -------------------------------------------------------------------------------------------- validation
def _check_keys(section: str, given: Mapping, valid: list[str]) -> None:
    for key in given:
        if key not in valid:
            raise ConfigError(f"unknown key {section}.{key}" + did_you_mean(str(key), valid))


def _mapping(name: str, value: Any) -> dict:
    value = value or {}
    if not isinstance(value, dict):
        raise ConfigError(f"section {name!r} must be a mapping, got {value!r}")
    return value


def _check_watch(ev: EvalConfig) -> None:
    """The one bound of the in-training evaluation that its field's metadata (check_fields) cannot word; the metric
    names are the task's (train/recipe.py)."""
    if ev.divergence_window < 2:
        raise ConfigError(f"eval.divergence_window={ev.divergence_window}: a trend needs at least 2 evaluations")


def build_recipe(raw: dict) -> Recipe:
    """The Recipe for a composed, resolved tree of plain containers."""
    _check_keys("recipe", raw, list(TOP_LEVEL))
    if raw.get("task") not in TASKS:
        raise ConfigError(f"unknown task {raw.get('task')!r}; valid choices: {', '.join(TASKS)}")
    sections = {}
    for name, schema in SECTION_SCHEMAS.items():
        given = _mapping(name, raw.get(name))
        _check_keys(name, given, [f.name for f in dataclasses.fields(schema)])
        sections[name] = schema(**check_fields(name, schema, given))
    prompt_text(raw["task"], sections["data"].prompt)  # an unknown prompt name fails here, not after model loading
    _check_watch(sections["eval"])
    threads = sections["model"].cpu_threads  # a whole number already (check_fields)
    if threads is not None and threads < 1:
        raise ConfigError(f"model.cpu_threads={threads!r}: give a whole number of threads >= 1, or null")
    if sections["model"].dtype not in DTYPES:
        raise ConfigError(f"model.dtype={sections['model'].dtype!r}; valid choices: {', '.join(DTYPES)}")
    if sections["model"].compiled_decoding not in COMPILED_DECODING:
        raise ConfigError(f"model.compiled_decoding={sections['model'].compiled_decoding!r}; valid choices: false, "
                          "true, force")
    if sections["model"].device not in MODEL_DEVICES:
        raise ConfigError(f"model.device={sections['model'].device!r}; valid choices: null (CUDA where usable), cpu")
    lora = _mapping("lora", raw.get("lora"))
    _check_keys("lora", lora, lora_fields())
    trainer = _mapping("trainer", raw.get("trainer"))
    _check_keys("trainer", trainer, grpo_fields())
    trainer = trainer_aliases(trainer)
    check_trainer(trainer)
    if lora:
        check_lora(lora)
    if "reward_weights" in trainer:
        raise ConfigError("set reward weights as rewards.<name>.weight, not trainer.reward_weights")
    if not trainer.get("output_dir"):
        raise ConfigError("trainer.output_dir is required")
    rewards = {}
    for name, opts in _mapping("rewards", raw.get("rewards")).items():
        if opts is None:  # `rewards.<name>=null` drops one
            continue
        opts = _mapping(f"rewards.{name}", opts)
        weight = opts.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise ConfigError(f"rewards.{name}.weight must be a number, got {weight!r}")
        if not math.isfinite(weight) or abs(weight) > MAX_REWARD_WEIGHT:
            # inf/nan make every advantage NaN; 1e308 overflows the weighted sum: the loss is 0 or NaN throughout
            raise ConfigError(f"rewards.{name}.weight={weight}: must be a finite number within "
                              f"±{MAX_REWARD_WEIGHT:g}")
        rewards[str(name)] = opts
    if rewards and not any(float(opts.get("weight", 1.0)) for opts in rewards.values()):
        raise ConfigError(f"every reward weight is 0 ({', '.join(f'rewards.{n}.weight' for n in rewards)}): "
                          "the advantages are all 0 and nothing is learned; give one a weight")
    return Recipe(name=str(raw.get("recipe")), task=raw["task"], lora=_frozen(lora), trainer=_frozen(trainer),
                  rewards=_frozen(rewards), **sections)
