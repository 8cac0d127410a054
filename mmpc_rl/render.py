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

import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from mmpc_rl.errors import ConfigError
from mmpc_rl.models import DEFAULT_SD, load_sd3_pipeline, placement


def to_pil(image: Any) -> Any:
    """A render as an RGB PIL image: a CHW float tensor in [0, 1] (the pipeline's "pt" output), a file, or PIL."""
    from PIL import Image  # PIL only where a render is shown, not to render

    if isinstance(image, torch.Tensor):
        pixels = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(pixels)
    elif isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert("RGB")
    return image.convert("RGB")


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
        """A renderer around the process-wide pipeline for (model, device, dtype) (mmpc_rl.models' cache): the
        reward and CQBench share SD3.5's ~28 GB; each renderer keeps its own text cache and counters."""
        device, dtype = placement("sd3", device, dtype)
        return cls(load_sd3_pipeline(name_or_path, device, dtype), device, **kwargs)

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
