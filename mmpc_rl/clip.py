"""CLIP image embeddings, as CQBench's CLIP similarity computes them (openai/CLIP ViT-B/32, image-image cosine).

One embedder serves CQBench's image metric and the `sd35_clip` reward. Preprocessing is openai/CLIP's:
Resize(224, bicubic) on the short side, CenterCrop(224), RGB, the CLIP mean/std. On CUDA the weights default to fp16
(what `clip.load` does there), on the CPU to fp32.

`name_or_path` forms (none needs network except the last two):
- `tiny://clip`: the tiny random model (tests, demo);
- a folder with `open_clip_config.json` + weights (the layout of e.g. `timm/vit_base_patch32_clip_224.openai`);
- a file: openai's `ViT-B-32.pt` (TorchScript archive from `clip.load`) or a state dict (.safetensors/.bin/.pt),
  loaded into `ViT-B-32-quickgelu` (the openai architecture) or `arch=` if given;
- `ARCH/TAG`, e.g. `ViT-B-32/openai` (open_clip's pretrained tags), or a hub repo id such as
  `timm/vit_base_patch32_clip_224.openai`: both download, so they need the hub cache or network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mmpc_rl.errors import ModelLoadError
from mmpc_rl.zero3 import whole_weights

DEFAULT_CLIP = "ViT-B-32/openai"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _load_file(path: Path, arch: str) -> Any:
    import open_clip

    model = open_clip.create_model(arch, pretrained=None)
    try:  # openai's own checkpoints are TorchScript archives, which torch.load(weights_only=True) refuses
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    except RuntimeError:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    for key in ("input_resolution", "context_length", "vocab_size"):  # JIT archive metadata, not parameters
        state.pop(key, None)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model


def load_open_clip(name_or_path: str, arch: str | None = None) -> Any:
    """The open_clip model for any of the forms above, or a one-line ModelLoadError."""
    import open_clip

    from mmpc_rl import tiny

    source = tiny.resolve(name_or_path)
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise ModelLoadError(f"CLIP folder {path} has no open_clip_config.json (expected the open_clip hub "
                                     "layout: open_clip_config.json + open_clip_model.safetensors)")
            return open_clip.create_model(f"local-dir:{path}")
        if path.is_file():
            return _load_file(path, arch or "ViT-B-32-quickgelu")
        if source.startswith(("/", ".", "~")):
            raise ModelLoadError(f"CLIP checkpoint {source} does not exist")
        if "/" in source and source.split("/", 1)[0] in open_clip.list_models():
            model_name, tag = source.split("/", 1)
            return open_clip.create_model(model_name, pretrained=tag)
        return open_clip.create_model(source if source.startswith("hf-hub:") else f"hf-hub:{source}")
    except ModelLoadError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError with multi-line hub details
        hint = " (no network here: pass a local folder or file, or tiny://clip)" if not path.exists() else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load CLIP {name_or_path!r}: {first}{hint}") from None


class ClipEmbedder:
    """`embedder(images)` -> (n, d) float32 CPU tensor of L2-normalised CLIP image embeddings."""

    def __init__(self, model: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 batch_size: int = 64):
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.model = model.to(self.device, self.dtype).eval()
        size = getattr(model.visual, "image_size", 224)
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.batch_size = batch_size
        self.mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_CLIP, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, arch: str | None = None,
                        batch_size: int = 64) -> ClipEmbedder:
        device, dtype = _resolve_placement(device, dtype)
        return cls(load_open_clip(name_or_path, arch), device, dtype, batch_size)

    def preprocess(self, image: Any) -> torch.Tensor:
        """openai/CLIP's transform for one PIL image: (3, S, S) normalised float32."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        image = TF.resize(image, self.size, interpolation=InterpolationMode.BICUBIC)
        image = TF.center_crop(image, [self.size, self.size])
        x = TF.to_tensor(image.convert("RGB"))
        return (x - self.mean[0]) / self.std[0]

    @torch.inference_mode()
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        feats = self.model.encode_image(pixels.to(self.device, self.dtype)).float()
        return F.normalize(feats, dim=-1).cpu()

    def embed(self, images: list) -> torch.Tensor:
        """PIL images (or paths) -> (n, d) float32 CPU, L2-normalised."""
        from PIL import Image

        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            chunk = [Image.open(im) if isinstance(im, (str, os.PathLike)) else im for im in chunk]
            out.append(self._encode(torch.stack([self.preprocess(im) for im in chunk])))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    __call__ = embed

    def embed_tensors(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) RGB in [0, 1], on any device -> embeddings; the same transform done with torch ops on the
        tensors' device, which skips the PIL round trip for renders still on the GPU (differs from the PIL path
        only by resampling round-off)."""
        out = []
        for start in range(0, len(pixels), self.batch_size):
            x = pixels[start:start + self.batch_size].float()
            h, w = x.shape[-2:]
            scale = self.size / min(h, w)
            new = (max(self.size, round(h * scale)), max(self.size, round(w * scale)))
            x = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            top, left = (new[0] - self.size) // 2, (new[1] - self.size) // 2
            x = x[..., top:top + self.size, left:left + self.size]
            x = (x - self.mean.to(x.device)) / self.std.to(x.device)
            out.append(self._encode(x))
        return torch.cat(out) if out else torch.empty(0, self.embed_dim)

    @property
    def embed_dim(self) -> int:
        return int(self.model.visual.output_dim)


def _resolve_placement(device, dtype) -> tuple[torch.device, torch.dtype]:
    """Device (CUDA when present) and dtype (fp16 on CUDA, fp32 on CPU, as openai/CLIP) that None stands for."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return device, dtype or (torch.float16 if device.type == "cuda" else torch.float32)


_CACHE: dict[tuple, ClipEmbedder] = {}


def load_embedder(name_or_path: str = DEFAULT_CLIP, device: str | None = None,
                  dtype: str | None = None) -> ClipEmbedder:
    """A process-wide embedder per (model, device, dtype): CQBench and the reward share one copy. The key holds the
    resolved placement, so `device=None` and the device it means find the same embedder."""
    key = (str(name_or_path), *map(str, _resolve_placement(device, dtype)))
    if key not in _CACHE:
        with whole_weights():  # a frozen scorer: never sharded by ZeRO-3's zero.Init
            _CACHE[key] = ClipEmbedder.from_pretrained(name_or_path, device=device, dtype=dtype)
    return _CACHE[key]
