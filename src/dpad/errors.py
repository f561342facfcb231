"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def short_repr(v: Any, limit: int = 80) -> str:
    """``repr(v)`` for an error message: cut to ``limit`` characters, safe for any value (deeply
    nested, huge, with lone surrogates: the result is ASCII-safe)."""
    try:
        r = ascii(v)
    except (RecursionError, ValueError, MemoryError):
        r = f"<{type(v).__name__}>"
    return r if len(r) <= limit else r[: limit - 3] + "..."


class DpadError(Exception):
    """Base class for errors caused by bad input (a clear message, no traceback needed)."""


class ConfigError(DpadError, ValueError):
    """A decoding or model setting is outside its valid range. ``field``: the setting's name, where
    one is to blame (a DecodeConfig field, for example); the server reports it as the error's param."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class CheckpointError(DpadError):
    """A checkpoint directory is missing, incomplete, corrupt or of an unknown type."""


def writable_dir(path: str | Path, flag: str = "--out", create: bool = True) -> Path:
    """Check, before any work, that files can be written in the directory ``path`` (created with its
    parents when ``create``; otherwise checked through its nearest existing ancestor, leaving no
    trace); a ConfigError naming ``flag`` when they cannot."""
    p = Path(path)
    probe = p
    try:
        if create:
            p.mkdir(parents=True, exist_ok=True)
        else:
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            if not probe.is_dir():
                raise NotADirectoryError(20, "Not a directory", str(probe))
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ConfigError(f"{flag} {short_repr(str(p))} is not a writable directory "
                          f"({e.strerror or type(e).__name__}); pick another {flag}") from e
    return p
