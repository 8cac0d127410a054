"""What the planner knows about a model without loading it: parameter counts taken on the meta device (nothing is
allocated or downloaded), the text decoder's widths, and the image processor's token rule."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from mmpc_rl.errors import ModelLoadError

LORA_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Qwen2.5-VL-7B-Instruct's preprocessor_config.json: patch 14, merge 2, pixel bounds 56x56 .. 12,845,056.
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 3136, 12845056


@dataclass(frozen=True)
class ModelShape:
    name: str
    total_params: int
    linear_params: int  # nn.Linear weights+biases outside lm_head: what bitsandbytes turns into NF4
    lm_head_params: int
    embed_params: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    vision_hidden: int = 0
    vision_intermediate: int = 0
    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS
    # (module name, in_features, out_features) of every nn.Linear, for counting LoRA parameters
    linears: tuple[tuple[str, int, int], ...] = field(default=(), repr=False)
    source: str = "config"  # "config" (read from a folder or object) or "built-in" (shape table, not cached)
    fixed_image_tokens: int | None = None  # Gemma-3: every image is mm_tokens_per_image tokens, whatever its size

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


def lora_params(shape: ModelShape, r: int, target_modules) -> int:
    """Trainable LoRA parameters, r*(in+out) per adapted nn.Linear, matched as PEFT matches: a string is a regex over
    the full module name, a list names module suffixes."""
    return sum(r * (i + o) for name, i, o in shape.linears if _targets(name, target_modules))


def lora_input_dims(shape: ModelShape, target_modules) -> dict[str, int]:
    """Which of the decoder's 7 linear layers are adapted (layer 0 stands for all), by short name."""
    out = {}
    for name, i, _ in shape.linears:
        short = name.rsplit(".", 1)[-1]
        if short in LORA_NAMES and short not in out and _targets(name, target_modules) and not _is_vision(name):
            out[short] = i
    return out


def _targets(name: str, target_modules) -> bool:
    if not target_modules:
        return False
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return "lm_head" not in name
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def _is_vision(name: str) -> bool:
    return any(part in name for part in ("visual", "vision_tower", "vision_model"))


def image_tokens(shape: ModelShape, height: int, width: int, min_pixels: int | None = None,
                 max_pixels: int | None = None) -> int:
    """Image tokens the policy sees for one HxW image: the processor's smart_resize (patch 14 x merge 2 grid inside
    the pixel bounds), then one token per merged 2x2 patch block."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    if shape.fixed_image_tokens:
        return shape.fixed_image_tokens
    factor = shape.patch_size * shape.merge_size
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels or shape.min_pixels,
                        max_pixels=max_pixels or shape.max_pixels)
    return (h // factor) * (w // factor)


def max_image_tokens(shape: ModelShape, max_pixels: int | None = None) -> int:
    """The most image tokens one image can cost under the pixel cap (`max_pixels`, else the checkpoint's): smart_resize
    keeps the resized grid within the cap, and some aspect ratio reaches it (448 x 896 px -> 16 x 32 = 512 tokens at
    401,408 px)."""
    if shape.fixed_image_tokens:
        return shape.fixed_image_tokens
    return (max_pixels or shape.max_pixels) // (shape.patch_size * shape.merge_size) ** 2


# ----------------------------------------------------------------------------------------------- resolving
# Qwen2.5-VL-72B-Instruct's public config.json numbers that differ from the 7B's (the vision tower is the same in every
# size but for its output width).
QWEN_72B_TEXT = {"hidden_size": 8192, "num_hidden_layers": 80, "intermediate_size": 29568, "num_attention_heads": 64,
                 "num_key_value_heads": 8, "vocab_size": 152064}


def _qwen25_vl_7b():
    from mmpc_rl.models.qwen25_vl import qwen25_vl_7b_config  # here: the planner imports without torch

    return qwen25_vl_7b_config()


def _qwen25_vl_72b():
    config = _qwen25_vl_7b()
    d = config.to_dict()
    d["text_config"].update(QWEN_72B_TEXT)
    d["text_config"].pop("layer_types", None)  # derived from the layer count: rebuilt for 80 layers
    d["vision_config"]["out_hidden_size"] = QWEN_72B_TEXT["hidden_size"]
    return type(config).from_dict(d)


# Tiny models whose shape is another's: the SFT demo policy is tiny qwen2.5-vl after a few training steps, so the
# planner reads the random one's config instead of running the SFT build.
SAME_SHAPE = {"tiny://qwen2.5-vl-sft": "tiny://qwen2.5-vl"}
# Published shapes planned without a download (the paper's policies; CQBench's largest model).
BUILT_IN = {"Qwen/Qwen2.5-VL-7B-Instruct": _qwen25_vl_7b, "Qwen/Qwen2.5-VL-7B": _qwen25_vl_7b,
            "Qwen/Qwen2.5-VL-72B-Instruct": _qwen25_vl_72b}


def _cached_config_dir(repo_id: str, revision: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a malformed id is simply "not cached"
        return None
    return str(Path(hit).parent) if isinstance(hit, str) else None


def model_shape(model, revision: str | None = None, *, fetch: bool = False) -> ModelShape:
    """The shape of `model`: a transformers config object, `tiny://NAME`, a local folder, a cached hub id or (never
    downloaded) an id in the built-in table. Any other hub id is refused, or with `fetch` downloaded as the loader
    would (CQBench plans a model it is about to load anyway)."""
    if not isinstance(model, str):
        return _shape_from_config(model, getattr(model, "name_or_path", "") or type(model).__name__, "config")
    return _shape_by_name(model, revision, fetch)


@lru_cache(maxsize=16)
def _shape_by_name(name: str, revision: str | None, fetch: bool) -> ModelShape:
    from transformers import AutoConfig

    from mmpc_rl.models.hub import config_errors, resolve_model_path, unreadable_config

    folder, source = None, "config"
    if name.startswith("tiny://"):
        folder = resolve_model_path(SAME_SHAPE.get(name, name))
    elif Path(name).expanduser().is_dir():
        folder = str(Path(name).expanduser())
    else:
        folder = _cached_config_dir(name, revision)
    if folder is None and name in BUILT_IN:
        return _shape_from_config(BUILT_IN[name](), name, "built-in")
    if folder is None and fetch:
        folder = resolve_model_path(name, revision=revision)  # a download, or the loader's one-line error offline
    if folder is None:
        raise ModelLoadError(f"cannot plan {name!r}: it is not a local folder, not in the Hugging Face cache and "
                             f"not in the built-in shape table ({', '.join(BUILT_IN)}); give a local folder")
    try:
        cfg = AutoConfig.from_pretrained(folder)
        return _shape_from_config(cfg, name, source, _pixel_bounds(folder))
    except config_errors() as e:
        raise unreadable_config(e, folder) from None


def _pixel_bounds(folder: str) -> tuple[int, int] | None:
    # transformers 5 saves the processor as processor_config.json (image processor nested), older checkpoints as
    # preprocessor_config.json
    for file in ("processor_config.json", "preprocessor_config.json"):
        path = Path(folder) / file
        try:
            pp = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            pp = None
        if isinstance(pp, dict):
            pp = pp.get("image_processor", pp)
            if pp.get("size") or pp.get("max_pixels"):
                break
    else:
        return None
    size = pp.get("size") or {}
    lo, hi = pp.get("min_pixels") or size.get("shortest_edge"), pp.get("max_pixels") or size.get("longest_edge")
    return (int(lo), int(hi)) if lo and hi else None


def _shape_from_config(cfg, name: str, source: str, bounds: tuple[int, int] | None = None) -> ModelShape:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    text = cfg.get_text_config()
    vision = getattr(cfg, "vision_config", None)
    auto = AutoModelForImageTextToText if vision is not None else AutoModelForCausalLM
    with torch.device("meta"):
        model = auto.from_config(cfg)
    linears, linear_params, lm_head = [], 0, 0
    for mod_name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            n = sum(p.numel() for p in mod.parameters(recurse=False))
            linears.append((mod_name, mod.in_features, mod.out_features))
            if mod_name.rsplit(".", 1)[-1] == "lm_head":
                lm_head += n
            else:
                linear_params += n
    emb = model.get_input_embeddings()
    heads = text.num_attention_heads
    lo, hi = bounds or (QWEN_MIN_PIXELS, QWEN_MAX_PIXELS)
    return ModelShape(
        name=name, total_params=sum(p.numel() for p in model.parameters()), linear_params=linear_params,
        lm_head_params=lm_head, embed_params=emb.weight.numel(), hidden=text.hidden_size,
        intermediate=text.intermediate_size, layers=text.num_hidden_layers, heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads, vocab=text.vocab_size,
        vision_hidden=getattr(vision, "hidden_size", 0) or 0,
        vision_intermediate=getattr(vision, "intermediate_size", 0) or 0,
        patch_size=getattr(vision, "patch_size", 14) or 14, merge_size=getattr(vision, "spatial_merge_size", 2) or 2,
        min_pixels=lo, max_pixels=hi, linears=tuple(linears), source=source,
        fixed_image_tokens=getattr(cfg, "mm_tokens_per_image", None))
