"""The vision-language policy and its processor (AutoModelForImageTextToText + AutoProcessor).

Not cached: the policy is trained, so every caller gets its own copy (see cache.py). transformers' auto classes
are imported inside the loaders: they pull in ~4 s of modules (image processors, torchvision) that every importer
of mmpc_rl.models (the rewards registry, the CLI's config checks) would otherwise pay.
"""

from __future__ import annotations

import torch

from mmpc_rl.errors import ModelLoadError
from mmpc_rl.models.hub import config_errors, resolve_model_path, unreadable_config
from mmpc_rl.models.placement import policy_dtype, torch_dtype


def bnb_config(compute_dtype: str = "bfloat16"):
    """4-bit NF4 with double quantisation, as the authors' inference `load_model`
    (CQBench/imagine_amazon_data_bench.py); compute in `compute_dtype` (theirs: float16 for Qwen, bfloat16 for Gemma;
    "auto" here is bfloat16)."""
    try:
        import bitsandbytes  # noqa: F401 - optional extra: only QLoRA needs it
    except ImportError:
        raise ModelLoadError("model.qlora=true needs bitsandbytes: pip install 'mmpc-rl[qlora]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch_dtype(compute_dtype if compute_dtype != "auto" else
                                                                 "bfloat16"))


def load_processor(model_cfg, path: str | None = None):
    from transformers import AutoProcessor

    path = path or resolve_model_path(model_cfg.name_or_path, revision=model_cfg.revision)
    kwargs = {"padding_side": "left", "trust_remote_code": model_cfg.trust_remote_code}
    bounds = {k: v for k, v in (("shortest_edge", model_cfg.min_pixels), ("longest_edge", model_cfg.max_pixels)) if v}
    try:
        processor = AutoProcessor.from_pretrained(path, **kwargs)
        if bounds and not set_pixel_bounds(processor, bounds):  # a processor without Qwen-VL's pixel budget
            processor = AutoProcessor.from_pretrained(path, **kwargs, min_pixels=model_cfg.min_pixels,
                                                      max_pixels=model_cfg.max_pixels)
    except (*config_errors(), ImportError) as e:
        raise ModelLoadError(f"cannot load the processor from {path}: {' '.join(str(e).split())}") from None
    return processor


def set_pixel_bounds(processor, bounds: dict[str, int]) -> bool:
    """Qwen-VL's pixel budget set on the image processor itself. Given to from_pretrained, min_pixels/max_pixels
    would also be kept as arguments of every processor call, which transformers 5 warns about once per call and
    means to drop (the bounds would then be lost in silence)."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    fields = dict(size) if size is not None else {}  # a dict or transformers' SizeDict
    if not bounds.keys() <= fields.keys():
        return False
    image_processor.size = type(size)(**{**{k: v for k, v in fields.items() if v is not None}, **bounds})
    return True


def model_init_kwargs(model_cfg, *, cpu: bool = False) -> dict:
    kwargs = {"dtype": policy_dtype(model_cfg.dtype, cpu=cpu, qlora=bool(model_cfg.qlora)),
              "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if model_cfg.qlora:
        kwargs["quantization_config"] = bnb_config(model_cfg.dtype)
    return kwargs


def load_policy(model_cfg, *, cpu: bool | None = None, device_map=None, max_memory: dict | None = None):
    """(model, processor) for a vision-language policy: AutoModelForImageTextToText + AutoProcessor.
    `max_memory` (bytes per GPU index) bounds a `device_map="auto"` split over several GPUs."""
    from transformers import AutoModelForImageTextToText

    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    path = resolve_model_path(model_cfg.name_or_path, revision=model_cfg.revision)
    kwargs = model_init_kwargs(model_cfg, cpu=cpu)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except ValueError as e:
        raise ModelLoadError(f"{model_cfg.name_or_path} is not an image-text-to-text model: {e}") from None
    except OSError as e:
        raise ModelLoadError(f"cannot load the model from {path}: {e}") from None
    except config_errors() as e:
        raise unreadable_config(e, path) from None
    return model, load_processor(model_cfg, path)
