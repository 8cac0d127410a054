"""Image->text generation throughput, batched vs one item at a time, in one process:

    mmpc-rl eval speed model=tiny://qwen2.5-vl items=16 batch_sizes=[1,8] max_new_tokens=64
    mmpc-rl eval speed shape=7b items=512 batch_sizes=[1,64] max_new_tokens=64    # random 7B-shaped model, GPU

Every item generates exactly max_new_tokens (EOS is suppressed), so figures compare like with like and match the
"titles of <= 64 new tokens" budget. `shape=7b` builds Qwen2.5-VL-7B's architecture with random weights (bf16)
around the tiny processor: no download, and the compute is a real 7B's.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from mmpc_rl.errors import ConfigError


@dataclass
class SpeedConfig:
    model: str = "tiny://qwen2.5-vl"
    shape: str | None = None  # "7b": random Qwen2.5-VL-7B-shaped weights instead of `model`
    items: int = 16
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    max_new_tokens: int = 64
    dtype: str = "bfloat16"
    data: str = "sample"
    output: str | None = None  # a JSON file for the figures


def qwen25_vl_7b_config(vocab_size: int, special: dict[str, int]):
    from transformers import Qwen2_5_VLConfig

    # Qwen2.5-VL-7B-Instruct's published architecture
    rope = {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=max(vocab_size, 152064), hidden_size=3584, intermediate_size=18944,
                         num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                         max_position_embeddings=128000, rope_parameters=rope, tie_word_embeddings=False,
                         eos_token_id=special["<|im_end|>"], pad_token_id=0),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]),
        image_token_id=special["<|image_pad|>"], video_token_id=special["<|video_pad|>"],
        vision_start_token_id=special["<|vision_start|>"], vision_end_token_id=special["<|vision_end|>"])


def load(cfg: SpeedConfig):
    import torch

    from mmpc_rl.config import ModelConfig
    from mmpc_rl.models import load_policy, load_processor

    if cfg.shape is None:
        return load_policy(ModelConfig(name_or_path=cfg.model, dtype=cfg.dtype))
    if cfg.shape != "7b":
        raise ConfigError(f"shape={cfg.shape!r}; valid choices: 7b")
    from transformers import Qwen2_5_VLForConditionalGeneration

    processor = load_processor(ModelConfig(name_or_path="tiny://qwen2.5-vl"))
    tok = processor.tokenizer
    special = {t: tok.convert_tokens_to_ids(t) for t in
               ("<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(qwen25_vl_7b_config(len(tok), special)).to(
            getattr(torch, cfg.dtype))
    return model, processor


def measure(model, processor, items: list[dict], batch_size: int, max_new_tokens: int) -> dict:
    import torch

    from mmpc_rl.eval.generate import generate_batch, length_sorted_batches
    from mmpc_rl.tasks import get_task

    task = get_task("i2t")
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # every item generates the full budget
    try:
        generate_batch(model, processor, task, items[:batch_size], max_new_tokens=2)  # warm-up
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for batch in length_sorted_batches(task, items, batch_size):
            generate_batch(model, processor, task, batch, max_new_tokens=max_new_tokens)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    finally:
        model.generation_config.eos_token_id = eos
    return {"batch_size": batch_size, "items": len(items), "seconds": seconds,
            "items_per_minute": round(60 * len(items) / seconds, 1)}


def main(argv: list[str]) -> int:
    import platform

    import torch

    from mmpc_rl.config import parse_options
    from mmpc_rl.data import load_items
    from mmpc_rl.io import atomic_write_json

    cfg = parse_options(SpeedConfig, argv, "mmpc-rl eval speed", noun="option")
    pool = load_items(cfg.data, split="cqbench")
    if not pool:
        raise ConfigError(f"no items in {cfg.data}")
    items = [pool[i % len(pool)] for i in range(cfg.items)]
    model, processor = load(cfg)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or 'cpu'},"\
        f" {torch.get_num_threads()} threads)"
    rows = [measure(model, processor, items, bs, cfg.max_new_tokens) for bs in cfg.batch_sizes]
    for r in rows:
        print(f"batch {r['batch_size']:>4}: {r['items']} items in {r['seconds']:.1f} s = "
              f"{r['items_per_minute']:.1f} items/min ({cfg.max_new_tokens} new tokens each) on {device}")
    if cfg.output:
        atomic_write_json(cfg.output, {"config": dataclasses.asdict(cfg), "device": device, "results": rows})
    return 0
