"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class DpadError(Exception):
    """Base class for errors caused by bad input (a clear message, no traceback needed)."""


class ConfigError(DpadError, ValueError):
    """A decoding or model setting is outside its valid range."""


class CheckpointError(DpadError):
    """A checkpoint directory is missing, incomplete, corrupt or of an unknown type."""
