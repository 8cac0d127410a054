"""Text -> image with Stable Diffusion 3.5 (large-turbo by default), one module for CQBench and the `sd35_clip` reward.

Every image has its own explicit seed: its starting noise comes from a CPU `torch.Generator` seeded with it, so the
noise of an image depends only on its seed, never on its batch or device (renders of one prompt and seed in different
batches differ only by float round-off, at most 1/255 per pixel on CPU). Text encodings (two CLIP encoders + T5) are
computed once per unique prompt and kept in an LRU cache; renders go through the pipeline in batches of `max_batch`
with the precomputed embeddings, and the VAE decodes in chunks of `decode_batch` because at 1024 px the decoder, not
the transformer, sets the peak memory.

Settings default to the authors' (`Recbench/generate_images_from_prompts.py`): 4 steps, guidance 0, T5 length 512,
1024 x 1024.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmpc_rl.errors import ConfigError, ModelLoadError
from mmpc_rl.zero3 import whole_weights

DEFAULT_SD = "stabilityai/stable-diffusion-3.5-large-turbo"


def _dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ConfigError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
        return getattr(torch, dtype)
    return dtype


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_pipeline(name_or_path: str, dtype: torch.dtype) -> Any:
    """StableDiffusion3Pipeline from `tiny://sd3`, a local folder (model_index.json) or a hub id (cache or network)."""
    from diffusers import StableDiffusion3Pipeline

    from mmpc_rl import tiny

    source = tiny.resolve(name_or_path)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return _from_pretrained(StableDiffusion3Pipeline, str(path), dtype, name_or_path)
    if source.startswith(("/", ".", "~")):
        raise ModelLoadError(f"diffusion model folder {source} does not exist")
    # A hub id: the local HF cache first; a download only when the hub answers (diffusers then fetches just the
    # diffusers-format files, not the repo's duplicate single-file checkpoint).
    try:
        return StableDiffusion3Pipeline.from_pretrained(source, dtype=dtype, local_files_only=True)
    except Exception:  # noqa: BLE001 - anything missing from the cache means "not cached"
        pass
    from mmpc_rl.models import _hub_reachable

    if not _hub_reachable():
        raise ModelLoadError(f"no network: diffusion model {source!r} is not in the local Hugging Face cache and the "
                             "hub cannot be reached; pass a local folder (e.g. rewards.sd35_clip.model=/models/sd35)")
    return _from_pretrained(StableDiffusion3Pipeline, source, dtype, name_or_path)


def _from_pretrained(cls: Any, source: str, dtype: torch.dtype, name: str) -> Any:
    try:
        return cls.from_pretrained(source, dtype=dtype)
    except Exception as e:  # hub errors arrive as long multi-line messages from several libraries
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = " (SD3.5 is gated: accept its licence on the hub and log in)" if "gated" in str(e).lower() else ""
        raise ModelLoadError(f"cannot load diffusion pipeline {name!r}: {first}{hint}") from None


class Renderer:
    """`Renderer.from_pretrained(name_or_path, device, dtype).render(prompts, seeds)` -> list of PIL images."""

    def __init__(self, pipe: Any, device: str | torch.device = "cpu", text_cache_size: int = 256,
                 max_batch: int = 16, decode_batch: int = 4):
        self.device = torch.device(device)
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.dtype = pipe.transformer.dtype
        self.text_cache_size = text_cache_size
        self.max_batch = max(1, int(max_batch))
        self.decode_batch = max(1, int(decode_batch))
        self._cache: OrderedDict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        # Counters the reward logs and the tests check: transformer batches run, prompts text-encoded, images made.
        self.pipeline_calls = 0
        self.prompts_encoded = 0
        self.images_rendered = 0
        self.last_seconds = 0.0

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_SD, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, **kwargs: Any) -> Renderer:
        device = _device(device)
        return cls(load_pipeline(name_or_path, _dtype(dtype, device)), device, **kwargs)

    # ------------------------------------------------------------------------------------------ text encoding
    @torch.inference_mode()
    def encode(self, prompts: Sequence[str], max_sequence_length: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, pooled_prompt_embeds) for `prompts`, encoding only those not in the cache."""
        missing = list(dict.fromkeys(p for p in prompts if (p, max_sequence_length) not in self._cache))
        if missing:
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt=missing, prompt_2=None, prompt_3=None, device=self.device, num_images_per_prompt=1,
                do_classifier_free_guidance=False, max_sequence_length=max_sequence_length)
            self.prompts_encoded += len(missing)
            for i, p in enumerate(missing):
                self._cache[(p, max_sequence_length)] = (embeds[i:i + 1], pooled[i:i + 1])
        rows = []
        for p in prompts:
            self._cache.move_to_end((p, max_sequence_length))
            rows.append(self._cache[(p, max_sequence_length)])
        out = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
        while len(self._cache) > max(self.text_cache_size, len(set(prompts))):
            self._cache.popitem(last=False)
        return out

    # ------------------------------------------------------------------------------------------------ render
    @torch.inference_mode()
    def render(self, prompts: Sequence[str], seeds: Sequence[int], height: int = 1024, width: int = 1024,
               num_inference_steps: int = 4, guidance_scale: float = 0.0, max_sequence_length: int = 512,
               output_type: str = "pil", progress: bool = False) -> list | torch.Tensor:
        """One image per (prompt, seed) pair. output_type "pil" -> list of PIL images; "pt" -> (n, 3, H, W) float
        tensor in [0, 1] on the renderer's device (for CLIP on the same GPU without a PIL round trip)."""
        if len(prompts) != len(seeds):
            raise ConfigError(f"render: {len(prompts)} prompts but {len(seeds)} seeds")
        if output_type not in ("pil", "pt"):
            raise ConfigError(f"render: output_type must be 'pil' or 'pt', got {output_type!r}")
        start = time.perf_counter()
        cfg = guidance_scale > 1.0  # SD3's own rule for classifier-free guidance
        chunks = range(0, len(prompts), self.max_batch)
        if progress and len(chunks) > 1:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="render", unit="batch")
        outputs: list = []
        for lo in chunks:
            batch_prompts, batch_seeds = list(prompts[lo:lo + self.max_batch]), list(seeds[lo:lo + self.max_batch])
            embeds, pooled = self.encode(batch_prompts, max_sequence_length)
            extra: dict[str, Any] = {}
            if cfg:
                neg, neg_pooled = self.encode([""] * len(batch_prompts), max_sequence_length)
                extra = {"negative_prompt_embeds": neg, "negative_pooled_prompt_embeds": neg_pooled}
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in batch_seeds]
            latents = self.pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, generator=generators,
                                height=height, width=width, num_inference_steps=num_inference_steps,
                                guidance_scale=guidance_scale, output_type="latent", **extra).images
            self.pipeline_calls += 1
            outputs.extend(self._decode(latents, output_type))
        self.images_rendered += len(prompts)
        self.last_seconds = time.perf_counter() - start
        if output_type == "pt":
            return torch.stack(outputs) if outputs else torch.empty(0, 3, height, width)
        return outputs

    def _decode(self, latents: torch.Tensor, output_type: str) -> list:
        vae = self.pipe.vae
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        out: list = []
        for lo in range(0, len(latents), self.decode_batch):
            image = vae.decode(latents[lo:lo + self.decode_batch].to(vae.dtype), return_dict=False)[0]
            if output_type == "pil":
                out.extend(self.pipe.image_processor.postprocess(image, output_type="pil"))
            else:
                out.extend((image.float() / 2 + 0.5).clamp(0, 1))
        return out

    def token_count(self, prompt: str) -> int:
        """CLIP tokens of `prompt` (with start/end tokens): SD3's CLIP encoders silently drop what exceeds 77."""
        return len(self.pipe.tokenizer(prompt, truncation=False).input_ids)


_RENDERERS: dict[tuple, Renderer] = {}


def load_renderer(name_or_path: str = DEFAULT_SD, device: str | None = None, dtype: str | None = None,
                  **kwargs: Any) -> Renderer:
    """One renderer per (model, device, dtype) per process: the reward and CQBench share SD3.5's ~28 GB. The key
    holds the resolved device and dtype, so `device=None` and the device it means find the same pipeline."""
    dev = _device(device)
    key = (str(name_or_path), str(dev), str(_dtype(dtype, dev)))
    if key not in _RENDERERS:
        with whole_weights():  # its text encoders are transformers models: ZeRO-3's zero.Init would shard them
            _RENDERERS[key] = Renderer.from_pretrained(name_or_path, device=device, dtype=dtype, **kwargs)
    return _RENDERERS[key]
