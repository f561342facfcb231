"""One request's decoding state: what a row of a batch is, for as long as it runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..config import DecodeConfig
from .cache import CachePolicy
from .suffix import SuffixPolicy
from .unmask import Unmasker


@dataclass(eq=False)
class Request:
    """A prompt, its :class:`DecodeConfig`, its own policies and generators, and its progress.

    ``tag`` is the caller's name for it (``BlockEvent.row``: the prompt's index in
    ``decode_batch``). ``gen`` mirrors the generated part of the canvas on the host, refreshed
    from the step's one sync."""

    id: int
    tag: Any
    prompt: list[int]
    cfg: DecodeConfig
    seed: int
    suffix: SuffixPolicy
    cache: CachePolicy
    unmasker: Unmasker
    batched: bool
    on_block: Callable[[Any], bool | None] | None = None
    is_cancelled: Callable[[], bool] | None = None
    crow: int = -1
    kvrow: int = -1
    block: int = -1
    step: int = 0
    cached_steps: int = 0
    refreshing: bool = False
    notified: bool = False  # the current block's completion was reported
    block_over: bool = False  # the current block is done; the next one starts at the next step
    bs: int = 0
    view_size: int = 0
    committed: int = 0  # generated columns that are final
    nfe: int = 0
    decoded: int = 0  # generated positions committed so far (the canvas's, not yet final ones included)
    block_nfe0: int = 0
    forwards_per_block: list[int] = field(default_factory=list)
    kept_per_block: list[list[int]] = field(default_factory=list)
    model_time: float = 0.0
    t_add: float = field(default_factory=time.perf_counter)
    t_done: float = 0.0
    stopped: bool = False
    cancelled: bool = False
    done: bool = False
    gen: list[int] = field(default_factory=list)

    @property
    def P(self) -> int:
        return len(self.prompt)

    @property
    def BL(self) -> int:
        return self.cfg.block_length

    @property
    def be(self) -> int:
        return self.bs + self.cfg.block_length

    @property
    def last_block(self) -> bool:
        return self.block == self.cfg.num_blocks - 1
