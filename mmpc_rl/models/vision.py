"""Uncached builders of the image-side models: SD3.5 pipeline, open_clip CLIP, LPIPS AlexNet, timm encoder.

Each returns the model on the CPU (the face in __init__.py places and caches it) or raises a one-line
ModelLoadError. diffusers, open_clip, lpips and timm are imported inside their builder: each costs seconds and
hundreds of MB, and most runs need one of them at most.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from mmpc_rl.errors import ModelLoadError
from mmpc_rl.models.hub import hub_reachable, resolve_scheme


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# ------------------------------------------------------------------------------------------------------- SD3.5
def build_sd3_pipeline(name_or_path: str, dtype: torch.dtype) -> Any:
    """StableDiffusion3Pipeline from `tiny://sd3`, a local folder (model_index.json) or a hub id (cache or network)."""
    from diffusers import StableDiffusion3Pipeline

    source = resolve_scheme(name_or_path)
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return _sd3_from_pretrained(StableDiffusion3Pipeline, str(path), dtype, name_or_path)
    if source.startswith(("/", ".", "~")):
        raise ModelLoadError(f"diffusion model folder {source} does not exist")
    # A hub id: the local HF cache first; a download only when the hub answers (diffusers then fetches just the
    # diffusers-format files, not the repo's duplicate single-file checkpoint).
    try:
        return StableDiffusion3Pipeline.from_pretrained(source, dtype=dtype, local_files_only=True)
    except Exception:  # noqa: BLE001 - anything missing from the cache means "not cached"
        pass
    if not hub_reachable():
        raise ModelLoadError(f"no network: diffusion model {source!r} is not in the local Hugging Face cache and the "
                             "hub cannot be reached; pass a local folder (e.g. rewards.sd35_clip.model=/models/sd35)")
    return _sd3_from_pretrained(StableDiffusion3Pipeline, source, dtype, name_or_path)


def _sd3_from_pretrained(cls: Any, source: str, dtype: torch.dtype, name: str) -> Any:
    try:
        return cls.from_pretrained(source, dtype=dtype)
    except Exception as e:  # hub errors arrive as long multi-line messages from several libraries
        hint = " (SD3.5 is gated: accept its licence on the hub and log in)" if "gated" in str(e).lower() else ""
        raise ModelLoadError(f"cannot load diffusion pipeline {name!r}: {_first_line(e)}{hint}") from None


# -------------------------------------------------------------------------------------------------------- CLIP
# Weights trained with QuickGELU (OpenAI's, and a few others open_clip tags `quick_gelu`) give wrong embeddings in an
# nn.GELU network, and open_clip 3.x builds `ViT-B-32` with nn.GELU whatever weights it loads (it only warns). Every
# route below therefore decides the activation from the weights: open_clip's pretrained registry for a tag, the repo
# or folder name (its hub repo, e.g. `timm/vit_base_patch32_clip_224.openai`, or that repo's HF cache folder), the
# folder's own `quick_gelu`, and a TorchScript archive (the format only `clip.load`'s OpenAI checkpoints use).
def quickgelu_repos() -> set[str]:
    """Hub repos (`org/name`) of the weights open_clip's registry marks as trained with QuickGELU."""
    import open_clip

    repos = set()
    for model, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(model, tag)
        if cfg.get("quick_gelu") and cfg.get("hf_hub"):
            repos.add(cfg["hf_hub"].strip("/"))
    return repos


def names_quickgelu_weights(name_or_path: str) -> bool:
    """True when a hub id, or a part of a local path, names QuickGELU-trained weights (see quickgelu_repos)."""
    repos = quickgelu_repos()
    ident = str(name_or_path).removeprefix("hf-hub:").strip("/")
    if ident in repos:
        return True
    names = {r.split("/", 1)[1] for r in repos} | {"models--" + r.replace("/", "--") for r in repos}
    return any(part in names for part in Path(ident).parts)


def _clip_from_file(path: Path, arch: str) -> Any:
    import open_clip

    try:  # openai's own checkpoints are TorchScript archives, which torch.load(weights_only=True) refuses
        state, openai_archive = torch.jit.load(str(path), map_location="cpu").state_dict(), True
    except RuntimeError:
        openai_archive = False
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    quick = openai_archive or names_quickgelu_weights(str(path))
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick)
    for key in ("input_resolution", "context_length", "vocab_size"):  # JIT archive metadata, not parameters
        state.pop(key, None)
    state = {k.removeprefix("module."): v for k, v in dict(state).items()}
    model.load_state_dict(state, strict=True)
    return model


def _folder_quickgelu(path: Path) -> bool:
    import json

    try:
        cfg = json.loads((path / "open_clip_config.json").read_text())
    except (OSError, ValueError):
        return names_quickgelu_weights(str(path))  # open_clip reports the unreadable config itself
    return bool(cfg.get("model_cfg", {}).get("quick_gelu")) or names_quickgelu_weights(str(path.resolve()))


def load_open_clip(name_or_path: str, arch: str | None = None) -> Any:
    """The open_clip model for any form in mmpc_rl.clip's docstring, uncached, or a one-line ModelLoadError.
    QuickGELU-trained weights (OpenAI's) always get a QuickGELU network, on every route."""
    import open_clip

    source = resolve_scheme(name_or_path)
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise ModelLoadError(f"CLIP folder {path} has no open_clip_config.json (expected the open_clip hub "
                                     "layout: open_clip_config.json + open_clip_model.safetensors)")
            return open_clip.create_model(f"local-dir:{path}", force_quick_gelu=_folder_quickgelu(path))
        if path.is_file():
            return _clip_from_file(path, arch or "ViT-B-32-quickgelu")
        if source.startswith(("/", ".", "~")):
            raise ModelLoadError(f"CLIP checkpoint {source} does not exist")
        if "/" in source and source.split("/", 1)[0] in open_clip.list_models():
            model_name, tag = source.split("/", 1)
            quick = bool(open_clip.get_pretrained_cfg(model_name, tag).get("quick_gelu"))
            return open_clip.create_model(model_name, pretrained=tag, force_quick_gelu=quick)
        hub = source if source.startswith("hf-hub:") else f"hf-hub:{source}"
        return open_clip.create_model(hub, force_quick_gelu=names_quickgelu_weights(hub))
    except ModelLoadError:
        raise
    except Exception as e:  # open_clip raises RuntimeError/ValueError/OSError with multi-line hub details
        hint = " (no network here: pass a local folder or file, or tiny://clip)" if not path.exists() else ""
        raise ModelLoadError(f"cannot load CLIP {name_or_path!r}: {_first_line(e)}{hint}") from None


# ------------------------------------------------------------------------------------------------------- LPIPS
def build_lpips_net(backbone: str | os.PathLike | None = None):
    """`lpips.LPIPS(net="alex")` with its shipped linear heads; the AlexNet trunk comes from `backbone` (torchvision
    `alexnet` state dict: .pth or .safetensors), or stays random when None (tests only: values are meaningless)."""
    import lpips

    with warnings.catch_warnings():  # torchvision deprecation noise from inside lpips
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    if backbone is None:
        return net.eval()
    path = Path(backbone)
    if not path.is_file():
        raise ModelLoadError(f"LPIPS backbone {str(path)!r} is not a file: pass torchvision's alexnet weights "
                             "(alexnet-owt-7be5be79.pth) as lpips=/path/to/file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    for k in range(1, net.net.N_slices + 1):
        for idx, module in getattr(net.net, f"slice{k}").named_children():
            for pname, param in module.named_parameters(recurse=False):
                key = f"features.{idx}.{pname}"
                if key not in state or state[key].shape != param.shape:
                    raise ModelLoadError(f"{path} is not a torchvision AlexNet state dict (no {key!r} of shape "
                                         f"{tuple(param.shape)})")
                param.data.copy_(state[key])
    return net.eval()


# -------------------------------------------------------------------------------------------------------- timm
def build_timm(model: str, arch: str) -> torch.nn.Module:
    """A timm model from a hub id (timm name or `hf-hub:...`), a weights file or a folder holding one."""
    import timm

    path = Path(model).expanduser()
    try:
        if path.exists():
            if path.is_dir():
                files = [p for n in ("model.safetensors", "pytorch_model.bin") if (p := path / n).is_file()]
                if not files:
                    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
                path = files[0]
            return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
        return timm.create_model(model, pretrained=True).eval()
    except Exception as e:  # hub errors, missing files and shape mismatches all mean "cannot load"
        raise ModelLoadError(f"cannot load image encoder {model!r} (arch {arch}): {type(e).__name__}: "
                             f"{_first_line(e)}") from None
