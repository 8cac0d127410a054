"""RecBench item features, as the authors' Recbench/preprocessing/extract_features_missing.py extracts them, cached
on disk per item keyed by content.

- text: all-MiniLM-L6-v2 (`SentenceTransformer.encode`, batch 512; the model mean-pools and L2-normalises) -> 384-d;
- image: timm `vit_base_patch16_224` `forward_features(x)[:, 0]` (CLS after the final norm) -> 768-d, after
  `Resize((224, 224))` and ImageNet mean/std (that script's, not timm's own 0.5/0.5 config). Items whose image
  cannot be loaded get the mean embedding of the loaded ones.

Both encoders are injectable: a hub id / local path, or an in-process object (a SentenceTransformer, a timm model,
or any callable). The cache lives at `<cache_dir>/<encoder key>/<sha256[:2]>/<sha256>.npy`, where the sha256 is of
the text (utf-8) or of the image file's bytes, so a generated title or image that equals the original is free.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmpc_rl.errors import ModelLoadError
from mmpc_rl.io import atomic_write_bytes
from mmpc_rl.models import (
    DEFAULT_IMAGE_ARCH,
    DEFAULT_SENTENCE_MODEL,
    load_image_encoder,
    load_sentence_model,
    resolve_device,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[-60:] + "-" + hashlib.sha256(text.encode()).hexdigest()[:8]


def _module_key(module: torch.nn.Module) -> str:
    """A key for an in-process model: its class and a hash of its weights (two random tiny models differ)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().float().numpy().tobytes())
    return f"{type(module).__name__}-{h.hexdigest()[:12]}"


class FeatureCache:
    """Per-item vectors in .npy files; a None root keeps nothing on disk."""

    def __init__(self, root: str | Path | None, key: str | None):
        self.dir = Path(root) / key if (root and key) else None

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def get(self, digest: str) -> np.ndarray | None:
        if self.dir is None:
            return None
        path = self._path(digest)
        if not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):  # a torn file from a kill: recompute it
            return None

    def put(self, digest: str, vec: np.ndarray) -> None:
        if self.dir is not None:
            import io

            buf = io.BytesIO()
            np.save(buf, np.asarray(vec, dtype=np.float32), allow_pickle=False)
            atomic_write_bytes(self._path(digest), buf.getvalue())


class TextEncoder:
    def __init__(self, model: str | Callable | None = None, cache_dir: str | Path | None = None,
                 batch_size: int = 512, device: str | None = None, key: str | None = None):
        model = DEFAULT_SENTENCE_MODEL if model is None else model
        if isinstance(model, (str, Path)):
            key = key or _slug(str(model))
            model = load_sentence_model(str(model), device)  # MiniLM falls back to its packaged weights offline
        elif key is None and isinstance(model, torch.nn.Module):
            key = _module_key(model)
        self.model, self.batch_size = model, batch_size
        self.cache = FeatureCache(cache_dir, key and f"text-{key}")

    def _encode(self, texts: list[str]) -> np.ndarray:
        if hasattr(self.model, "encode"):
            out = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        else:
            out = self.model(texts)
        return np.asarray(out, dtype=np.float32)

    def encode(self, texts: Sequence[str], desc: str = "text features") -> np.ndarray:
        texts = ["" if t is None else str(t) for t in texts]
        digests = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        found = {d: v for d in set(digests) if (v := self.cache.get(d)) is not None}
        todo = sorted({d: t for d, t in zip(digests, texts, strict=True) if d not in found}.items())
        for start in tqdm(range(0, len(todo), self.batch_size), desc=desc, disable=len(todo) <= self.batch_size):
            chunk = todo[start:start + self.batch_size]
            vecs = self._encode([t for _, t in chunk])
            for (d, _), v in zip(chunk, vecs, strict=True):
                found[d] = v
                self.cache.put(d, v)
        return np.stack([found[d] for d in digests]) if digests else np.zeros((0, 0), np.float32)


class ImageEncoder:
    def __init__(self, model: str | torch.nn.Module | Callable | None = None, cache_dir: str | Path | None = None,
                 batch_size: int = 32, device: str | None = None, key: str | None = None,
                 arch: str = DEFAULT_IMAGE_ARCH, image_size: int = 224):
        model = DEFAULT_IMAGE_ARCH if model is None else model
        if isinstance(model, (str, Path)):
            key = key or _slug(f"{arch}:{model}")
            model = load_image_encoder(str(model), arch, device)
        elif key is None and isinstance(model, torch.nn.Module):
            key = _module_key(model)
        self.device = resolve_device(device)
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        self.model, self.batch_size, self.image_size = model, batch_size, image_size
        self.cache = FeatureCache(cache_dir, key and f"image-{key}-{image_size}")

    def _preprocess(self, path: str) -> torch.Tensor:
        from PIL import Image
        from torchvision import transforms

        tf = transforms.Compose([transforms.Resize((self.image_size, self.image_size)), transforms.ToTensor(),
                                 transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        with Image.open(path) as im:
            return tf(im.convert("RGB"))

    @torch.no_grad()
    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        x = batch.to(self.device)
        out = self.model.forward_features(x)[:, 0, :] if hasattr(self.model, "forward_features") else self.model(x)
        return out.float().cpu().numpy()

    def encode(self, paths: Sequence[str | None], desc: str = "image features") -> tuple[np.ndarray, np.ndarray]:
        """(features [N, d], loaded mask [N]); rows of unloadable images are the mean of the loaded ones."""
        digests: list[str | None] = []
        for p in paths:
            try:
                digests.append(hashlib.sha256(Path(p).read_bytes()).hexdigest() if p else None)
            except OSError:
                digests.append(None)
        found = {d: v for d in set(digests) - {None} if (v := self.cache.get(d)) is not None}
        todo = sorted({d: p for d, p in zip(digests, paths, strict=True) if d and d not in found}.items())
        bad: set[str] = set()
        for start in tqdm(range(0, len(todo), self.batch_size), desc=desc, disable=len(todo) <= self.batch_size):
            chunk, tensors = [], []
            for d, p in todo[start:start + self.batch_size]:
                try:
                    tensors.append(self._preprocess(p))
                    chunk.append(d)
                except Exception:  # PIL raises many types for truncated/corrupt files: skip and count
                    bad.add(d)
            if tensors:
                for d, v in zip(chunk, self._forward(torch.stack(tensors)), strict=True):
                    found[d] = v
                    self.cache.put(d, v)
        ok = np.array([d is not None and d in found for d in digests], dtype=bool)
        if not ok.any():
            raise ModelLoadError(f"no image could be loaded out of {len(paths)} ({desc})")
        present = np.stack([found[d] for d, k in zip(digests, ok, strict=True) if k])
        mean = present.mean(0)
        feats = np.stack([found[d] if k else mean for d, k in zip(digests, ok, strict=True)]).astype(np.float32)
        return feats, ok
