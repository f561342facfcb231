"""The decode engine: a step-wise :class:`Engine` (requests join and leave between forwards) composed
of separate policies; ``decode_batch`` / ``decode`` run a closed batch through it."""

from .engine import BlockEvent, Engine, Finished, GenerationOutput
from .loop import decode, decode_batch

__all__ = ["BlockEvent", "Engine", "Finished", "GenerationOutput", "decode", "decode_batch"]
