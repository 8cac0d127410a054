"""One process at a time in a run folder or a CQBench output folder: `<folder>/.mmpc-rl.lock`.

The lock is an exclusive `flock` on that file, held for the life of the process, and the file names its holder
(pid, host, command). A second process refuses in one line naming the holder's pid. A lock whose process died
(SIGKILL, a crash, a reboot) holds no flock any more: the next process takes it over, and says so. Where the file
system has no flock, the holder's pid is checked instead (alive on this host: refused).

In a distributed run one process takes the lock (the one that writes: rank 0, or each node's first process when
every node saves), and every rank gets its answer (`raise_on_any_rank`), so ranks > 0 stop with rank 0 instead of
waiting for it at a barrier.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from mmpc_rl.errors import ConfigError

LOCK_NAME = ".mmpc-rl.lock"
_HELD: dict[str, FolderLock] = {}  # resolved folder -> this process's lock on it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


class FolderLock:
    """This process's lock on one folder (`acquire`); `release` frees it and removes the file."""

    def __init__(self, folder: Path, path: Path, fd: int):
        self.folder, self.path, self.fd = folder, path, fd
        self.depth = 1

    @classmethod
    def acquire(cls, folder: str | os.PathLike, what: str = "folder") -> FolderLock:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        key = str(folder.resolve())
        if key in _HELD:  # this process holds it already (a library caller building a second trainer)
            _HELD[key].depth += 1
            return _HELD[key]
        path = folder / LOCK_NAME
        for _ in range(5):  # the file may be replaced between open and flock by a holder that released it
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                stale = _lock_fd(fd, path, what)
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    raise FileNotFoundError(path)  # released and unlinked meanwhile: lock the new file
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if stale:
                print(f"mmpc-rl: {what} {folder}: took over the lock of process {stale} (no longer running)",
                      file=sys.stderr)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "command": " ".join(sys.argv)[:500]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            lock = cls(folder, path, fd)
            _HELD[key] = lock
            return lock
        raise ConfigError(f"{what} {folder}: could not take its lock {path}")

    def release(self) -> None:
        self.depth -= 1
        if self.depth > 0 or self.fd < 0:
            return
        _HELD.pop(str(self.folder.resolve()), None)
        try:
            self.path.unlink()  # before unlocking: a process waiting on this file retries on the new one
        except OSError:
            pass
        os.close(self.fd)
        self.fd = -1


def _lock_fd(fd: int, path: Path, what: str) -> int | None:
    """flock `fd` or refuse naming the holder; returns the pid of a dead holder taken over, else None."""
    import fcntl

    previous = _holder(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(_busy(path.parent, what, _holder(path))) from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        # no flock on this file system: a live pid on this host holds it
        if previous.get("pid") and previous.get("host") == socket.gethostname() and _alive(int(previous["pid"])):
            raise ConfigError(_busy(path.parent, what, previous)) from None
    pid = previous.get("pid")
    return pid if pid and pid != os.getpid() else None


def _busy(folder: Path, what: str, holder: dict) -> str:
    pid, host = holder.get("pid", "?"), holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return (f"{what} {folder} is in use by process {pid}{where} (since {holder.get('since', '?')}: "
            f"{holder.get('command', '?')}); wait for it to end, stop it, or use another folder")


def release_folder(folder: str | os.PathLike) -> None:
    """Free this process's lock on `folder` however often it was taken (an entry point that ends)."""
    lock = _HELD.get(str(Path(folder).resolve()))
    if lock is not None:
        lock.depth = 1
        lock.release()


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        release_folder(key)


def lock_folder(folder: str | os.PathLike, what: str, take: bool = True) -> FolderLock | None:
    """The lock on `folder` for the process that writes there (`take`), None for the others; a refusal on any rank
    is raised on every rank."""
    lock, error = None, None
    if take:
        try:
            lock = FolderLock.acquire(folder, what)
        except ConfigError as e:
            error = str(e)
    raise_on_any_rank(error)
    return lock


def raise_on_any_rank(error: str | None) -> None:
    """ConfigError(error) on every process of a distributed run when any process has one (collective: every rank
    calls it); on a single process, when `error` is set."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        errors: list = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e), None)
    if error:
        raise ConfigError(error)
