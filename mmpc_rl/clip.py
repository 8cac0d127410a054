"""CLIP image embeddings, as CQBench's CLIP similarity computes them (openai/CLIP ViT-B/32, image-image cosine).

One embedder serves CQBench's image metric and the `sd35_clip` reward. Preprocessing is openai/CLIP's:
Resize(224, bicubic) on the short side, CenterCrop(224), RGB, the CLIP mean/std. On CUDA the weights default to fp16
(what `clip.load` does there), on the CPU to fp32. Loading lives in mmpc_rl.models (`load_clip_model`).

`name_or_path` forms (none needs network except the last two):
- `tiny://clip`: the tiny random model (tests, demo);
- a folder with `open_clip_config.json` + weights (the layout of e.g. `timm/vit_base_patch32_clip_224.openai`);
- a file: openai's `ViT-B-32.pt` (TorchScript archive from `clip.load`) or a state dict (.safetensors/.bin/.pt),
  loaded into `ViT-B-32-quickgelu` (the openai architecture) or `arch=` if given;
- `ARCH/TAG`, e.g. `ViT-B-32/openai` (open_clip's pretrained tags), or a hub repo id such as
  `timm/vit_base_patch32_clip_224.openai`: both download, so they need the hub cache or network.

Weights trained with QuickGELU load into a QuickGELU network on every route (mmpc_rl.models.vision says how each
route tells): OpenAI's, as the authors' `clip.load("ViT-B/32")` (GAIR-Lab/MMPCBench,
CQBench/benchmark_all_models_bench.py) runs them. open_clip 3.x alone builds `ViT-B-32/openai` with nn.GELU.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from mmpc_rl.models import DEFAULT_CLIP, load_clip_model, placement

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipEmbedder:
    """`embedder(images)` -> (n, d) float32 CPU tensor of L2-normalised CLIP image embeddings."""

    def __init__(self, model: Any, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 batch_size: int = 64):
        self.device = torch.device(device)
        self.dtype = placement("clip", self.device, dtype)[1]
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
        """An embedder around the process-wide CLIP for (model, device, dtype) (mmpc_rl.models' cache): CQBench
        and the reward share one copy."""
        device, dtype = placement("clip", device, dtype)
        return cls(load_clip_model(name_or_path, device, dtype, arch), device, dtype, batch_size)

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
