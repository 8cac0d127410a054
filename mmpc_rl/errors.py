"""User-facing errors: one clear line instead of a traceback from deep inside a library."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable


class MMPCError(Exception):
    """An error the user can fix (bad recipe, missing file, no network). Printed as one line, exit code 2."""


class ConfigError(MMPCError):
    """A recipe, key, value or reward name that does not exist or does not fit."""


class DataError(MMPCError):
    """Missing or unusable data."""


class ModelLoadError(MMPCError):
    """A model that cannot be loaded (no network, missing folder, wrong kind of checkpoint)."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    import difflib

    choices = sorted(set(choices))
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid choices: {', '.join(choices)}"


def run_cli(fn: Callable[[], int | None]) -> int:
    """Run a CLI body; turn MMPCError into a one-line message. MMPC_DEBUG=1 shows the traceback."""
    try:
        rc = fn()
    except MMPCError as e:
        if os.environ.get("MMPC_DEBUG"):
            raise
        print(f"mmpc-rl: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mmpc-rl: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
