"""The decode engine: one loop (``loop.decode``) composed of separate policies."""

from .loop import GenerationOutput, decode

__all__ = ["GenerationOutput", "decode"]
