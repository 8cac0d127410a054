"""One GPU check: every GPU speed figure of docs/benchmark.md in one run, random weights at the real shapes, nothing
downloaded.

    mmpc-rl benchmark suite=gpu out=outputs/gpu-check          # one H100/H200; bench/gpu_check.sh wraps it
    mmpc-rl benchmark suite=gpu dry=true out=/tmp/gpu-check     # tiny shapes on CPU, seconds per section (tests)

Sections (`sections=[...]`), each written to out/gpu_check.json as it finishes, then out/gpu_check.md:
- grpo:    i2t GRPO at the Qwen2.5-VL-7B shape, plain TRL vs the project arm (mmpc_rl.bench.grpo_arms.run_arm:
           warm-up + measured steps each, G=16, 128 forced new tokens, stub reward); decode ms per token inside
           training from the step timer, compiles/recompiles from mmpc_rl.train.decoding;
- qlora:   the project arm on a 4-bit NF4 copy of the same random model (saved and reloaded: bitsandbytes quantizes
           on load); CUDA only;
- t2i:     one text->image reward group at the SD3.5-large shape: 16 completions x 4 images through the real
           SD35ClipReward (its dedupe and batching) at each size; text encoders have the real output widths but one
           layer (prompt encoding is cached and small beside 4-step denoising), CLIP is the tiny one;
- cqbench: CQBench generation (mmpc_rl.bench.cqbench_speed.measure) at the 7B shape, batch 16.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mmpc_rl.bench import grpo_arms as bench
from mmpc_rl.bench.cqbench_speed import SpeedConfig, load, measure
from mmpc_rl.bench.grpo_options import BenchOptions, ratios
from mmpc_rl.clip import ClipEmbedder
from mmpc_rl.config import load_recipe
from mmpc_rl.data import load_items
from mmpc_rl.errors import ConfigError, did_you_mean
from mmpc_rl.io import atomic_write_json, atomic_write_text
from mmpc_rl.models import bnb_config, load_sd3_pipeline, torch_dtype
from mmpc_rl.options import parse_options
from mmpc_rl.render import Renderer
from mmpc_rl.rewards.sd35_clip import SD35ClipReward
from mmpc_rl.tasks import get_task

SECTIONS = ("grpo", "qlora", "t2i", "cqbench")


@dataclass
class CheckOptions:
    suite: str = "gpu"
    dry: bool = False  # tiny shapes on CPU: checks the script end to end in seconds (the figures mean nothing)
    out: str = "outputs/gpu-check"
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    steps: int = 3  # measured GRPO steps per arm (after `warmup`)
    warmup: int = 1
    group: int = 16  # G
    new_tokens: int = 128
    sizes: list[int] = field(default_factory=lambda: [512, 1024])  # t2i render sides
    cqbench_items: int = 64
    cqbench_batch: int = 16


def parse(argv: list[str]) -> CheckOptions:

    opts = parse_options(CheckOptions, argv, "mmpc-rl benchmark suite=gpu")
    if opts.suite != "gpu":
        raise ConfigError(f"suite={opts.suite!r}; valid choices: gpu")
    for name in opts.sections:
        if name not in SECTIONS:
            raise ConfigError(f"unknown section {name!r}" + did_you_mean(name, SECTIONS))
    if opts.dry:  # tiny everything, so the whole script runs in the test suite
        opts = dataclasses.replace(opts, steps=1, warmup=0, group=2, new_tokens=4, sizes=[64], cqbench_items=4,
                                   cqbench_batch=2)
    return opts


# ------------------------------------------------------------------------------------------------ sections
def grpo(opts: CheckOptions, device: str, qlora: bool = False) -> dict:
    """Both arms (or, for qlora, the project arm on a 4-bit model) through the benchmark's own run_arm."""
    # the training path decides the rest: compiled decoding falls back (logged) for bitsandbytes layers
    cfg = load_recipe(["recipe=i2t", *(["model.qlora=true"] if qlora else [])])
    shape = "tiny" if opts.dry else "real"
    bopts = BenchOptions(recipe="i2t", steps=opts.steps, warmup=opts.warmup, shape=shape,
                               new_tokens=opts.new_tokens, num_generations=opts.group, rewards="stub",
                               out=str(Path(opts.out) / ("qlora" if qlora else "grpo")))
    dtype = torch_dtype(cfg.model.dtype if device == "cuda" else "float32")
    processor = bench.build_processor(shape)
    dataset = bench.synthetic_dataset(get_task("i2t"), 2 * (opts.warmup + opts.steps) + 2, bopts.image_size)
    common = dict(processor=processor, dataset=dataset, rewards=bench.stub_rewards(), device=device, dtype=dtype,
                  group=opts.group)
    if qlora:
        arm = bench.run_arm("project", cfg, bopts, model=quantized_model(processor, bopts.out, dtype), **common)
        return {"arms": {"project_qlora": arm}}
    arms = {arm: bench.run_arm(arm, cfg, bopts, **common) for arm in ("plain", "project")}
    return {"arms": arms, "ratio": ratios(arms)}


def quantized_model(processor, folder: str, dtype):
    """The random 7B-shaped policy in 4-bit NF4: bitsandbytes quantizes while loading, so save it and reload. As
    in training (train.builder.build_policy), nothing is upcast to fp32."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    path = Path(folder) / "random-7b"
    model = bench.build_model("real", processor, device="cuda", dtype=dtype)
    model.save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, quantization_config=bnb_config("bfloat16"),
                                                                dtype=dtype, device_map={"": 0})
    return model


def sd35_pipeline(dry: bool, device: str):
    """SD3.5-large's transformer and VAE (random), the tiny tokenizers, text encoders at the real widths."""
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tiny = load_sd3_pipeline("tiny://sd3", "cpu", "float32")
    if dry:
        return tiny
    dtype = torch.bfloat16
    with torch.device(device):
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
            num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm").to(dtype)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                            block_out_channels=[128, 256, 512, 512], layers_per_block=2, scaling_factor=1.5305,
                            shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False).to(dtype)

        def clip(width: int):
            return CLIPTextModelWithProjection(CLIPTextConfig(
                hidden_size=width, intermediate_size=4 * width, num_attention_heads=width // 64, num_hidden_layers=1,
                vocab_size=1000, projection_dim=width, bos_token_id=0, eos_token_id=1, pad_token_id=1)).to(dtype)

        t5 = T5EncoderModel(T5Config(vocab_size=128, d_model=4096, d_kv=64, d_ff=10240, num_layers=1, num_heads=64,
                                     pad_token_id=0, eos_token_id=1)).to(dtype)
        return StableDiffusion3Pipeline(transformer=transformer, vae=vae, scheduler=tiny.scheduler,
                                        text_encoder=clip(768), tokenizer=tiny.tokenizer, text_encoder_2=clip(1280),
                                        tokenizer_2=tiny.tokenizer_2, text_encoder_3=t5, tokenizer_3=tiny.tokenizer_3)


def t2i(opts: CheckOptions, device: str) -> dict:
    """One reward group per size: 16 distinct completions (the worst case for the dedupe) x 4 images."""
    import json

    import numpy as np
    from PIL import Image

    renderer = Renderer(sd35_pipeline(opts.dry, device), device)
    embedder = ClipEmbedder.from_pretrained("tiny://clip", device=device)
    n = 16 if not opts.dry else 4
    real = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    columns = {"reference_image": [real] * n, "parent_asin": ["B000000001"] * n}

    def group(tag: str) -> list[str]:
        return [json.dumps({"prompt": f"{tag} product photo {i}: a steel water bottle on a white table"})
                for i in range(n)]

    out = {}
    for side in opts.sizes:
        reward = SD35ClipReward(get_task("t2i"), renderer, embedder, height=side, width=side)
        reward(completions=group("warm-up"), **columns)  # cuDNN/allocator warm-up; its prompts are not reused
        sync(device)
        t0 = time.perf_counter()
        scores = reward(completions=group("measured"), **columns)
        sync(device)
        seconds = time.perf_counter() - t0
        renders = len(reward.last["unique"])  # after the dedupe
        out[f"{side}px"] = {"completions": n, "renders": renders, "group_s": round(seconds, 3),
                            "s_per_image": round(seconds / renders, 4), "scored": sum(s is not None for s in scores)}
    return out


def cqbench(opts: CheckOptions, device: str) -> dict:

    cfg = SpeedConfig(shape=None if opts.dry else "7b", dtype="float32" if opts.dry else "bfloat16")
    model, processor = load(cfg)
    pool = load_items("sample", split="cqbench")
    items = [pool[i % len(pool)] for i in range(opts.cqbench_items)]
    result = measure(model, processor, items, opts.cqbench_batch, opts.new_tokens)
    return {**result, "max_new_tokens": opts.new_tokens}


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ report
def table(results: dict) -> str:
    """The markdown table of the figures, one row each."""
    env = results["env"]
    lines = [f"# GPU check ({'dry run, tiny shapes' if results['options']['dry'] else 'real shapes'}) on "
             f"{env.get('gpu') or 'CPU'}; torch {env['torch']}, transformers {env['transformers']}, trl {env['trl']}",
             "", "| section | figure | value |", "|---|---|---|"]

    def row(section, figure, value):
        lines.append(f"| {section} | {figure} | {value} |")

    for name, res in results["sections"].items():
        if "error" in res:
            row(name, "error", res["error"])
            continue
        if "skipped" in res:
            row(name, "skipped", res["skipped"])
            continue
        for arm, r in res.get("arms", {}).items():
            decode = r.get("decode_ms_per_token")
            extra = r.get("decoding") or {}
            row(name, f"{arm}: s/step (median)", f"{r['s_per_step']:.3f} ({r['median_s_per_step']:.3f})")
            row(name, f"{arm}: decode ms/step of the group", "n/a" if decode is None else f"{decode:.2f}")
            row(name, f"{arm}: peak memory GB", f"{r['peak_mem_gb']:.2f}")
            if extra:
                row(name, f"{arm}: compiled decoding", f"on={extra['enabled']} compiles={extra['compiles']} "
                    f"recompiles={extra['recompiles']} first generate {extra['first_call_s'] or 0:.1f} s"
                    + (f" ({extra['reason']})" if extra.get("reason") else ""))
        for key, value in (res.get("ratio") or {}).items():
            row(name, f"plain/project {key}" if key != "peak_mem" else "project/plain peak memory", f"{value:.2f}x")
        for size, r in ((k, v) for k, v in res.items() if k.endswith("px")):
            row(name, f"{size}: group of {r['renders']} renders, s", f"{r['group_s']:.2f} ({r['s_per_image']} s/img)")
        if "items_per_minute" in res:
            row(name, f"items/min (batch {res['batch_size']}, {res['max_new_tokens']} new tokens)",
                f"{res['items_per_minute']:.1f}")
        row(name, "section wall s", f"{res['wall_s']:.1f}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    import torch

    opts = parse(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not opts.dry:
        raise ConfigError("suite=gpu builds the 7B and SD3.5-large shapes: run it on a GPU, or add dry=true on CPU")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"options": dataclasses.asdict(opts), "env": bench.environment(device), "sections": {}}
    runners = {"grpo": lambda: grpo(opts, device), "qlora": lambda: grpo(opts, device, qlora=True),
               "t2i": lambda: t2i(opts, device), "cqbench": lambda: cqbench(opts, device)}
    for name in opts.sections:
        print(f"mmpc-rl: gpu check section {name!r}", flush=True)
        t0 = time.perf_counter()
        if name == "qlora" and device != "cuda":
            res = {"skipped": "bitsandbytes 4-bit layers need CUDA"}
        else:
            try:
                res = runners[name]()
            except Exception as e:  # noqa: BLE001 - one failed section must not lose the others' figures
                traceback.print_exc()
                res = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        results["sections"][name] = res
        bench.release()
        atomic_write_json(out / "gpu_check.json", results)
    md = table(results)
    atomic_write_text(out / "gpu_check.md", md)
    print(md)
    print(f"mmpc-rl: results in {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return 1 if any("error" in r for r in results["sections"].values()) else 0
