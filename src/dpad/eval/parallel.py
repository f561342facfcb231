"""Data parallelism for evaluation: one process per device under ``torchrun`` / ``accelerate launch``.

Each rank decodes the samples ``index % world_size == rank`` (:func:`shard`), the per-sample
records are gathered with ``all_gather_object`` (:meth:`DistContext.gather`) and rank 0 writes
one merged result. The process group always uses ``gloo`` (only small Python objects travel,
also when each rank decodes on its own GPU ``cuda:LOCAL_RANK``); the launcher's
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``)
configures it. Without those variables everything is a single-process no-op.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

__all__ = ["DistContext", "init_distributed", "shard"]

T = TypeVar("T")


@dataclass
class DistContext:
    """Where this process stands in a data-parallel run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_for(self, device: str | None) -> str | None:
        """Map ``auto``/``cuda`` to this rank's GPU (``cuda:LOCAL_RANK``) when distributed."""
        if not self.enabled:
            return device
        import torch

        if device in (None, "auto"):
            return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            return f"cuda:{self.local_rank}"
        return device

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialized_here:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.initialized_here = False


def init_distributed(device: str | None = None, timeout_s: float = 3 * 3600) -> DistContext:
    """Join the launcher's process group (gloo) when ``WORLD_SIZE`` > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    import torch
    import torch.distributed as dist

    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank)
    if dist.is_initialized():
        return ctx
    dev = ctx.device_for(device)
    use_cuda = dev is not None and str(dev).startswith("cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(torch.device(dev))
    dist.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    ctx.initialized_here = True
    return ctx


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items this rank handles: every ``world_size``-th one, starting at ``rank``."""
    return list(items[rank::world_size])
