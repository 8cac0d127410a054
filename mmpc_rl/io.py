"""Files that survive a kill: atomic whole-file writes and append-only JSONL whose torn last line is ignored."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("mmpc_rl")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _dumps(obj: Any, **kw) -> str:
    """JSON text that always encodes as UTF-8: a lone surrogate (an undecodable byte in an id) is \\u-escaped."""
    text = json.dumps(obj, ensure_ascii=False, default=_default, **kw)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, default=_default, **kw)
    return text


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, _dumps(obj, indent=2) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records) -> Path:
    """A whole JSONL file, one record a line, written atomically."""
    return atomic_write_text(path, "".join(_dumps(r) + "\n" for r in records))


def _default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as one line, flushed and fsynced, so a kill loses at most the line being written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = _dumps(record) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, *, repair: bool = False, skipped: list | None = None) -> Iterator[dict]:
    """Yield records. Only a torn *last* line (no newline: a kill mid-write) is dropped, and truncated away when
    `repair`; a bad line elsewhere is skipped, counted in `skipped` (line numbers) and warned about, never taken as
    the end of the file, so the good records after it are kept."""
    path = Path(path)
    if not path.exists():
        return
    good_bytes, lineno, bad = 0, 0, []
    with open(path, "rb") as f:
        for raw in f:
            lineno += 1
            if not raw.endswith(b"\n"):
                break  # torn tail: only the last chunk of a file can lack its newline
            good_bytes += len(raw)
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (ValueError, RecursionError):
                rec = None
            if not isinstance(rec, dict):
                bad.append(lineno)
                continue
            yield rec
    if bad:
        if skipped is not None:
            skipped.extend(bad)
        log.warning("%s: skipped %d malformed line(s) (e.g. line %d)", path, len(bad), bad[0])
    if repair and good_bytes != path.stat().st_size:
        with open(path, "r+b") as f:
            f.truncate(good_bytes)


_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_NAME = 150


def safe_name(text: object) -> str:
    """A file-name component for an id that came from data: letters, digits, `_` and `-` stay, every other byte is
    %XX, so the result is one component (no separator, no `.`/`..`, never absolute) and distinct ids stay distinct.
    Long ids end in a hash (`~` marks it; `~` is otherwise always escaped) to stay under file-name limits."""
    raw = str(text).encode("utf-8", "surrogatepass")
    name = "".join(chr(b) if chr(b) in _SAFE else f"%{b:02X}" for b in raw) or "%"
    if len(name) > _MAX_NAME:
        name = f"{name[:_MAX_NAME - 42]}~{hashlib.sha1(raw).hexdigest()}"
    return name
