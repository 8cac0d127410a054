"""Bytes saved for backward per token, counted tensor by tensor for one transformers Qwen2 / Qwen2.5-VL decoder layer
with PEFT LoRA under bf16 autocast and frozen base weights. tests/test_plan.py measures the same quantity with
`saved_tensors_hooks` at real width and checks this count against it; docs/memory.md lists every term.

Why each term is there (frozen base weights mean a base nn.Linear saves only its weight, so the norm outputs are not
kept by the base path; autograd saves only what the gradient of a grad-requiring input needs):
- RMSNorm (x2): the fp32 upcast of its input (pow and mul need it) and the fp32 rsqrt per token.
- each adapted linear with input width d: with dropout, the dropout mask (bool on CUDA's fused kernel, the input's
  own dtype on CPU, where dropout is `x * noise`) and the bf16 copy autocast feeds lora_A; without dropout only that
  bf16 copy, and none at all when the adapter is already bf16 (QLoRA as TRL casts it), where the input is shared;
  plus lora_A's r-wide output.
- attention (sdpa): q, k, v, the output and the fp32 log-sum-exp per head. With a padding mask, CUDA's sdpa has no
  GQA path, so transformers repeats k and v to all heads first and those copies are what is saved (the CPU too).
- MLP: gate output (for SiLU), SiLU output and up output (for the product), all bf16.
"""

from __future__ import annotations

BF16 = 2


def mask_bytes(device: str, adapter_bytes: int) -> int:
    # torch's fused dropout (CUDA/XPU) keeps a bool mask; elsewhere dropout is `x * noise` and noise has x's dtype,
    # which is the adapter's dtype because PEFT casts the input to it first.
    return 1 if device == "cuda" else adapter_bytes


def adapter_bytes(dims: dict[str, int], r: int, dropout: float, adapter_dtype_bytes: int, device: str) -> int:
    """Per token, everything the LoRA branches of one layer save."""
    total = 0
    shared = set()  # bf16 adapters without dropout save the (shared) input itself once per distinct input
    for name, d in dims.items():
        total += BF16 * r  # lora_A output, saved by lora_B
        if dropout > 0:
            total += mask_bytes(device, adapter_dtype_bytes) * d + BF16 * d
        elif adapter_dtype_bytes != BF16:
            total += BF16 * d  # each adapter casts its own fp32 copy down to bf16 for lora_A
        else:
            source = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "gate_proj": "mlp_in",
                      "up_proj": "mlp_in"}.get(name, name)
            if source not in shared:
                shared.add(source)
                total += BF16 * d
    return total


def layer_bytes_per_token(shape, dims: dict[str, int], *, r: int, dropout: float, adapter_dtype_bytes: int = 4,
                          device: str = "cuda", padded: bool = True) -> int:
    """Bytes one decoder layer saves for backward, per token, with checkpointing off."""
    h, i = shape.hidden, shape.intermediate
    norms = 2 * (4 * h + 4)
    # transformers.integrations.sdpa_attention.use_gqa_in_sdpa: no GQA with a mask on CUDA (and on CPU)
    kv_saved = shape.q_dim if (padded and shape.kv_heads != shape.heads) else shape.kv_dim
    attention = BF16 * shape.q_dim * 2 + BF16 * kv_saved * 2 + 4 * shape.heads
    mlp = 3 * BF16 * i
    return norms + attention + mlp + adapter_bytes(dims, r, dropout, adapter_dtype_bytes, device)


def backward_bytes_per_token(shape, *, dropout: float, adapter_dtype_bytes: int) -> int:
    """Gradients alive at once inside one layer's backward, at its widest point (down_proj): the base path's input
    gradient, the LoRA branch's gradient in the adapter dtype and, with dropout, its masked copy; plus the residual
    stream's incoming and outgoing gradients. An analytic estimate: the saved-tensor hooks cannot see it."""
    i, h = shape.intermediate, shape.hidden
    return i * (BF16 + adapter_dtype_bytes + (adapter_dtype_bytes if dropout > 0 else 0)) + 2 * BF16 * h


def checkpoint_bytes_per_token(shape, residual_bytes: int = BF16) -> int:
    """What gradient checkpointing keeps per layer: the layer's input (rotary tables and mask are shared). The
    residual stream is bf16, or fp32 when prepare_model_for_kbit_training has upcast the embeddings."""
    return residual_bytes * shape.hidden
