"""Where CQBench puts a frozen model: one copy per process, one process sharded over the node's GPUs, or 4-bit.

The paper's six-model run includes Qwen2.5-VL-72B (~147 GB of bf16 weights), which fits no single GPU, so one full
copy per rank cannot finish. `plan_placement` takes the model's shape from the planner's one reader
(mmpc_rl.plan.shapes: parameters counted on the meta device, the Qwen2.5-VL-7B/72B shapes built in so no download is
needed to plan), adds the eval batch's KV cache and activations, and picks, in this order:

1. `per_rank`: weights + batch fit this process's GPU -> the whole model on cuda:<local_rank>;
2. `sharded`: one process and 2+ GPUs whose free memory holds it together -> `device_map="auto"` with a
   `max_memory` budget per GPU that leaves room for that GPU's share of the batch;
3. `4bit`: NF4 weights (the authors' loading) fit this process's GPU -> load 4-bit there;
4. otherwise a ModelLoadError that says how much is needed and what is visible.

On a machine without GPUs nothing is planned (`cpu`: no device_map). Tests fake `devices()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mmpc_rl.errors import ModelLoadError
from mmpc_rl.plan.memory import GIB, NF4_BYTES
from mmpc_rl.plan.shapes import ModelShape, model_shape

RESERVE_BYTES = 2 * GIB  # CUDA context + allocator slack per GPU
PATCH = 28  # Qwen2.5-VL: 14-px patches merged 2x2 -> one token per 28x28 pixels
DEFAULT_IMAGE_PIXELS = 1024 * PATCH * PATCH  # an upper estimate for catalog photos when max_pixels is unset
TEXT_PROMPT_TOKENS = 256


@dataclass(frozen=True)
class Device:
    index: int
    free_bytes: int
    total_bytes: int


def devices() -> list[Device]:
    """The GPUs this process sees, with their free memory now."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [Device(i, *torch.cuda.mem_get_info(i)) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class Placement:
    mode: str  # cpu | per_rank | sharded | 4bit
    device_map: dict | str | None = None
    max_memory: dict | None = None
    qlora: bool = False
    note: str = ""
    need: dict = field(default_factory=dict)


def batch_bytes(shape: ModelShape, *, batch_size: int, prompt_tokens: int, max_new_tokens: int,
                dtype_bytes: int = 2) -> tuple[int, int]:
    """(KV cache, activations) of one generate call: K and V for every layer and token, and one layer's live
    tensors at prefill (the widest: the MLP) plus a float32 logits row per sequence."""
    tokens = batch_size * (prompt_tokens + max_new_tokens)
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype_bytes * tokens
    act = batch_size * prompt_tokens * (4 * shape.hidden + 3 * shape.intermediate) * dtype_bytes
    return kv, act + batch_size * shape.vocab * 4


def prompt_tokens(max_pixels: int | None) -> int:
    return (max_pixels or DEFAULT_IMAGE_PIXELS) // (PATCH * PATCH) + TEXT_PROMPT_TOKENS


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def plan_placement(name_or_path: str, *, dtype: str = "bfloat16", qlora: bool = False, batch_size: int = 16,
                   max_new_tokens: int = 256, max_pixels: int | None = None, world_size: int | None = None,
                   local_rank: int | None = None, shape: ModelShape | None = None) -> Placement:
    gpus = devices()
    if not gpus:
        return Placement("cpu", note="no GPU: the model loads on the CPU")
    world = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    rank = int(os.environ.get("LOCAL_RANK", 0)) if local_rank is None else local_rank
    if rank >= len(gpus):
        raise ModelLoadError(f"process {rank} of {world} has no GPU: {len(gpus)} visible")
    shape = shape or model_shape(name_or_path, fetch=True)
    dtype_bytes = 4 if dtype == "float32" else 2
    full = shape.total_params * dtype_bytes
    nf4 = int(shape.linear_params * NF4_BYTES + (shape.total_params - shape.linear_params) * 2)
    kv, act = batch_bytes(shape, batch_size=batch_size, prompt_tokens=prompt_tokens(max_pixels),
                          max_new_tokens=max_new_tokens)
    need = {"weights": full, "weights_4bit": nf4, "kv_cache": kv, "activations": act}
    mine = gpus[rank]
    room = mine.free_bytes - RESERVE_BYTES - kv - act
    if not qlora and full <= room:
        return Placement("per_rank", {"": f"cuda:{rank}"}, note=f"{_gib(full)} of weights on cuda:{rank}", need=need)
    shardable = not qlora and world == 1 and len(gpus) >= 2
    if shardable and (max_memory := shard_budget(gpus, shape, full, kv, act)):
        return Placement("sharded", "auto", max_memory, note=f"{_gib(full)} of weights over {len(gpus)} GPUs",
                         need=need)
    if nf4 <= room:
        why = "model.qlora" if qlora else f"{_gib(full)} bf16 fits no placement"
        if shardable and shard_budget(gpus, shape, full, kv // batch_size, act // batch_size):
            why += f" (a batch_size below {batch_size} would shard it in {dtype} over {len(gpus)} GPUs)"
        return Placement("4bit", {"": f"cuda:{rank}"}, qlora=True, need=need,
                         note=f"4-bit NF4 ({_gib(nf4)}) on cuda:{rank}: {why}; scores are of the 4-bit model")
    free = ", ".join(f"cuda:{g.index} {_gib(g.free_bytes)}" for g in gpus)
    hint = (f"run CQBench as one process (not {world} under accelerate/torchrun) to shard over the GPUs, "
            if world > 1 and not qlora else "")
    raise ModelLoadError(
        f"{name_or_path} does not fit: {_gib(full)} of weights ({_gib(nf4)} in 4-bit) + {_gib(kv + act)} for a "
        f"batch of {batch_size}, free: {free}; {hint}use more GPUs or a smaller batch_size")


def shard_budget(gpus: list[Device], shape: ModelShape, full: int, kv: int, act: int) -> dict | None:
    """max_memory per GPU for a device_map="auto" split, or None when the GPUs cannot hold the model together.
    Each GPU keeps room for its share of the KV cache (it lives beside its layers) and the full activations."""
    budget = {g.index: max(g.free_bytes - RESERVE_BYTES - kv // len(gpus) - act, 0) for g in gpus}
    # accelerate packs whole modules: each GPU may end up to a decoder layer short, and the first GPU keeps room for
    # the largest module (the embedding)
    embed = shape.vocab * shape.hidden * (full // shape.total_params)
    slack = embed + len(gpus) * (full - 2 * embed) // shape.layers
    return budget if sum(budget.values()) >= full + slack else None
