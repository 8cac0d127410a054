"""User-facing errors: one clear line instead of a traceback from deep inside a library."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Iterable

DEBUG_ENV = ("MMPC_RL_DEBUG", "MMPC_DEBUG")  # either, set to 1, shows the traceback of a one-line error


class MMPCError(Exception):
    """An error the user can fix (bad recipe, missing file, no network). Printed as one line, exit code 2."""


class ConfigError(MMPCError):
    """A recipe, key, value or reward name that does not exist or does not fit."""


class DataError(MMPCError):
    """Missing or unusable data."""


class ModelLoadError(MMPCError):
    """A model that cannot be loaded (no network, missing folder, wrong kind of checkpoint)."""


class ShowHelp(Exception):  # noqa: N818 - not an error: `--help` ends a command early with its text
    """`--help` given: the command prints `text` and exits 0 (run_cli does both)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    import difflib

    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid choices: {', '.join(choices)}"


# The reasons a user can act on, in words (strerror's are terse, and a C++ layer often drops them).
OS_REASONS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied (read-only?)",
              errno.EPERM: "operation not permitted", errno.ENOTDIR: "not a directory",
              errno.EEXIST: "exists and is not a directory", errno.ENOSPC: "no space left on device",
              errno.EDQUOT: "disk quota exceeded", errno.ENAMETOOLONG: "name too long",
              errno.ELOOP: "is a symbolic link (not followed)", errno.EISDIR: "is a directory",
              errno.ENOENT: "does not exist"}


def os_reason(e: OSError) -> str:
    return OS_REASONS.get(e.errno, e.strerror or type(e).__name__)


def describe_os_error(e: OSError, what: str | None = None) -> str:
    """`<what or the file>: <reason>` for an OSError, the reason in words."""
    where = what or e.filename or ""
    if e.filename2:
        where = f"{where} -> {e.filename2}"
    return f"{where}: {os_reason(e)}" if where else os_reason(e)


def _debug() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in DEBUG_ENV)


def run_cli(fn: Callable[[], int | None]) -> int:
    """Run a CLI body: an MMPCError, a YAML error or an OSError is one line on stderr and exit code 2 (MMPC_RL_DEBUG=1
    shows the traceback); `--help` (ShowHelp) prints its text and exits 0."""
    import yaml

    try:
        rc = fn()
    except ShowHelp as e:
        print(e.text)
        return 0
    except (MMPCError, yaml.YAMLError, OSError) as e:
        if _debug():
            raise
        if isinstance(e, MMPCError):
            message = str(e)
        elif isinstance(e, OSError):
            message = describe_os_error(e)
        else:
            message = "bad YAML: " + " ".join(str(e).split())
        print(f"mmpc-rl: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmpc-rl: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
