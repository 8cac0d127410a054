"""SD3.5-large render speed and memory inside the text->image reward, at the real shape with random weights: the GPU
check's `t2i` section (mmpc_rl.bench.gpu_check)."""

from __future__ import annotations

import time

from mmpc_rl.clip import ClipEmbedder
from mmpc_rl.models import load_sd3_pipeline
from mmpc_rl.render import Renderer
from mmpc_rl.rewards.sd35_clip import SD35ClipReward, memory
from mmpc_rl.tasks import get_task


def sd35_pipeline(dry: bool, device: str):
    """SD3.5-large's transformer and VAE (random, built in bf16 on the device), the tiny tokenizers, text encoders
    at the real output widths with one layer each (prompt encoding is cached and small beside 4-step denoising)."""
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    tiny = load_sd3_pipeline("tiny://sd3", "cpu", "float32")
    if dry:
        return tiny
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # no fp32 copy of 8 B parameters first
    try:
        with torch.device(device):
            transformer = SD3Transformer2DModel(
                sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
            vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                                down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                                block_out_channels=[128, 256, 512, 512], layers_per_block=2, scaling_factor=1.5305,
                                shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)

            def clip(width: int):
                return CLIPTextModelWithProjection(CLIPTextConfig(
                    hidden_size=width, intermediate_size=4 * width, num_attention_heads=width // 64,
                    num_hidden_layers=1, vocab_size=1000, projection_dim=width, bos_token_id=0, eos_token_id=1,
                    pad_token_id=1))

            t5 = T5EncoderModel(T5Config(vocab_size=128, d_model=4096, d_kv=64, d_ff=10240, num_layers=1,
                                         num_heads=64, pad_token_id=0, eos_token_id=1))
            return StableDiffusion3Pipeline(transformer=transformer, vae=vae, scheduler=tiny.scheduler,
                                            text_encoder=clip(768), tokenizer=tiny.tokenizer,
                                            text_encoder_2=clip(1280), tokenizer_2=tiny.tokenizer_2,
                                            text_encoder_3=t5, tokenizer_3=tiny.tokenizer_3)
    finally:
        torch.set_default_dtype(default)


def reward_group(sizes: list[int], *, dry: bool, device: str) -> dict:
    """One reward group per size: 16 distinct completions (the worst case for the dedupe) x 4 images, after a
    warm-up of one completion; the render's transient memory beside the SD3.5 estimate the planner uses."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    renderer = Renderer(sd35_pipeline(dry, device), device)
    embedder = ClipEmbedder.from_pretrained("tiny://clip", device=device)
    n = 16 if not dry else 4
    real = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    columns = {"reference_image": [real] * n, "parent_asin": ["B000000001"] * n}

    def group(tag: str, k: int = n) -> list[str]:
        return [json.dumps({"prompt": f"{tag} product photo {i}: a steel water bottle on a white table"})
                for i in range(k)]

    out = {}
    for side in sizes:
        reward = SD35ClipReward(get_task("t2i"), renderer, embedder, height=side, width=side)
        reward(completions=group("warm-up", 1), **{k: v[:1] for k, v in columns.items()})  # kernels, allocator
        sync(device)
        resident = torch.cuda.memory_allocated() if device == "cuda" else 0
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        scores = reward(completions=group("measured"), **columns)
        sync(device)
        seconds = time.perf_counter() - t0
        renders = len(reward.last["unique"])  # after the dedupe
        planned = memory({"size": side, "max_sequence_length": 512, "text_cache_size": renderer.text_cache_size,
                          "max_batch": renderer.max_batch, "decode_batch": renderer.decode_batch, "device": None,
                          "clip_device": None})[0].transient_gb
        measured = (torch.cuda.max_memory_allocated() - resident) / 2**30 if device == "cuda" else None
        out[f"{side}px"] = {"completions": n, "renders": renders, "group_s": round(seconds, 3),
                            "s_per_image": round(seconds / renders, 4), "scored": sum(s is not None for s in scores),
                            "transient_gb": None if measured is None else round(measured, 2),
                            "planned_transient_gb": round(planned, 2)}
    return out


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
