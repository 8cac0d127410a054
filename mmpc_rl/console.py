"""A quiet console: a library warning that repeats every batch (SD3.5's "The following part of your input was
truncated because CLIP can only handle sequences up to 77 tokens: [...]", once per prompt, its quote full of
`<|endoftext|>` padding) is shown once, its quote shortened; the full record of a run is in its files, not here."""

from __future__ import annotations

import logging
import re
import warnings

LIBRARIES = ("diffusers", "transformers")  # each logs through its own handler on its root logger
MAX_CHARS = 300
_RUN = re.compile(r"(<\|?[A-Za-z_]{1,24}\|?>)(?:\s*\1)+")  # a special token repeated: <|endoftext|><|endoftext|>...


def shorten(message: str) -> str:
    text = _RUN.sub(lambda m: f"{m.group(1)} x{m.group(0).count(m.group(1))}", message)
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + "..."


class OnceFilter(logging.Filter):
    """Lets a library's warning through the first time its text up to the first colon (what it says, not the data it
    quotes) is seen; shortens what it lets through. Messages below WARNING, and every record of another logger (a
    handler may be shared, e.g. the root's), pass unchanged."""

    def __init__(self, libraries: tuple[str, ...] = LIBRARIES) -> None:
        super().__init__()
        self.libraries = libraries
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.name.split(".", 1)[0] not in self.libraries:
            return True
        message = record.getMessage()
        key = message.split(": ", 1)[0][:120]
        if key in self.seen:
            return False
        self.seen.add(key)
        record.msg, record.args = shorten(message) + " (shown once)", None
        return True


def show_deprecations_once() -> None:
    """Show each deprecation notice (FutureWarning) once per process, whichever library line raises it. Not the
    "once" warnings filter: Python clears its memory of what was shown whenever any code changes the filters, which
    libraries do in the middle of a run, and TRL's generate raises the same notice at every step."""
    original = warnings.showwarning
    if getattr(original, "mmpc_rl_once", False):
        return
    seen: set[str] = set()

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FutureWarning):
            if str(message) in seen:
                return None
            seen.add(str(message))
        return original(message, category, filename, lineno, file, line)

    showwarning.mmpc_rl_once = True
    warnings.showwarning = showwarning


def quiet_repeated_warnings(libraries: tuple[str, ...] = LIBRARIES) -> OnceFilter:
    """Install one OnceFilter on the handlers of each library's root logger (made when the library is imported, so
    call it after that), and show each deprecation notice once (show_deprecations_once)."""
    show_deprecations_once()
    once = OnceFilter(libraries)
    for name in libraries:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, OnceFilter) for f in handler.filters):
                handler.addFilter(once)
    return once
