"""The decode engine: one loop (``loop.decode_batch``; ``loop.decode`` is its one-row case)
composed of separate policies."""

from .loop import BlockEvent, GenerationOutput, decode, decode_batch

__all__ = ["BlockEvent", "GenerationOutput", "decode", "decode_batch"]
