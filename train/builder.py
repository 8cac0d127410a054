"""Build the pieces of a GRPO run from a Recipe: dataset, rewards, policy, callbacks, trainer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from datasets import Dataset, Image
from trl import GRPOTrainer

from mmpc_rl.config import Recipe, thaw
from mmpc_rl.console import quiet_repeated_warnings
from mmpc_rl.data import load_items
from mmpc_rl.data.skips import drop_unusable_images, usable_items
from mmpc_rl.errors import ConfigError, DataError
from mmpc_rl.eval.scorers import build_scorers
from mmpc_rl.eval.settings import scoring_settings, settings_record
from mmpc_rl.io import atomic_write_json, prepare_output_dir
from mmpc_rl.models import load_adapter_weights, load_policy
from mmpc_rl.plan import device_gb, plan_recipe
from mmpc_rl.plan.recipe import layout_overrides, trainer_value
from mmpc_rl.rewards import RewardContext, RewardSet, build_rewards, reward_memory
from mmpc_rl.tasks import Task, get_task
from mmpc_rl.train.callbacks import (
    CompletionsTable,
    MetricsLogger,
    RunEnd,
    SafeCheckpoints,
    StopOnNonFinite,
    init_wandb,
    no_pickled_args,
    prepare_args,
)
from mmpc_rl.train.card import own_model_card
from mmpc_rl.train.cqbench import CQBenchCallback
from mmpc_rl.train.cuda_check import wants_cpu
from mmpc_rl.train.decoding import enable_compiled_decoding, one_input_grads_hook
from mmpc_rl.train.instrument import CompletionRecorder, RewardCheck, instrument_rewards
from mmpc_rl.train.progress import compact_console
from mmpc_rl.train.run_config import save_config
from mmpc_rl.train.run_folder import claim_run_folder, continue_layout
from mmpc_rl.train.trl_config import build_grpo_config, build_lora_config
from mmpc_rl.train.watch import format_check, watch_callbacks


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


def build_dataset(recipe: Recipe, task: Task, split: str | None = None, limit: int | None = None) -> Dataset:
    """A `datasets.Dataset` of the task's prompts. Images stay file paths until TRL reads a batch."""
    data = recipe.data
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


def build_policy(recipe: Recipe, args):
    """The policy and its processor. For 4-bit (`model.qlora`) nothing is upcast: peft's
    `prepare_model_for_kbit_training` would turn embed_tokens and lm_head (1.09 B parameters at Qwen2.5-VL-7B) and
    every norm to fp32, +2.2 GB of weights and an fp32 residual stream, for no gain this recipe needs; TRL
    itself enables input gradients for checkpointing. The plain-TRL QLoRA anchor (11.5 GB) ran without it too."""
    model_cfg = recipe.model
    cpu = bool(args.use_cpu) or not torch.cuda.is_available()
    return load_policy(model_cfg, cpu=cpu, device_map=policy_device_map(args, model_cfg, cpu))


def keep_trainable_fp32(model) -> int:
    """Trainable parameters back to fp32. For quantized models TRL 1.16 casts them to bf16 (grpo_trainer.py: "adapter
    weights are converted to bf16"), where AdamW steps of ~1e-5 round away on any weight above 2^-8: measured on the
    tiny Qwen, 2.2 % of lora_A entries moved in 4 steps at lr 1e-5 (100 % in bf16 LoRA). Compute stays bf16 (peft
    casts a LoRA layer's input to its weight dtype; autocast runs the matmuls in bf16 on GPU). Returns the count."""
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += param.numel()
    return cast


def portable_adapter_base(trainer, base: str) -> None:
    """Every save's adapter_config.json names the base as the recipe did (a hub id, `tiny://NAME`, a folder), not the
    cache folder it loaded from, which exists on this machine only; `mmpc-rl eval cqbench adapter=DIR` reads it.
    Rewritten after PEFT's save: PEFT itself reads the field while saving, to look for the base's config.json."""
    original = trainer._save

    def _save(output_dir=None, state_dict=None):
        result = original(output_dir, state_dict=state_dict)
        path = Path(output_dir if output_dir is not None else trainer.args.output_dir) / "adapter_config.json"
        if trainer.args.should_save and path.is_file():
            config = json.loads(path.read_text())
            atomic_write_json(path, {**config, "base_model_name_or_path": base})
        return result

    trainer._save = _save


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


LAYOUT_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing")


def on_gpu(recipe: Recipe) -> bool:
    return torch.cuda.is_available() and not wants_cpu(recipe)


def resolve_layout(recipe: Recipe, gpu_gb: float | None = None) -> Recipe:
    """The recipe with its memory layout decided, for training and the benchmark's project arm alike.

    On a GPU (or for `gpu_gb`), the memory planner (mmpc_rl.plan) predicts the peak of one GRPO step: where the recipe
    leaves the layout open (`per_device_train_batch_size`, `gradient_accumulation_steps`, `gradient_checkpointing`
    unset, as in the shipped GPU recipes) it takes the fastest layout that fits without changing the objective (one
    whole group per optimizer step; checkpointing off first, then smaller micro-batches, then checkpointing on); a
    pinned layout predicted not to fit stops here, before any model loads, naming one that fits. On CPU the open
    keys become one whole group per micro-batch without checkpointing (host memory is not planned)."""
    open_keys = [k for k in LAYOUT_KEYS if recipe.trainer.get(k) is None]
    if gpu_gb is None and not on_gpu(recipe):
        if not open_keys:
            return recipe
        group = int(trainer_value(recipe.trainer, "num_generations"))
        fill = {"per_device_train_batch_size": group, "gradient_accumulation_steps": 1,
                "gradient_checkpointing": False}
        return recipe.replace(trainer={k: fill[k] for k in open_keys})
    gpu_gb = device_gb() if gpu_gb is None else gpu_gb
    # this trainer keeps QLoRA adapters fp32 and upcasts nothing else (keep_trainable_fp32, build_policy)
    result = plan_recipe(recipe, gpu_gb, models=reward_memory(recipe.rewards), kbit_upcast=False,
                         qlora_fp32_adapters=True)
    s = result.settings
    if not result.fits:
        raise ConfigError(f"predicted peak {result.peak_gb:.1f} GiB of {gpu_gb:.0f} GiB GPU memory at the "
                          f"{result.phase} with {layout_overrides(s)} does not fit; what does: "
                          f"{'; or '.join(s['fits_with'])} (mmpc-rl plan recipe={recipe.name})")
    if not open_keys:
        return recipe
    chosen = {"per_device_train_batch_size": s["micro_batch"], "gradient_accumulation_steps": s["grad_accum"],
              "gradient_checkpointing": bool(s["gradient_checkpointing"])}
    print(f"mmpc-rl: memory plan: {layout_overrides(s)} (predicted peak {result.peak_gb:.1f} GiB of "
          f"{gpu_gb:.0f} GiB; `mmpc-rl plan recipe={recipe.name}` shows the breakdown)")
    return recipe.replace(trainer={k: chosen[k] for k in open_keys})


def build_trainer(recipe: Recipe, *, models: dict | None = None, callbacks: list | None = None,
                  train_dataset=None, policy=None, rewards: RewardSet | None = None) -> GRPOTrainer:
    """The GRPOTrainer for a recipe. `models` injects already-loaded reward models (e.g. {"minilm": st}); `policy`
    a (model, processor) pair and `rewards` a built RewardSet (the speed harness's random-weight model and stub
    reward), so that a benchmark arm is built exactly like a training run."""
    recipe = resolve_layout(continue_layout(recipe))
    if recipe.model.cpu_threads and not on_gpu(recipe):
        torch.set_num_threads(recipe.model.cpu_threads)  # for the whole run: every number of it depends on it
    task = get_task(recipe.task, recipe.data.prompt, recipe.model.name_or_path)  # the family's wording, as CQBench's
    args = build_grpo_config(recipe)
    prepare_output_dir(args.output_dir)  # writable, no link out of it: one line before anything else
    lock = claim_run_folder(recipe, args)  # one run per folder: locked, another run's files refused or cleared
    if args.process_index == 0:
        save_config(recipe, args.output_dir)
    prepare_args(args, task)
    context = RewardContext(models=dict(models or {}), output_dir=args.output_dir,
                            is_main_process=args.process_index == 0)
    rewards = rewards if rewards is not None else build_rewards(recipe.rewards, task, context)
    args.reward_weights = list(rewards.weights)  # TRL pairs weights with functions by position: from one set
    recorder = CompletionRecorder()  # per-reward timings + the completions table, fed by wrapping each reward
    train_dataset = train_dataset if train_dataset is not None else build_dataset(recipe, task)
    train_dataset = drop_unusable_images(train_dataset, args.output_dir)  # counted skip, not a crash
    model, processor = policy if policy is not None else build_policy(recipe, args)
    cqbench = cqbench_callback(recipe, task, rewards, main=args.process_index == 0) if recipe.eval.enabled else None
    run_end = RunEnd()
    watch = watch_callbacks(recipe, args.output_dir)  # alarms, early stop, best adapter: after CQBench, before RunEnd
    cbs = [MetricsLogger(args.output_dir), StopOnNonFinite(), SafeCheckpoints(),
           CompletionsTable(args.output_dir, recorder, every=recipe.wandb.log_completions_every),
           *(callbacks or []), *([cqbench] if cqbench else []), *watch, run_end]
    init_wandb(recipe, args)  # project/name/tags/entity + resolved recipe; no-op without report_to=wandb
    check = RewardCheck()  # a NaN, inf or all-None reward stops the run (train.instrument)
    reward_funcs = instrument_rewards(rewards, recorder, batch_check=format_check(task), check=check)
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset,
                          processing_class=processor, peft_config=build_lora_config(recipe), callbacks=cbs)
    check.attach(trainer)
    if recipe.model.qlora:
        keep_trainable_fp32(trainer.model)  # before train() builds the optimizer over these tensors
    one_input_grads_hook(trainer.model)  # checkpointing re-enabled around each generate must not add hooks
    if recipe.model.compiled_decoding:  # TRL builds its GenerationConfig with disable_compile=True
        enable_compiled_decoding(trainer, mode=recipe.model.compiled_decoding, backend=recipe.model.compile_backend)
    no_pickled_args(trainer)
    own_model_card(trainer)  # output_dir/README.md is ours at every save and hub push, not TRL's generic card
    compact_console(trainer)  # one short line per step; every number is in metrics.jsonl (and W&B)
    quiet_repeated_warnings()  # a library warning repeated every batch is shown once
    portable_adapter_base(trainer, recipe.model.name_or_path)
    for cb in [cqbench, *watch]:
        if hasattr(cb, "bind"):
            cb.bind(trainer)
    run_end.bind(trainer, lock)
    return trainer


def cqbench_callback(recipe: Recipe, task: Task, rewards: RewardSet, main: bool = True) -> CQBenchCallback:
    """CQBench before/after training on the recipe's held-out subset. Text->image renders through the reward that
    renders (sd35_clip's `render_fn`: its pipeline and settings), so SD3.5 is loaded once."""
    ev, data = recipe.eval, recipe.data
    renderer = None
    if not task.uses_image_input:
        renderer = next((r.fn.render_fn() for r in rewards if callable(getattr(r.fn, "render_fn", None))), None)
        if renderer is None:
            raise ConfigError("eval.enabled on a text->image recipe needs a reward that renders (sd35_clip)")
    items = load_items(data.path, split=ev.split, categories=ev.categories or data.categories,
                       limit_per_category=ev.items_per_category, seed=data.seed, cache_dir=data.cache_dir)
    items = usable_items(items, policy=task.uses_image_input)  # counted skip, not a crash at the "after" pass
    scorers = build_scorers([task.name], bertscore=ev.bertscore, bertscore_layers=ev.bertscore_layers,
                            lpips=ev.lpips, clip=ev.clip, renderer=renderer)
    # the "before" pass's fingerprint, so that a resumed run reuses it only when it is of this base and these
    # settings; checked by the main process alone, and a local model's is a hash of its weights: made there only
    settings = None
    if main:
        render = None if task.uses_image_input else {n: thaw(o) for n, o in recipe.rewards.items()
                                                     if callable(getattr(rewards.get(n).fn, "render_fn", None))}
        scoring = scoring_settings(task, bertscore=ev.bertscore, bertscore_layers=ev.bertscore_layers, lpips=ev.lpips,
                                   clip=ev.clip, renderer=render)
        settings = settings_record(model=recipe.model.name_or_path, revision=recipe.model.revision, adapter=None,
                                   task=task, mc=recipe.model, cpu=not on_gpu(recipe), data=data.path,
                                   max_new_tokens=ev.max_new_tokens, do_sample=False, seed=data.seed,
                                   scoring=scoring)
    return CQBenchCallback(ev, task, items, recipe.trainer["output_dir"], scorers=scorers, seed=data.seed,
                           settings=settings)


def check_resumed_adapter(trainer, checkpoint: str | None) -> None:
    """The checkpoint's adapter must fit the policy before training resumes from it: the HF Trainer loads it with
    PEFT, which only warns about tensors that do not fit, and the run would go on from a half-fresh adapter. Loading
    it here (the Trainer loads the same weights again) turns a misfit into one line. Under DeepSpeed the engine
    loads its own checkpoint of the sharded weights instead."""
    if checkpoint and hasattr(trainer.model, "peft_config") and not trainer.is_deepspeed_enabled:
        if (Path(checkpoint) / "adapter_config.json").is_file():
            load_adapter_weights(trainer.model, checkpoint, adapter_name=trainer.model.active_adapter)


def finish_again(trainer, checkpoint: str) -> None:
    """End a run whose training is done but whose final result is missing or broken: the checkpoint's weights and
    state are loaded and the run's start and end callbacks run (CQBench "before" is reused, "after" made, the final
    adapter, processor, curves and state saved: RunEnd), without a training step."""
    from transformers import TrainerState

    if trainer.is_deepspeed_enabled:
        raise ConfigError(f"the run's final result is incomplete and {checkpoint} is at max_steps: finish it again "
                          "in one process (without DeepSpeed), or copy that checkpoint's adapter into the run folder")
    check_resumed_adapter(trainer, checkpoint)
    trainer._load_from_checkpoint(checkpoint)  # the HF Trainer's own loader, as train() would call it
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    state.is_world_process_zero, state.is_local_process_zero = (trainer.is_world_process_zero(),
                                                                trainer.is_local_process_zero())
    trainer.state = state
    trainer.callback_handler.on_train_begin(trainer.args, state, trainer.control)
    trainer.callback_handler.on_train_end(trainer.args, state, trainer.control)
