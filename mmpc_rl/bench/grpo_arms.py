"""The GRPO speed harness behind `mmpc-rl benchmark`: two arms on the same random-weight model, prompts, group size
and completion length. The project arm is a training run of the recipe (`build_trainer`: its speed keys and the
memory plan's layout); the plain arm keeps TRL's defaults. Weights are random (nothing is downloaded), shapes are
real, so compute and memory costs are real."""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import statistics
import time

from mmpc_rl.bench.grpo_options import ALGORITHM_KEYS, BenchOptions
from mmpc_rl.config import Recipe
from mmpc_rl.models import build_qwen25_vl_7b
from mmpc_rl.rewards import Reward, RewardSet
from mmpc_rl.tiny.qwen import build_model as tiny_model
from mmpc_rl.tiny.qwen import build_processor as tiny_processor
from mmpc_rl.train.builder import build_trainer, resolve_layout, task_rows
from mmpc_rl.train.callbacks import RunEnd
from mmpc_rl.train.trl_config import build_lora_config


# ------------------------------------------------------------------------------------------------ model and data
def build_processor(shape: str):
    """The tiny in-process tokenizer; for shape=real, the image processor at the real model's pixel bounds."""
    from transformers import Qwen2VLImageProcessor

    processor = tiny_processor()
    if shape == "real":
        processor.image_processor = Qwen2VLImageProcessor()  # Qwen2.5-VL ships the defaults (3136..12845056 px)
    processor.tokenizer.padding_side = "left"
    return processor


def build_model(shape: str, processor, *, device: str, dtype, seed: int = 0):
    """A random-weight policy in the requested shape, SDPA attention, on `device` in `dtype`."""
    if shape == "tiny":

        return tiny_model(len(processor.tokenizer), seed=seed).to(device=device, dtype=dtype)
    return build_qwen25_vl_7b(processor.tokenizer, device=device, dtype=dtype, seed=seed)


def synthetic_dataset(task, n: int, image_size: int, seed: int = 0):
    """n i2t rows with noise images of one size, so every step sees the same prompt length."""
    import numpy as np
    from datasets import Dataset, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    titles = ["Stainless Steel Insulated Water Bottle 24oz", "Wireless Gaming Controller for PC, Black"]
    items = [{"title": titles[i % 2], "parent_asin": f"B{i:09d}", "category": "Bench",
              "image": PILImage.fromarray(rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8))}
             for i in range(n)]
    return Dataset.from_dict(task_rows(task, items)).cast_column("image", Image())


def stub_reward(completion_ids, **_):
    """Free and never constant within a group: a stand-in when no reward model is at hand."""
    return [float(sum(ids) % 7) for ids in completion_ids]


def stub_rewards() -> RewardSet:
    return RewardSet(("stub_reward",), (Reward("stub_reward", stub_reward),), (1.0,))


# ------------------------------------------------------------------------------------------------ measuring
def reset_peak_memory(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:  # Linux: writing 5 resets this process's peak RSS (VmHWM), so each arm gets its own peak
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def peak_memory_gb(device: str) -> tuple[float, str]:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30, "torch.cuda.max_memory_allocated"
    try:
        with open("/proc/self/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
        return kb / 2**20, "peak RSS (VmHWM, reset per arm)"
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak RSS of the whole process"


class StepTimer:
    """Wall time of each optimizer step and of each `generate` call inside it (synchronised on CUDA)."""

    def __init__(self, device: str):
        self.device = device
        self.steps: list[float] = []
        self.generate: list[list[tuple[float, int]]] = []  # per step: (seconds, new tokens per sequence)
        self._t0 = 0.0

    def _now(self) -> float:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer.generate.append([])
                timer._t0 = timer._now()

            def on_step_end(self, args, state, control, **kwargs):
                timer.steps.append(timer._now() - timer._t0)

        return _Callback()

    def wrap_generate(self, model) -> None:
        """TRL calls `generate` on the unwrapped PEFT model, which is this object: time it there."""
        inner = model.generate

        def generate(*args, **kwargs):
            t0 = self._now()
            out = inner(*args, **kwargs)
            prompt_len = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
            (self.generate[-1] if self.generate else []).append((self._now() - t0, out.shape[1] - prompt_len))
            return out

        model.generate = generate

    def summary(self, warmup: int, group: int) -> dict:
        steps = self.steps[warmup:]
        gens = [g for per_step in self.generate[warmup:] for g in per_step]
        gen_s, tokens = sum(s for s, _ in gens), sum(t for _, t in gens)
        return {"step_s": [round(s, 4) for s in self.steps], "s_per_step": sum(steps) / len(steps),
                "median_s_per_step": statistics.median(steps),
                "generate_s_per_step": gen_s / len(steps), "new_tokens_per_step": tokens / len(steps),
                "decode_ms_per_token": 1000 * gen_s / tokens if tokens else None,
                "decode_tokens_per_s": group * tokens / gen_s if gen_s else None}


def environment(device: str) -> dict:
    import peft
    import torch
    import transformers
    import trl

    env = {"device": device, "torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl.__version__, "peft": peft.__version__, "python": platform.python_version(),
           "cpu_count": os.cpu_count()}
    if hasattr(os, "getloadavg"):  # CPU figures from a shared machine mean little without it
        env["load_avg_1min"] = round(os.getloadavg()[0], 2)
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def release() -> None:
    """Free the previous arm: its compiled graphs (and CUDA-graph pools) would otherwise count in the next arm's
    peak memory."""
    import torch

    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ the two arms
def project_recipe(recipe: Recipe, opts: BenchOptions, *, group: int, output_dir: str) -> Recipe:
    """The recipe as a training run of it resolves, with only what a measurement must fix: step count, G, forced
    completion length T, seed and where it writes (no checkpoints, no W&B, no CQBench). Speed settings are the
    recipe's own keys (`model.compiled_decoding`, `trainer.*`), and the memory layout is what build_trainer's
    resolve_layout picks for it; a G other than the recipe's reopens a micro-batch pinned for the recipe's own G."""
    run = {"output_dir": output_dir, "max_steps": opts.warmup + opts.steps, "num_generations": group,
           "max_completion_length": opts.new_tokens,
           "generation_kwargs": {**(recipe.trainer.get("generation_kwargs") or {}), "min_new_tokens": opts.new_tokens},
           "save_strategy": "no", "report_to": "none", "logging_steps": 1, "log_completions": False,
           "resume_from_checkpoint": None, "seed": opts.seed,
           "overwrite_output_dir": True}  # a measurement's scratch folder: an unfinished arm measured again
    if group != recipe.trainer.get("num_generations"):  # a micro-batch sized for another G: the planner re-picks it
        run.update(per_device_train_batch_size=None, gradient_accumulation_steps=None)
    return recipe.replace(trainer=run, eval=dataclasses.replace(recipe.eval, enabled=False))

def plain_args(recipe: Recipe, opts: BenchOptions, *, device: str, group: int, output_dir: str,
               reward_weights: list[float]):
    """TRL's defaults with the recipe's algorithm (loss, KL, clipping, lr) and the same G, T and step count."""
    from trl import GRPOConfig

    trainer = recipe.trainer
    algorithm = {k: trainer[k] for k in ALGORITHM_KEYS if k in trainer}
    return GRPOConfig(**{**algorithm, "seed": opts.seed}, output_dir=output_dir, max_steps=opts.warmup + opts.steps,
                      num_generations=group, per_device_train_batch_size=group, max_completion_length=opts.new_tokens,
                      generation_kwargs={"min_new_tokens": opts.new_tokens}, reward_weights=list(reward_weights),
                      save_strategy="no", report_to="none", logging_steps=1, use_cpu=device == "cpu",
                      # TRL's default checkpointing (on), under transformers 5's name: the old one warns every run
                      activation_checkpointing=True, gradient_checkpointing=None)


def run_arm(arm: str, recipe: Recipe, opts: BenchOptions, *, processor, dataset, rewards: RewardSet, device: str,
            dtype, group: int, model=None, gpu_gb: float | None = None, predict=None) -> dict:
    """Train warmup+steps GRPO steps of one arm on a fresh copy of the model (or on `model`, e.g. a 4-bit one);
    its timings and peak memory. The project arm is `build_trainer` itself (a training run of the recipe, given this
    model and these rewards), its layout planned for `gpu_gb` when given (else for this device); the plain arm is a
    bare GRPOTrainer with TRL's defaults. `predict(trainer, model)` adds its figures (the planner's) to the result."""
    from trl import GRPOTrainer

    output_dir = os.path.join(opts.out, arm)
    release()
    reset_peak_memory(device)
    if model is None:
        model = build_model(opts.shape, processor, device=device, dtype=dtype, seed=opts.seed)
    timer = StepTimer(device)
    if arm == "project":
        run = project_recipe(recipe, opts, group=group, output_dir=output_dir)
        if gpu_gb is not None:
            run = resolve_layout(run, gpu_gb)  # pinned here, so build_trainer keeps it on a bigger card
        trainer = build_trainer(run, policy=(model, processor), train_dataset=dataset, rewards=rewards,
                                callbacks=[timer.callback()])
        # the run's end (final adapter, reward_curves.png) comes after the measured steps and would need matplotlib,
        # which the GPU check does not carry
        trainer.remove_callback(RunEnd)
    else:
        args = plain_args(recipe, opts, device=device, group=group, output_dir=output_dir,
                          reward_weights=list(rewards.weights))
        trainer = GRPOTrainer(model=model, reward_funcs=list(rewards), args=args, train_dataset=dataset,
                              processing_class=processor, peft_config=build_lora_config(recipe),
                              callbacks=[timer.callback()])
    args = trainer.args
    decoding = getattr(trainer, "decoding_stats", None)
    timer.wrap_generate(trainer.model)
    trainer.train()
    peak, kind = peak_memory_gb(device)
    result = timer.summary(opts.warmup, group)
    result.update(peak_mem_gb=round(peak, 3), peak_mem_kind=kind, settings={
        **resolved_settings(args), "compiled_generation": bool(decoding and decoding.enabled),
        "model_dtype": str(dtype).replace("torch.", ""), "attn_implementation": model.config._attn_implementation})
    if decoding is not None:
        result["decoding"] = {**dataclasses.asdict(decoding), "recompiles": decoding.recompiles}
    result["trainable_params"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if predict is not None:
        result.update(predict(trainer, model))
    del trainer, model
    release()
    return result


def resolved_settings(args) -> dict:
    """What decides speed and the objective in a GRPOConfig: compared between an arm and a training run."""
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation",
            "gradient_checkpointing", "bf16", "cache_implementation", "pad_to_multiple_of", "disable_dropout",
            "loss_type", "beta", "epsilon", "epsilon_high", "learning_rate", "scale_rewards", "temperature",
            "num_generations")
    return {k: getattr(args, k) for k in keys}
