"""User-facing errors: the CLI prints their message as one line and exits non-zero."""

from __future__ import annotations

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
    """A decoding or model setting is outside its valid range."""


class CheckpointError(DpadError):
    """A checkpoint directory is missing, incomplete, corrupt or of an unknown type."""
