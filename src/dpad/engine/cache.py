"""Cache policies: how much of the view each forward recomputes.

All three share one mechanism (:class:`~dpad.models.layers.KVCache` written by slot):

- ``NoCache``: every step runs the whole view (prefix + block + kept suffix).
- ``PrefixCache``: the block-start forward runs the whole view and caches its K/V; later steps
  run block + kept suffix and read the frozen prefix K/V.
- ``DualCache``: the block-start forward caches the whole view; later steps run only the block
  and overwrite the block's K/V in place; the kept suffix's K/V stay frozen for the block.

For a model whose logits are shifted (Dream), a cached step also feeds the last token before the
block so that the block's first position gets its logits from its left neighbour.
"""

from __future__ import annotations

import torch

from ..models.layers import KVCache


class View:
    """The positions a block's forwards see: prefix + block + kept suffix (sorted, absolute)."""

    def __init__(self, canvas: torch.Tensor, positions: torch.Tensor, block_start: int, block_end: int) -> None:
        self.positions = positions[None]  # [1, S]
        self.ids = canvas[positions][None].clone()
        self.bs, self.be = block_start, block_end  # the prefix is contiguous, so view index == position

    @property
    def size(self) -> int:
        return self.positions.shape[1]

    def sync_block(self, canvas: torch.Tensor) -> None:
        self.ids[0, self.bs:self.be] = canvas[self.bs:self.be]


class Runner:
    """Runs the model on a span of the view; counts forwards (NFE) and model time."""

    def __init__(self, model, mask_id: int, cfg_scale: float = 0.0, prompt_len: int = 0) -> None:  # noqa: ANN001
        self.model = model
        self.shift = model.args.logits_shift
        self.mask_id, self.cfg_scale, self.prompt_len = mask_id, cfg_scale, prompt_len
        self.nfe = 0
        self.model_time = 0.0
        self.sync = model.device.type == "cuda"

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, cache: KVCache | None, start: int,
                 rows: tuple[int, int]) -> torch.Tensor:
        import time

        t0 = time.perf_counter()
        out = self.model(ids, pos, cache=cache, cache_start=start, logits_range=rows)
        if self.sync:
            torch.cuda.synchronize(out.device)
        self.model_time += time.perf_counter() - t0
        self.nfe += 1
        return out

    def block_logits(self, view: View, start: int, end: int, cache: KVCache | None = None) -> torch.Tensor:
        """Feed view[start:end]; return the logits of the block's positions, shape [n, V].

        With a logit shift, position p reads the output at p-1; if p-1 is not in the fed span,
        the span's own first row stands in (the reference convention L'[0] = raw[0])."""
        bs, be, s = view.bs, view.be, self.shift
        first = max(bs - s, start)
        rows = (first - start, be - s - start)
        ids, pos = view.ids[:, start:end], view.positions[:, start:end]
        out = self._forward(ids, pos, cache, start, rows)
        if self.cfg_scale > 0:
            un_ids = ids.clone()
            lo, hi = start, min(end, self.prompt_len)
            if hi > lo:
                un_ids[:, : hi - lo] = self.mask_id
            un = self._forward(un_ids, pos, None, start, rows)
            out = un + (self.cfg_scale + 1) * (out - un)
        out = out[0]
        if bs - s < start:
            out = torch.cat([out[:1], out], dim=0)
        return out


class CachePolicy:
    name = "base"
    refreshes = False

    def refresh(self, runner: Runner, view: View) -> torch.Tensor:
        raise NotImplementedError

    def step(self, runner: Runner, view: View, feed_from_block: bool = False) -> torch.Tensor:
        raise NotImplementedError


class NoCache(CachePolicy):
    name = "none"

    def step(self, runner: Runner, view: View, feed_from_block: bool = False) -> torch.Tensor:
        return runner.block_logits(view, 0, view.size)


class PrefixCache(CachePolicy):
    name = "prefix"
    refreshes = True

    def refresh(self, runner: Runner, view: View) -> torch.Tensor:
        self.kv = runner.model.new_cache(1, view.size)
        return runner.block_logits(view, 0, view.size, self.kv)

    def _start(self, runner: Runner, view: View, feed_from_block: bool) -> int:
        return view.bs if feed_from_block else max(0, view.bs - runner.shift)

    def step(self, runner: Runner, view: View, feed_from_block: bool = False) -> torch.Tensor:
        return runner.block_logits(view, self._start(runner, view, feed_from_block), view.size, self.kv)


class DualCache(PrefixCache):
    name = "dual"

    def step(self, runner: Runner, view: View, feed_from_block: bool = False) -> torch.Tensor:
        return runner.block_logits(view, self._start(runner, view, feed_from_block), view.be, self.kv)


def from_config(cfg) -> CachePolicy:  # noqa: ANN001
    return {"none": NoCache, "prefix": PrefixCache, "dual": DualCache}[cfg.cache]()
