"""One GPU check: the GPU figures of docs/benchmark.md in one run of <= 8 minutes of device time, random weights at
the real shapes, nothing downloaded.

    bench/gpu_check.sh OUT                                      # one H100/H200, from a checkout (no install needed)
    python -m mmpc_rl.cli benchmark suite=gpu out=OUT           # the same, with mmpc_rl importable
    mmpc-rl benchmark suite=gpu dry=true out=/tmp/gpu-check     # tiny shapes on CPU: the plan, then every section

Every run prints the section plan first: each section's estimated device seconds on one H100/H200 and their sum
against `budget_s` (480). A real run skips a section that would pass the budget. Sections run in this order, each
written to out/gpu_check.json as soon as it finishes (out/gpu_check.md at the end):
- project: i2t GRPO at the Qwen2.5-VL-7B shape as a training run builds it (mmpc_rl.bench.grpo_arms.run_arm), with
           compiled decoding on (its eager fallback included) and the layout the planner picks for `gpu_gb` (79.19:
           an H100 80GB), usable memory capped to that on a bigger card, so the figures are an H100 user's;
- plain:   the same steps with plain TRL's defaults;
- t2i:     one text->image reward group at the SD3.5-large shape (16 completions x 4 images at 1024 px) through the
           real SD35ClipReward, after a warm-up of one completion;
- cqbench: CQBench generation (mmpc_rl.bench.cqbench_speed.measure) at the 7B shape, batch 16;
- qlora:   optional (not in the default sections; needs bitsandbytes): the project arm on a 4-bit copy.
Each arm: 1 warm-up + 2 measured steps, G=16, 128 forced new tokens, a stub reward; s/step, decode ms per step of
the group, peak memory beside the planner's prediction for the same inputs. Dynamo's recompile log
(TORCH_LOGS=recompiles) goes to out/torch_recompiles.log. Needs trl, datasets, diffusers and open_clip beside the
GPU image's torch stack; bitsandbytes and wandb are optional.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mmpc_rl.bench import grpo_arms as bench
from mmpc_rl.bench.cqbench_speed import SpeedConfig, load, measure
from mmpc_rl.bench.gpu_report import environment, table
from mmpc_rl.bench.grpo_options import BenchOptions, ratios
from mmpc_rl.bench.sd35_speed import reward_group
from mmpc_rl.config import load_recipe
from mmpc_rl.data import load_items
from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.io import atomic_write_json, atomic_write_text
from mmpc_rl.models import bnb_config, torch_dtype
from mmpc_rl.options import parse_options
from mmpc_rl.plan import PlanInputs, model_shape, plan
from mmpc_rl.tasks import get_task

SECTIONS = ("project", "plain", "t2i", "cqbench", "qlora")
DEFAULT_SECTIONS = ("project", "plain", "t2i", "cqbench")
# Estimated device seconds on one H100/H200, from the plain-TRL anchors (docs/benchmark.md: 15.5 s per plain step,
# 37 s first step, a 42 s decode compile, 0.41 s per 1024 px render, 35-58 ms per eager decode step) plus ~25 s to
# build a random 7B on the GPU. Guesses until a GPU run replaces them; the machine's start is not in them.
ESTIMATE_S = {"setup": 40, "project": 120, "plain": 100, "t2i": 75, "cqbench": 50, "qlora": 180}
H100_GIB = 79.19  # what an H100 80GB reports (torch.cuda.get_device_properties().total_memory / 2**30)


@dataclass
class CheckOptions:
    suite: str = "gpu"
    dry: bool = False  # tiny shapes on CPU: checks the script end to end (the figures mean nothing)
    out: str = "outputs/gpu-check"
    sections: list[str] = field(default_factory=lambda: list(DEFAULT_SECTIONS))
    steps: int = 2  # measured GRPO steps per arm (after `warmup`)
    warmup: int = 1
    group: int = 16  # G
    new_tokens: int = 128
    sizes: list[int] = field(default_factory=lambda: [1024])  # t2i render sides
    cqbench_items: int = 64
    cqbench_batch: int = 16
    gpu_gb: float = H100_GIB  # the project arm's layout is planned for this, and usable memory capped to it
    budget_s: int = 480  # device seconds; a real run skips a section its estimate would take past this


def parse(argv: list[str]) -> CheckOptions:
    opts = parse_options(CheckOptions, argv, "mmpc-rl benchmark suite=gpu")
    if opts.suite != "gpu":
        raise ConfigError(f"suite={opts.suite!r}; valid choices: gpu")
    for name in opts.sections:
        if name not in SECTIONS:
            raise ConfigError(f"unknown section {name!r}" + did_you_mean(name, SECTIONS))
    if opts.dry:  # tiny everything, so the whole script runs in the test suite
        opts = dataclasses.replace(opts, steps=1, warmup=1, group=2, new_tokens=4, sizes=[64], cqbench_items=4,
                                   cqbench_batch=2)
    return opts


def section_plan(opts: CheckOptions) -> tuple[list[tuple[str, int]], int]:
    rows = [("setup", ESTIMATE_S["setup"]), *((name, ESTIMATE_S[name]) for name in opts.sections)]
    return rows, sum(s for _, s in rows)


def print_plan(opts: CheckOptions) -> int:
    rows, total = section_plan(opts)
    print("mmpc-rl: gpu check plan (estimated device seconds on one H100/H200): "
          + ", ".join(f"{name} {s}" for name, s in rows) + f"; total {total} of budget {opts.budget_s}", flush=True)
    return total


# ------------------------------------------------------------------------------------------------ sections
def arm(opts: CheckOptions, device: str, name: str, qlora: bool = False) -> dict:
    """One arm through the benchmark's own run_arm, with the planner's prediction for its exact inputs."""
    overrides = ["model.compiled_decoding=force", "model.compile_backend=eager"] if opts.dry else [
        "model.compiled_decoding=true"]  # on CUDA; transformers leaves bitsandbytes layers eager (logged)
    cfg = load_recipe(["recipe=i2t", *overrides, *(["model.qlora=true"] if qlora else [])])
    shape = "tiny" if opts.dry else "real"
    bopts = BenchOptions(recipe="i2t", steps=opts.steps, warmup=opts.warmup, shape=shape, new_tokens=opts.new_tokens,
                         num_generations=opts.group, rewards="stub", out=str(Path(opts.out) / name))
    dtype = torch_dtype(cfg.model.dtype if device == "cuda" else "float32")
    processor = bench.build_processor(shape)
    dataset = bench.synthetic_dataset(get_task("i2t"), 2 * (opts.warmup + opts.steps) + 2, bopts.image_size)
    model = quantized_model(processor, bopts.out, dtype) if qlora else None
    return bench.run_arm("plain" if name == "plain" else "project", cfg, bopts, processor=processor, dataset=dataset,
                         rewards=bench.stub_rewards(), device=device, dtype=dtype, group=opts.group, model=model,
                         gpu_gb=None if opts.dry else opts.gpu_gb,
                         predict=predictor(cfg, processor, dataset[0], opts, device, qlora))


def predictor(cfg, processor, row, opts: CheckOptions, device: str, qlora: bool):
    """The planner's peak for what an arm ran: its model's shape, counted prompt and image tokens (padded to the
    decoding bucket when compiled decoding is on), forced completion length, resolved layout and dropout."""

    def predict(trainer, model) -> dict:
        try:
            args, bucket = trainer.args, trainer.pad_to_multiple_of
            text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
            enc = processor(text=[text], images=[row["image"]], return_tensors="pt")
            shape = model_shape(model.config)
            image = int(enc["image_grid_thw"].prod()) // shape.merge_size**2
            prompt = int(enc["input_ids"].shape[1])
            prompt = math.ceil(prompt / bucket) * bucket if bucket else prompt
            dropout = 0.0 if args.disable_dropout else float(cfg.lora.get("lora_dropout") or 0.0)
            inputs = PlanInputs(
                shape=shape, prompt_text_tokens=prompt - image, image_tokens=image,
                completion_tokens=opts.new_tokens, num_generations=args.num_generations,
                micro_batch=args.per_device_train_batch_size, grad_accum=args.gradient_accumulation_steps,
                steps_per_generation=args.steps_per_generation, gradient_checkpointing=bool(
                    args.gradient_checkpointing), lora_r=int(cfg.lora["r"]), lora_dropout=dropout,
                lora_targets=cfg.lora.get("target_modules"), qlora=qlora, qlora_fp32_adapters=True,
                beta=float(args.beta), padded=bool(bucket), device=device)
            p = plan(inputs, opts.gpu_gb)
            return {"planned_peak_gb": p.peak_gb, "planned_phase": p.phase, "planned_fits": p.fits}
        except Exception as e:  # noqa: BLE001 - a missing prediction must not lose the measurement
            return {"planned_peak_gb": None, "plan_error": f"{type(e).__name__}: {e}".splitlines()[0][:200]}

    return predict


def quantized_model(processor, folder: str, dtype):
    """The random 7B-shaped policy in 4-bit NF4: bitsandbytes quantizes while loading, so save it and reload. As
    in training (train.builder.build_policy), nothing is upcast to fp32."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    quantization = bnb_config("bfloat16")  # a one-line error without bitsandbytes, before 16 GB are written
    path = Path(folder) / "random-7b"
    model = bench.build_model("real", processor, device="cuda", dtype=dtype)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, quantization_config=quantization, dtype=dtype,
                                                              device_map={"": 0})


def t2i(opts: CheckOptions, device: str) -> dict:
    return reward_group(opts.sizes, dry=opts.dry, device=device)


def cqbench(opts: CheckOptions, device: str) -> dict:
    cfg = SpeedConfig(shape=None if opts.dry else "7b", dtype="float32" if opts.dry else "bfloat16")
    model, processor = load(cfg)
    pool = load_items("sample", split="cqbench")
    items = [pool[i % len(pool)] for i in range(opts.cqbench_items)]
    result = measure(model, processor, items, opts.cqbench_batch, opts.new_tokens)
    return {**result, "max_new_tokens": opts.new_tokens}


# ------------------------------------------------------------------------------------------------ the run
def cap_memory(gpu_gb: float) -> float | None:
    """On a card bigger than `gpu_gb`, let PyTorch's allocator use only that much, as on the smaller card."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    if total <= gpu_gb:
        return None
    torch.cuda.set_per_process_memory_fraction(gpu_gb / total, 0)
    return round(total, 2)


def capture_recompiles(out: Path) -> logging.Handler:
    """TORCH_LOGS=recompiles (and CUDA-graph re-records) into out/torch_recompiles.log."""
    import torch

    torch._logging.set_logs(recompiles=True, cudagraphs=True)
    handler = logging.FileHandler(out / "torch_recompiles.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s"))
    for name in ("torch._dynamo", "torch._inductor"):
        logging.getLogger(name).addHandler(handler)
    return handler


def main(argv: list[str]) -> int:
    import torch

    opts = parse(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not opts.dry:
        raise ConfigError("suite=gpu builds the 7B and SD3.5-large shapes: run it on a GPU, or add dry=true on CPU")
    planned = print_plan(opts)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"options": dataclasses.asdict(opts), "plan": dict(section_plan(opts)[0]), "planned_s": planned,
               "env": environment(device), "sections": {}}
    if device == "cuda":
        results["env"]["capped_from_gib"] = cap_memory(opts.gpu_gb)
    handler = capture_recompiles(out)
    runners = {"project": lambda: arm(opts, device, "project"), "plain": lambda: arm(opts, device, "plain"),
               "qlora": lambda: arm(opts, device, "qlora", qlora=True), "t2i": lambda: t2i(opts, device),
               "cqbench": lambda: cqbench(opts, device)}
    start = time.perf_counter()
    for name in opts.sections:
        elapsed = time.perf_counter() - start + ESTIMATE_S["setup"]
        print(f"mmpc-rl: gpu check section {name!r} ({elapsed:.0f} s in, estimate {ESTIMATE_S[name]} s)", flush=True)
        t0 = time.perf_counter()
        if name == "qlora" and device != "cuda":
            res = {"skipped": "bitsandbytes 4-bit layers need CUDA"}
        elif not opts.dry and elapsed + ESTIMATE_S[name] > opts.budget_s:
            res = {"skipped": f"its estimate ({ESTIMATE_S[name]} s) would pass budget_s={opts.budget_s}"}
        else:
            try:
                res = runners[name]()
            except Exception as e:  # noqa: BLE001 - one failed section must not lose the others' figures
                traceback.print_exc()
                res = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        results["sections"][name] = res
        bench.release()
        atomic_write_json(out / "gpu_check.json", results)  # a kill keeps every finished section
    results["ratio"] = ratios({a: results["sections"][a] for a in ("project", "plain")
                               if "s_per_step" in results["sections"].get(a, {})})
    results["wall_s"] = round(time.perf_counter() - start, 1)
    atomic_write_json(out / "gpu_check.json", results)
    logging.getLogger("torch._dynamo").removeHandler(handler)
    logging.getLogger("torch._inductor").removeHandler(handler)
    handler.close()
    md = table(results)
    atomic_write_text(out / "gpu_check.md", md)
    print(md)
    print(f"mmpc-rl: results in {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 1 if any("error" in r for r in results["sections"].values()) else 0
