"""Files that survive a kill: atomic whole-file writes and append-only JSONL whose torn last line is ignored; and the
output folder a command writes into, checked before anything is written (`prepare_output_dir`).

No write follows a symbolic link out of the output folder: the folder is scanned for links that lead outside it
before a command writes (a link planted as `metrics.jsonl` or `checkpoint-2` would otherwise take the run's writes
elsewhere), whole files are replaced by rename (which replaces a link, never writes through it) and appends refuse a
link (O_NOFOLLOW)."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmpc_rl.errors import DataError, describe_os_error, os_reason

log = logging.getLogger("mmpc_rl")


def _short(path: str | os.PathLike) -> str:
    text = str(path)
    return text if len(text) <= 120 else f"{text[:80]}...{text[-30:]}"


def prepare_output_dir(folder: str | os.PathLike) -> Path:
    """The output folder, created if needed and checked before a command writes anything there: an OS error is one
    line naming the folder and the reason (read-only, not a directory, name too long, no space left on device), and
    a symbolic link inside it that leads outside it is refused."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".mmpc-write-check.", delete=True)  # noqa: SIM115
        probe.write(b"x")
        probe.flush()
        probe.close()
    except OSError as e:
        raise DataError(f"output folder {_short(folder)}: {os_reason(e)}") from None
    outside = links_out_of(folder)
    if outside:
        link, target = outside[0]
        raise DataError(f"output folder {_short(folder)}: {link} is a symbolic link to {target}, outside the folder; "
                        "mmpc-rl never writes through one: remove it (or make the output folder itself the link)")
    return folder


def links_out_of(folder: str | os.PathLike) -> list[tuple[str, str]]:
    """(link, target) for each symbolic link under `folder` that resolves outside it (or dangles)."""
    root = Path(folder).resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root) or not target.exists():
                    found.append((str(path.relative_to(root)), str(target)))
    return found


def write_failure(e: BaseException, folder: str | os.PathLike) -> DataError | None:
    """A one-line error for a failed write into the output folder, or None when `e` is something else. torch's C++
    writer reports a full disk as "file write failed" without the reason, so the free space is looked at."""
    if isinstance(e, OSError):
        inside = e.filename is not None and Path(str(e.filename)).resolve().is_relative_to(Path(folder).resolve())
        if e.errno in (errno.ENOSPC, errno.EDQUOT) or inside:
            return DataError(f"cannot write to {_short(folder)}: {describe_os_error(e)}")
        return None
    text = str(e)
    if "write failed" in text or "No space left" in text or "StorageFull" in text:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        reason = ("no space left on device" if free is not None and free < 2**30 or "space" in text.lower() else
                  " ".join(text.split())[:200])
        room = f" ({free / 2**20:.0f} MiB free)" if free is not None else ""
        return DataError(f"cannot write to {_short(folder)}: {reason}{room}; free some space and resume "
                         "(trainer.resume_from_checkpoint=auto)")
    return None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # replaces a symbolic link at `path`, never writes through it
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):  # name the file written, not the temporary one
            raise OSError(e.errno, e.strerror, str(path)) from None
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
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with open(fd, "a", encoding="utf-8") as f:  # O_NOFOLLOW: a symbolic link at `path` is an error, not followed
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON object file's content, or None when it is missing, unreadable, not JSON or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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
    if repair and good_bytes != path.stat().st_size and not path.is_symlink():
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
