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

from mmpc_rl.checks import at_least, one_of
from mmpc_rl.config import ModelConfig
from mmpc_rl.data import load_items
from mmpc_rl.errors import ConfigError
from mmpc_rl.eval.generate import generate_batch, length_sorted_batches
from mmpc_rl.io import atomic_write_json
from mmpc_rl.models import build_qwen25_vl_7b, load_policy, load_processor, resolve_device, resolve_dtype
from mmpc_rl.options import parse_options
from mmpc_rl.tasks import get_task


@dataclass
class SpeedConfig:
    """Image->text generation throughput, batched vs one item at a time; every item generates max_new_tokens."""

    model: str = "tiny://qwen2.5-vl"
    # "7b": random Qwen2.5-VL-7B-shaped weights instead of `model`
    shape: str | None = field(default=None, metadata=one_of("7b"))
    items: int = field(default=16, metadata=at_least(1))
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8], metadata=at_least(1))
    max_new_tokens: int = field(default=64, metadata=at_least(1))
    dtype: str = "bfloat16"  # auto | bfloat16 | float16 | float32
    data: str = "sample"
    output: str | None = None  # a JSON file for the figures


def load(cfg: SpeedConfig):


    if cfg.shape is None:
        return load_policy(ModelConfig(name_or_path=cfg.model, dtype=cfg.dtype))
    if cfg.shape != "7b":
        raise ConfigError(f"shape={cfg.shape!r}; valid choices: 7b")
    processor = load_processor(ModelConfig(name_or_path="tiny://qwen2.5-vl"))
    device = resolve_device()
    model = build_qwen25_vl_7b(processor.tokenizer, device=str(device), dtype=resolve_dtype(cfg.dtype, device))
    return model, processor


def measure(model, processor, items: list[dict], batch_size: int, max_new_tokens: int) -> dict:
    import torch

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

    cfg = parse_options(SpeedConfig, argv, "mmpc-rl eval speed")
    if not cfg.batch_sizes:
        raise ConfigError("batch_sizes=[] measures nothing: give at least one batch size")
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
