"""Device and dtype rules for every model kind, in one place: what `device=None` and `dtype=None`/"auto" mean.

- device None: CUDA when present, else CPU; except BERTScore and LPIPS, which default to the CPU (LPIPS is fed CPU
  tensors by `LpipsMetric`; BERTScore stays off the GPU the policy trains on, and a caller passes `device=` to move
  it; the memory planner counts it there).
- dtype None/"auto": SD3.5 bf16 on CUDA (its released weights; the VAE and T5 overflow in fp16), CLIP fp16 on CUDA
  (what openai's `clip.load` does there), everything else fp32; every kind is fp32 on the CPU, which lacks fast
  half-precision kernels.
- the policy: the recipe's `model.dtype`, fp32 on the CPU, bf16 compute under QLoRA (NF4 cannot hold fp32).
"""

from __future__ import annotations

import torch

from mmpc_rl.errors import ConfigError

KINDS = ("sd3", "clip", "sentence", "bertscore", "lpips", "timm")
_CUDA_DTYPE = {"sd3": torch.bfloat16, "clip": torch.float16}
_CPU_DEVICE_KINDS = ("bertscore", "lpips")
_NAMES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_device(device: str | torch.device | None = None, kind: str | None = None) -> torch.device:
    if device is not None and str(device) != "auto":
        try:
            return torch.device(device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if kind in _CPU_DEVICE_KINDS:
        return torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device, kind: str | None = None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return _CUDA_DTYPE.get(kind, torch.float32) if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype).removeprefix("torch.") not in _NAMES:
        raise ConfigError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
    return _NAMES[str(dtype).removeprefix("torch.")]


def placement(kind: str, device=None, dtype=None) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) that the arguments mean for a model of `kind`."""
    dev = resolve_device(device, kind)
    return dev, resolve_dtype(dtype, dev, kind)


def torch_dtype(name: str):
    """A recipe's dtype name -> torch dtype; "auto" stays "auto" (transformers then reads the checkpoint's)."""
    return "auto" if name == "auto" else resolve_dtype(name, torch.device("cpu"))


def policy_dtype(name: str, *, cpu: bool, qlora: bool = False):
    if qlora:
        return torch_dtype(name if name != "float32" else "bfloat16")
    return torch_dtype("float32" if cpu and name != "float32" else name)
