"""The recipe of a training-side command: the typed Recipe, with its rewards checked by the reward package, the
generation backend checked against what is installed, and the CQBench metrics it selects on or stops on named.

Entry points call it first, so a bad recipe, key, value, reward or backend fails before any data, model or reward
loads. Checking `trainer`/`lora` keys imports TRL and PEFT (about 8 s, for their field lists); nothing else here
loads torch model code."""

from __future__ import annotations

from importlib import metadata

from packaging.version import Version

from mmpc_rl.config import SECTION_SCHEMAS, Recipe, list_recipes, load_recipe, recipe_values
from mmpc_rl.errors import ConfigError, MMPCError, ShowHelp, did_you_mean
from mmpc_rl.eval.metrics import metrics_for
from mmpc_rl.options import key_lines, split_pairs, wants_help
from mmpc_rl.rewards import REGISTRY, options_of, validate_rewards
from mmpc_rl.train.decoding import resolve_backend

# What TRL 1.16 accepts (trl/import_utils.py is_vllm_available); every vLLM in it pins its own torch/transformers.
VLLM_RANGE = (Version("0.22.0"), Version("0.31.0"))
VLLM_DOC = "see docs/launch.md, 'vLLM'; model.compiled_decoding=true is this stack's fast decoding"


def check_vllm(recipe: Recipe) -> None:
    """`trainer.use_vllm=true` only where vLLM is installed in a version TRL runs, and only with settings whose
    meaning survives the hand-off to vLLM; otherwise one line now, not an ImportError after the models load."""
    if not recipe.trainer.get("use_vllm"):
        return
    try:
        version = Version(Version(metadata.version("vllm")).base_version)
    except metadata.PackageNotFoundError:
        raise ConfigError("trainer.use_vllm=true but vLLM is not installed, and no vLLM release that TRL 1.16 "
                          "supports (0.22-0.31) installs beside this project's torch/transformers (vllm 0.31 pins "
                          f"torch 2.13 and transformers<5.18); {VLLM_DOC}") from None
    if not VLLM_RANGE[0] <= version <= VLLM_RANGE[1]:
        raise ConfigError(f"trainer.use_vllm=true: vLLM {version} is installed, TRL 1.16 runs 0.22-0.31; {VLLM_DOC}")
    if recipe.model.qlora:
        raise ConfigError("trainer.use_vllm=true with model.qlora=true: TRL syncs merged LoRA weights into vLLM, "
                          "which cannot take them into 4-bit weights; use bf16 LoRA with vLLM")
    if recipe.model.max_pixels or recipe.model.min_pixels:
        raise ConfigError("trainer.use_vllm=true with model.min_pixels/max_pixels: vLLM re-processes images with the "
                          "checkpoint's own pixel bounds, so the policy would be trained on other image tokens than "
                          "it sampled from; unset them (or set the bounds in the checkpoint's preprocessor config)")


# CQBench metrics that need a scorer the recipe may leave out
METRIC_SCORER = {"bertscore_f1": "bertscore", "lpips": "lpips", "clip": "clip"}


def gold_metrics(recipe: Recipe) -> list[str]:
    """The CQBench numbers a training run logs as its gold curve (`cqbench/gold/<name>`)."""
    scored = [m for m in metrics_for(recipe.task) if m not in METRIC_SCORER or getattr(recipe.eval, METRIC_SCORER[m])]
    return [*scored, "parse_ok_rate"]


def check_gold_settings(recipe: Recipe) -> None:
    """`eval.select_best` and `early_stop.metric` name a metric this run logs, with the evaluations it needs."""
    ev, stop = recipe.eval, recipe.early_stop
    if ev.every_n_steps and not ev.enabled:
        raise ConfigError(f"eval.every_n_steps={ev.every_n_steps} runs CQBench during training: set eval.enabled=true")
    names = gold_metrics(recipe)
    for key, value in (("eval.select_best", ev.select_best), ("early_stop.metric", stop.metric)):
        if value is None or (key == "early_stop.metric" and value == "reward"):
            continue
        if value not in names:
            valid = (["reward"] if key == "early_stop.metric" else []) + names
            raise ConfigError(f"{key}={value!r} is not logged by this {recipe.task} run" + did_you_mean(
                str(value), valid))
        if not ev.enabled:
            raise ConfigError(f"{key}={value} needs CQBench during training: set eval.enabled=true")
    if stop.metric not in (None, "reward") and not ev.every_n_steps:
        raise ConfigError(f"early_stop.metric={stop.metric} is a CQBench metric: set eval.every_n_steps too (its "
                          "patience counts evaluations)")


USAGE = """usage: mmpc-rl train recipe=NAME|FILE.yaml [section.key=value ...]
       mmpc-rl demo [section.key=value ...]          (recipe=demo-i2t, on CPU)
       python train/grpo.py ... | accelerate launch train/grpo.py ...   (the same arguments)"""
SECTION_ABOUT = {"model": "how the policy loads", "data": "the items trained on",
                 "eval": "CQBench before/after training (and every eval.every_n_steps: the gold curve)",
                 "early_stop": "stop when a metric stops improving",
                 "wandb": "the W&B run (with trainer.report_to=[wandb])"}


def recipe_help(argv: list[str], default: str | None = None) -> str:
    """`--help` of a training command: the recipes, then every section's keys with the named recipe's values (the
    dataclass defaults where it sets none), the lora/trainer mappings it sets and the rewards there are."""
    args = [a for a in argv if a not in ("-h", "--help")]
    name = next((v for k, v in reversed(split_pairs(args)) if k == "recipe"), None) or default
    try:
        tree = recipe_values(name) if name else {}
    except MMPCError:
        name, tree = None, {}
    lines = [USAGE, "", "recipes: " + ", ".join(list_recipes()) + " (or a .yaml file that may `inherit:` one)",
             f"values shown: {'recipe ' + name if name else 'the defaults'} (recipe=NAME --help shows another)", ""]
    for section, schema in SECTION_SCHEMAS.items():
        lines += [f"{section}.*  {SECTION_ABOUT.get(section, '')}",
                  *key_lines(schema, f"{section}.", tree.get(section) or {}), ""]
    for section, what in (("lora", "peft.LoraConfig"), ("trainer", "trl.GRPOConfig")):
        given = tree.get(section) or {}
        lines.append(f"{section}.*  any {what} field" + ("; the recipe sets:" if given else ""))
        lines += [f"  {section}.{k} = {v}" for k, v in given.items()]
    rewards = tree.get("rewards") or {}
    lines += ["", "rewards.<name>.weight and rewards.<name>.<option>; rewards.<name>=null drops one"
              + (f" (the recipe has: {', '.join(rewards)})" if rewards else ""), "registered rewards:"]
    for reward, spec in sorted(REGISTRY.items()):
        tasks = ", ".join(spec.tasks) or "any task"
        lines.append(f"  {reward} ({tasks}): options {', '.join(options_of(spec)) or 'none'}")
    lines += ["", "a reward from outside the package: rewards.package.module:function.weight=1"]
    return "\n".join(lines)


def load_training_recipe(argv: list[str] | None = None, default: str | None = None) -> Recipe:
    if wants_help(list(argv or [])):
        raise ShowHelp(recipe_help(list(argv or []), default))
    recipe = load_recipe(argv, default)
    validate_rewards(recipe.rewards, recipe.task)
    check_vllm(recipe)
    check_gold_settings(recipe)
    if recipe.model.compile_backend is not None:
        resolve_backend(str(recipe.model.compile_backend))  # a name torch.compile knows, or an importable callable
    return recipe
