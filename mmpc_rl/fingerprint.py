"""What a model or a file is, for results that are kept and resumed (CQBench's per-item files, a run's "before"
pass): not only its name, but its content. Two folders called `model`, an adapter retrained in place, or a hub id
at another revision are different sources and must not share results.

- a hub id: the commit of the snapshot in the local Hugging Face cache (what `from_pretrained` reads);
- a local folder or file, and `tiny://NAME`: a SHA-256 over the files that make the model (weights, configs,
  tokenizer, processor), each file's hash kept in `<cache>/digests.json` under its path, size, mtime and inode, so a
  16 GB checkpoint is read once, not on every run;
- anything else (an open_clip tag, `random`): the name as given.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from huggingface_hub import snapshot_download

from mmpc_rl.data import default_cache_dir
from mmpc_rl.io import atomic_write_json
from mmpc_rl.models.hub import resolve_scheme

# files of a model folder that do not make the model: a run's records, beside its adapter or full weights
NOT_MODEL = frozenset({"trainer_state.json", "training_args.json", "summary.json", "skips.json"})
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".jinja", ".tiktoken", ".py")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
CHUNK = 8 * 2**20


def _memo_path() -> Path:
    return default_cache_dir() / "digests.json"


def file_digest(path: str | os.PathLike, memo: dict | None = None) -> str:
    """SHA-256 of a file's bytes; `memo` (path|size|mtime|inode -> hash) spares reading an unchanged file again."""
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    if memo is not None and key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if memo is not None:
        memo[key] = h.hexdigest()
    return h.hexdigest()


def _model_files(folder: Path) -> list[Path]:
    """The files that make a model in `folder`: weights, configs, tokenizer and processor files, in subfolders too
    (a diffusers pipeline), but not hidden entries, checkpoint-N folders or a training run's records."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not d.startswith("checkpoint-")
                         and d not in ("wandb", "cqbench", "completions"))
        out += [Path(root) / f for f in sorted(files)
                if not f.startswith(".") and f.endswith(MODEL_SUFFIXES) and f not in NOT_MODEL]
    return out


def content_digest(path: str | os.PathLike, files: list[Path] | None = None) -> str:
    """SHA-256 of a file, or of a folder's model files (their paths relative to it, sizes and hashes)."""
    path = Path(path)
    memo_file = _memo_path()
    try:
        memo = json.loads(memo_file.read_text())
        memo = memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        memo = {}
    size = len(memo)
    if path.is_file():
        digest = file_digest(path, memo)
    else:
        h = hashlib.sha256()
        for f in files if files is not None else _model_files(path):
            h.update(f"{f.relative_to(path).as_posix()}\0{f.stat().st_size}\0{file_digest(f, memo)}\n".encode())
        digest = h.hexdigest()
    if len(memo) != size:
        try:
            atomic_write_json(memo_file, memo)
        except OSError:  # a read-only cache only costs the next run the hashing again
            pass
    return digest


def adapter_digest(folder: str | os.PathLike) -> str:
    """SHA-256 of a LoRA folder's adapter (its config and weights), whatever else the folder holds (a run's
    checkpoints, logs, CQBench results)."""
    folder = Path(folder)
    return content_digest(folder, [folder / n for n in ADAPTER_FILES if (folder / n).is_file()])


def hub_revision(name: str, revision: str | None = None) -> str | None:
    """The commit of hub id `name` in the local Hugging Face cache, or None when it is not there."""
    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - any miss in the local cache means "not cached"
        return None


def source_identity(name_or_path: str | None, revision: str | None = None) -> str | None:
    """One string that changes whenever the source's content does: `NAME@sha256:...` for a local folder or file
    and `tiny://NAME` (its absolute path for a local one), `ID@COMMIT` for a cached hub id, the name otherwise."""
    if name_or_path is None:
        return None
    name = str(name_or_path)
    if "://" in name:
        return f"{name}@sha256:{content_digest(resolve_scheme(name))[:16]}"
    path = Path(name).expanduser()
    if path.exists():
        return f"{path.resolve()}@sha256:{content_digest(path)[:16]}"
    commit = hub_revision(name, revision)
    return f"{name}@{commit}" if commit else (f"{name}@{revision}" if revision else name)
