"""sd35_clip: render the completion's image prompt with SD3.5-large-turbo and score the renders against the real
product image with CLIP image-image cosine (CQBench's CLIP, openai ViT-B/32), averaged over `num_images` renders.

Design for signal (the paper saw "no upward trend during training" on this reward and calls for "more sophisticated
reward designs"; a noisy reward makes the group comparison GRPO learns from weaker, so the noise is cut where it is
free):
- Common random numbers: render seed k of an item is derived from (item id, k, `seed`), so every completion of a
  group is rendered on the same `num_images` noises and the group comparison reflects the prompt, not the seed.
- Dedupe: identical (prompt, seed) pairs in a generation batch render once; text encodings are cached per prompt.
- All renders of a call go through the pipeline together, in batches of `max_batch` images.

Rule for a completion that does not parse to `{"prompt": "..."}` (or parses to an empty prompt), `unparsed=`:
- "zero" (default): it scores 0.0 and renders nothing. CLIP cosines of renders against product photos sit around
  0.5-0.9, so at the paper's weight 4 a parse failure costs about as much as the whole similarity term, on top of
  `json_format`'s format pressure;
- "raw": its raw text is rendered as the prompt (a dense signal for a policy that rarely emits clean JSON; the demo's
  random tiny policy never does); an empty completion still scores 0.0;
- "none": None, which TRL turns into NaN and leaves out of this term for that row.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any

import torch

from mmpc_rl.clip import DEFAULT_CLIP, ClipEmbedder
from mmpc_rl.errors import ConfigError, DataError
from mmpc_rl.io import atomic_write_bytes
from mmpc_rl.plan import ModelMemory
from mmpc_rl.render import DEFAULT_SD, Renderer, to_pil
from mmpc_rl.rewards.registry import Reward, register
from mmpc_rl.tasks import completion_text
from mmpc_rl.tracking import active_wandb

# Parameter counts on the meta device from the published configs (diffusers 0.42 / transformers 5.2x):
# SD3.5-large MMDiT 8,056,627,520 + VAE 83,819,683 + T5-XXL encoder 4,762,310,656 + CLIP-L 123,650,304 + CLIP-G
# 694,659,840; open_clip ViT-B/32 151,277,313.
SD35_LARGE_PARAMS, CLIP_B32_PARAMS = 13_721_068_003, 151_277_313
SD3_HIDDEN, SD3_TEXT_TOKENS, SD3_T5_WIDTH = 2432, 77, 4096


def render_seed(item_id: Any, k: int, base: int = 0) -> int:
    """Seed of render k of an item: stable across processes and runs (no Python hash randomisation)."""
    digest = hashlib.sha256(f"{base}:{item_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _item_key(prompt: Any) -> str:
    """Fallback item id when the dataset has no id column: the prompt text, identical across a group."""
    return hashlib.sha256(repr(prompt).encode()).hexdigest()[:16]


class SD35ClipReward:
    def __init__(self, task, renderer, embedder, *, num_images: int = 4, height: int = 1024, width: int = 1024,
                 num_inference_steps: int = 4, guidance_scale: float = 0.0, max_sequence_length: int = 512,
                 seed: int = 0, unparsed: str = "zero", reference_column: str = "reference_image",
                 id_column: str = "parent_asin", preprocess: str = "tensor", log_images_every: int = 50,
                 output_dir: str | None = None, main_process: bool = True):
        if num_images < 1:
            raise ConfigError(f"rewards.sd35_clip.num_images must be >= 1, got {num_images}")
        if unparsed not in ("zero", "raw", "none"):
            raise ConfigError(f"rewards.sd35_clip.unparsed must be zero, raw or none, got {unparsed!r}")
        if preprocess not in ("tensor", "pil"):
            raise ConfigError(f"rewards.sd35_clip.preprocess must be 'tensor' or 'pil', got {preprocess!r}")
        self.task, self.renderer, self.embedder = task, renderer, embedder
        self.num_images, self.height, self.width = num_images, height, width
        self.render_kwargs = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                              "max_sequence_length": max_sequence_length}
        self.seed, self.unparsed = seed, unparsed
        self.unparsed_score = None if unparsed == "none" else 0.0
        self.reference_column, self.id_column, self.preprocess = reference_column, id_column, preprocess
        self.log_images_every, self.output_dir, self.main_process = log_images_every, output_dir, main_process
        self._real: dict[str, torch.Tensor] = {}  # item id -> CLIP embedding of the real image (fixed all run)
        self._lock = threading.Lock()
        self._last_panel_step = -1
        self.last: dict[str, Any] = {}  # the latest call's renders and scores (monitoring, tests)

    # ------------------------------------------------------------------------------------------------ scoring
    def _real_embedding(self, item_id: str, image: Any) -> torch.Tensor:
        if item_id not in self._real:
            from PIL import Image, UnidentifiedImageError

            try:
                pil = Image.open(image) if isinstance(image, (str, os.PathLike)) else image
                self._real[item_id] = self.embedder.embed([pil.convert("RGB")])[0]
            except (OSError, UnidentifiedImageError, AttributeError) as e:
                raise DataError(f"sd35_clip: cannot read the real image of item {item_id} ({image!r}): {e}") from None
        return self._real[item_id]

    def __call__(self, prompts=None, completions=None, completion_ids=None, **columns) -> list[float | None]:
        with self._lock:  # TRL may call rewards from a thread; one GPU pipeline at a time
            return self._score(prompts or [], completions or [], columns)

    def _score(self, prompts: list, completions: list, columns: dict) -> list[float | None]:
        if self.reference_column not in columns:
            raise DataError(f"sd35_clip needs the dataset column {self.reference_column!r} (the real product image); "
                            f"got {sorted(k for k in columns if not callable(columns[k]))}")
        n = len(completions)
        ids = columns.get(self.id_column) or [_item_key(p) for p in (prompts or [None] * n)]
        raw = [completion_text(c).strip() for c in completions]
        parsed = [self.task.parse(r) for r in raw]
        texts = [p.value if p.status == "ok" else (r or None) if self.unparsed == "raw" else None
                 for p, r in zip(parsed, raw, strict=True)]
        jobs: dict[tuple[str, int], int] = {}  # (prompt, seed) -> unique render index
        job_of: list[list[int]] = []
        for text, item in zip(texts, ids, strict=True):
            keys = [] if text is None else [(text, render_seed(item, k, self.seed)) for k in range(self.num_images)]
            job_of.append([jobs.setdefault(key, len(jobs)) for key in keys])
        unique = list(jobs)
        renders, embeds, seconds = [], torch.empty(0), 0.0
        if unique:
            out_type = "pt" if self.preprocess == "tensor" else "pil"
            renders = self.renderer.render([p for p, _ in unique], [s for _, s in unique], height=self.height,
                                           width=self.width, output_type=out_type, **self.render_kwargs)
            embeds = (self.embedder.embed_tensors if self.preprocess == "tensor" else self.embedder.embed)(renders)
            seconds = self.renderer.last_seconds
        real = {str(i): self._real_embedding(str(i), img) for i, img in zip(ids, columns[self.reference_column],
                                                                             strict=True)}
        job_item = {j: str(item) for js, item in zip(job_of, ids, strict=True) for j in js}
        scores = [float((embeds[j] * real[job_item[j]]).sum()) for j in range(len(unique))]
        rewards = [sum(scores[j] for j in js) / len(js) if js else self.unparsed_score for js in job_of]
        if isinstance(renders, torch.Tensor):
            renders = renders.cpu()  # kept for the panel and the table only: not ~0.8 GB on the GPU until next step
        self.last = {"renders": renders, "scores": scores, "job_of": job_of, "rewards": rewards, "ids": ids,
                     "texts": texts, "unique": unique, "seconds": seconds}
        self._log(columns, n, len(unique), seconds, texts)
        return rewards

    # --------------------------------------------------------------------------------------------- monitoring
    def media(self) -> dict[str, list]:
        """The last call's renders, per completion: {"render": [[images of completion i], ...]} (PIL images or CHW
        tensors in [0, 1]), for the completions table."""
        if not self.last.get("job_of"):
            return {}
        renders = self.last["renders"]
        return {"render": [[renders[j] for j in jobs] for jobs in self.last["job_of"]]}

    def render_fn(self):
        """(prompts, seeds) -> images with this reward's pipeline and render settings (CQBench in training renders
        with the same model, so the ~28 GB pipeline is loaded once)."""
        def render(prompts: list[str], seeds: list[int]):
            return self.renderer.render(prompts, seeds, height=self.height, width=self.width, **self.render_kwargs)

        return render

    def _log(self, columns: dict, n: int, n_unique: int, seconds: float, texts: list) -> None:
        log_metric = columns.get("log_metric")
        if callable(log_metric):
            log_metric("sd35_clip/render_seconds", seconds)
            log_metric("sd35_clip/unique_renders", float(n_unique))
            log_metric("sd35_clip/rendered_frac", sum(t is not None for t in texts) / max(n, 1))
            ok = [t for t in texts if t is not None]
            if ok:  # SD3's CLIP encoders drop tokens past 77; T5 still reads them
                over = sum(self.renderer.token_count(t) > 77 for t in ok) / len(ok)
                log_metric("sd35_clip/over_77_clip_tokens_frac", over)
        state = columns.get("trainer_state")
        step = int(getattr(state, "global_step", 0) or 0)
        if (self.log_images_every and step % self.log_images_every == 0 and step != self._last_panel_step
                and self.main_process):
            self._last_panel_step = step
            self.log_panel(columns[self.reference_column], step)

    def log_panel(self, references: list, step: int) -> Any:
        """Real image | renders of the best completion | renders of the worst, for the first item of the batch with
        two parsed completions; saved to output_dir/renders/ and sent to W&B when a run is active."""
        panel = make_panel(self.last, references)
        if panel is None:
            return None
        image, caption = panel
        if self.output_dir:
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=90)
            atomic_write_bytes(Path(self.output_dir) / "renders" / f"step_{step:06d}.jpg", buf.getvalue())
        wandb = active_wandb()
        if wandb is not None:
            wandb.log({"sd35_clip/renders": wandb.Image(image, caption=caption)}, commit=False)
        return image


def make_panel(last: dict, references: list, tile: int = 256) -> tuple[Any, str] | None:
    """Two rows: [real | renders of the best completion], [real | renders of the worst], for the first item of the
    batch with at least two parsed completions; None when there is none."""
    from PIL import Image

    rows: dict[str, list[int]] = {}
    for i, (item, jobs) in enumerate(zip(last.get("ids", []), last.get("job_of", []), strict=True)):
        if jobs:
            rows.setdefault(str(item), []).append(i)
    group = next((g for g in rows.values() if len(g) >= 2), None)
    if group is None:
        return None
    rewards = last["rewards"]
    best, worst = max(group, key=lambda i: rewards[i]), min(group, key=lambda i: rewards[i])
    width = 1 + max(len(last["job_of"][best]), len(last["job_of"][worst]))
    panel = Image.new("RGB", (width * tile, 2 * tile), "white")
    real = to_pil(references[group[0]]).resize((tile, tile))
    for row, i in enumerate((best, worst)):
        panel.paste(real, (0, row * tile))
        for col, j in enumerate(last["job_of"][i], start=1):
            panel.paste(to_pil(last["renders"][j]).resize((tile, tile)), (col * tile, row * tile))
    caption = (f"best {rewards[best]:.3f}: {last['texts'][best]!r} | worst {rewards[worst]:.3f}: "
               f"{last['texts'][worst]!r}")
    return panel, caption


def memory(options: dict) -> tuple[ModelMemory, ...]:
    """For the memory planner: SD3.5-large in bf16 and CLIP ViT-B/32 in fp16 (their CUDA dtypes in mmpc_rl.models),
    counted at those sizes whatever `model`/`clip` name (a local folder is not read); the renderer's cache of T5
    prompt encodings; and one call's peak, analytic and unmeasured: an MMDiT block's bf16 temporaries (~12 x hidden
    per token) for `max_batch` images, or the VAE decoder's 128-channel full-resolution maps (~4 live, bf16) for
    `decode_batch` images."""
    size, ctx = int(options["size"]), SD3_TEXT_TOKENS + int(options["max_sequence_length"])
    cache = int(options["text_cache_size"]) * ctx * SD3_T5_WIDTH * 2
    mmdit = int(options["max_batch"]) * ((size // 16) ** 2 + ctx) * 12 * SD3_HIDDEN * 2
    vae = int(options["decode_batch"]) * size * size * 128 * 2 * 4
    device, clip_device = options["device"], options["clip_device"] or options["device"]
    note = "SD3.5-large: weights counted; render and VAE-decode temporaries an analytic estimate, never measured"
    if clip_device == device:
        return (ModelMemory("SD3.5-large + CLIP (reward)", params=SD35_LARGE_PARAMS + CLIP_B32_PARAMS,
                            resident_bytes=cache, activation_bytes=max(mmdit, vae), device=device, note=note),)
    return (ModelMemory("SD3.5-large (reward)", params=SD35_LARGE_PARAMS, resident_bytes=cache,
                        activation_bytes=max(mmdit, vae), device=device, note=note),
            ModelMemory("CLIP ViT-B/32 (reward)", params=CLIP_B32_PARAMS, device=clip_device))


@register("sd35_clip", tasks=("t2i",), memory=memory)
def sd35_clip(task, context=None, model: str = DEFAULT_SD, clip: str = DEFAULT_CLIP, num_images: int = 4,
              size: int = 1024, num_inference_steps: int = 4, guidance_scale: float = 0.0,
              max_sequence_length: int = 512, seed: int = 0, max_batch: int = 16, decode_batch: int = 4,
              text_cache_size: int = 256, device: str | None = None, dtype: str | None = None,
              clip_device: str | None = None, unparsed: str = "zero", preprocess: str = "tensor",
              reference_column: str = "reference_image", id_column: str = "parent_asin",
              log_images_every: int = 50) -> Reward:
    """Options are `rewards.sd35_clip.<name>`; `device` places SD3.5 (and CLIP unless `clip_device`), e.g. cuda:1 in
    a multi-GPU run. Injected models (context.models "renderer", "clip") are used instead of loading."""
    if size % 16:
        raise ConfigError(f"rewards.sd35_clip.size must be a multiple of 16 (SD3 latent patches), got {size}")
    models = context.models if context else {}
    device = device or (context.device if context else None)
    # The weights come from mmpc_rl.models' per-process cache: CQBench's callback finds the same SD3.5 and CLIP.
    renderer = models.get("renderer") or Renderer.from_pretrained(model, device=device, dtype=dtype,
                                                                  text_cache_size=text_cache_size,
                                                                  max_batch=max_batch, decode_batch=decode_batch)
    embedder = models.get("clip") or ClipEmbedder.from_pretrained(clip, device=clip_device or str(renderer.device))
    fn = SD35ClipReward(task, renderer, embedder, num_images=num_images, height=size, width=size,
                        num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                        max_sequence_length=max_sequence_length, seed=seed, unparsed=unparsed,
                        reference_column=reference_column, id_column=id_column, preprocess=preprocess,
                        log_images_every=log_images_every, output_dir=context.output_dir if context else None,
                        main_process=context.is_main_process if context else True)
    return Reward("sd35_clip", fn)
