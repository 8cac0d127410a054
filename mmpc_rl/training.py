"""Build the pieces of a GRPO run from a validated recipe: dataset, rewards, policy, trainer."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mmpc_rl.config import active_rewards, build_grpo_config, build_lora_config, save_config, section
from mmpc_rl.errors import DataError
from mmpc_rl.rewards import RewardContext, build_rewards
from mmpc_rl.tasks import Task, get_task


def task_rows(task: Task, items: list[dict]) -> dict[str, list]:
    """Dataset columns for a task. TRL feeds `image`/`images` to the policy, so the t2i reference image travels in
    `reference_image`; every other column reaches the rewards as a keyword argument."""
    rows = {"prompt": [task.messages(it) for it in items], "title": [it["title"] for it in items],
            "parent_asin": [it["parent_asin"] for it in items], "category": [it["category"] for it in items]}
    if task.uses_image_input:
        rows["image"] = [it["image"] for it in items]
    else:
        rows["text"] = [it.get("text") or it["title"] for it in items]
        rows["reference_image"] = [it["image"] for it in items]
    return rows


def build_dataset(cfg: DictConfig, task: Task, split: str | None = None, limit: int | None = None):
    """A `datasets.Dataset` of the task's prompts. Images stay file paths until TRL reads a batch."""
    from datasets import Dataset, Image

    from mmpc_rl.data import load_items

    data = section(cfg, "data")
    items = load_items(data.path, split=split or data.split, categories=data.categories,
                       limit_per_category=limit or data.limit_per_category, seed=data.seed, cache_dir=data.cache_dir,
                       text_field=data.text_field)
    missing = [it.get("parent_asin") for it in items if not it.get("image") or not it.get("title")]
    if missing:
        raise DataError(f"{len(missing)} items lack an image or a title (e.g. {missing[:3]}); rebuild the data")
    if not items:
        raise DataError(f"no items in {data.path} (split={split or data.split}, categories={data.categories})")
    ds = Dataset.from_dict(task_rows(task, items))
    if task.uses_image_input:
        ds = ds.cast_column("image", Image())
    return ds


def reward_context(cfg: DictConfig, models: dict | None = None) -> RewardContext:
    return RewardContext(device=None, models=dict(models or {}), output_dir=cfg.trainer.output_dir)


def build_policy(cfg: DictConfig, args):
    import torch

    from mmpc_rl.models import load_policy

    model_cfg = section(cfg, "model")
    cpu = bool(args.use_cpu) or not torch.cuda.is_available()
    model, processor = load_policy(model_cfg, cpu=cpu, device_map=policy_device_map(args, model_cfg, cpu))
    if model_cfg.qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(args.gradient_checkpointing))
    return model, processor


def policy_device_map(args, model_cfg, cpu: bool):
    """Where the policy is loaded. The Trainer never moves a bitsandbytes model (`.to` is unsupported), so a 4-bit
    policy must be loaded onto this process's GPU; a plain one is too (no CPU copy of 16 GB first). Under DDP or
    DeepSpeed the Trainer/DeepSpeed place non-quantized weights themselves (TRL passes None there too)."""
    if cpu:
        return None
    distributed = str(args.distributed_state.distributed_type).split(".")[-1] in ("MULTI_GPU", "DEEPSPEED")
    if distributed and not model_cfg.qlora:
        return None
    return {"": args.distributed_state.device}


def build_trainer(cfg: DictConfig, *, models: dict | None = None, callbacks: list | None = None,
                  train_dataset=None):
    """The GRPOTrainer for a recipe. `models` injects already-loaded reward models (e.g. {"minilm": st})."""
    from trl import GRPOTrainer

    from mmpc_rl import monitoring
    from mmpc_rl.callbacks import CompletionsTable, MetricsLogger, SafeCheckpoints

    task = get_task(cfg.task, cfg.data.prompt)
    args = build_grpo_config(cfg)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if args.process_index == 0:
        save_config(cfg, args.output_dir)
    # monitoring: per-reward timings + the completions table are fed by wrapping each reward
    monitoring.prepare_args(args, task)
    recorder = monitoring.CompletionRecorder()
    rewards = monitoring.instrument_rewards(build_rewards(active_rewards(cfg), task, reward_context(cfg, models)),
                                            recorder)
    train_dataset = train_dataset if train_dataset is not None else build_dataset(cfg, task)
    train_dataset = monitoring.drop_undecodable_images(train_dataset, args.output_dir)  # counted skip, not a crash
    model, processor = build_policy(cfg, args)
    cbs = [MetricsLogger(args.output_dir), SafeCheckpoints(),
           CompletionsTable(args.output_dir, recorder, every=section(cfg, "wandb").log_completions_every),
           *(callbacks or [])]
    cqbench = cqbench_callback(cfg, task) if section(cfg, "eval").enabled else None
    monitoring.init_wandb(cfg, args)  # project/name/tags/entity + resolved recipe; no-op without report_to=wandb
    trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=train_dataset,
                          processing_class=processor, peft_config=build_lora_config(cfg),
                          callbacks=cbs + ([cqbench] if cqbench else []))
    if cqbench:
        cqbench.bind(trainer)
    return trainer


def cqbench_callback(cfg: DictConfig, task: Task):
    """CQBench before/after training on the recipe's held-out subset. For text->image it renders with the reward's
    SD3.5 and settings: the same (model, device, dtype) finds the reward's pipeline in the per-process cache, where
    any other key would load a second ~28 GB copy."""
    import inspect

    from mmpc_rl.eval.callback import CQBenchCallback

    renderer = None
    if not task.uses_image_input:
        from mmpc_rl.eval.cqbench import load_renderer
        from mmpc_rl.rewards import REGISTRY

        params = inspect.signature(REGISTRY["sd35_clip"].factory).parameters
        sd = {name: p.default for name, p in params.items()} | active_rewards(cfg).get("sd35_clip", {})
        renderer = load_renderer(sd["model"], size=int(sd["size"]), steps=sd["num_inference_steps"],
                                 max_sequence_length=sd["max_sequence_length"], device=sd["device"], dtype=sd["dtype"])
    return CQBenchCallback.from_recipe(cfg, task, renderer=renderer)
