"""Cache policies: how much of the view each forward recomputes.

All three share one mechanism (:class:`~dpad.models.layers.KVCache` written by slot):

- ``NoCache``: every step runs the whole view (prefix + block + kept suffix).
- ``PrefixCache``: the block-start forward runs the whole view and caches its K/V; later steps
  run block + kept suffix and read the frozen prefix K/V.
- ``DualCache``: the block-start forward caches the whole view; later steps run only the block
  and overwrite the block's K/V in place; the kept suffix's K/V stay frozen for the block.

For a model whose logits are shifted (Dream), a cached step also feeds the last token before the
block so that the block's first position gets its logits from its left neighbour.

Everything is batched: a :class:`View` holds ``n`` rows. Rows are left-padded so that every row's
block sits at the same view columns; rows whose kept suffixes differ in size are right-padded.
Padded slots are masked out as attention keys (``key_mask``), so each row computes what it would
compute alone. A cache step writes only slots that the same step reads back, never slots a later
step reads, so a row that leaves the batch mid-block can simply be dropped from the cache
(:meth:`CachePolicy.select_rows`); every block start builds a fresh cache.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ..models.layers import KVCache


class View:
    """The positions a block's forwards see, for ``n`` rows: ``ids``/``positions`` [n, S].

    Column ``j`` of the view is column ``j + offset`` of the padded canvas for the prefix and the
    block (so ``bs``/``be`` are the block's view columns); the kept suffix follows the block.
    ``key_mask`` [n, S] (True = real slot) is None when no row has padding.
    """

    def __init__(self, ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor | None,
                 block_start: int, block_end: int, rows: list[int], offset: int = 0,
                 prompt_end: int = 0) -> None:
        self.ids, self.positions, self.key_mask = ids, positions, key_mask
        self.bs, self.be = block_start, block_end
        self.offset = offset
        self.prompt_end = prompt_end  # view columns [0, prompt_end) hold (padded) prompts
        self.set_rows(rows)

    def set_rows(self, rows: list[int]) -> None:
        self.rows = list(rows)
        self.rows_t = torch.tensor(self.rows, dtype=torch.long, device=self.ids.device)

    @classmethod
    def build(cls, canvas: torch.Tensor, rows: Sequence[int], pads: Sequence[int], kept: Sequence[torch.Tensor],
              block_start: int, block_end: int, prompt_end: int, filler: int) -> View:
        """Rows ``rows`` of the left-padded canvas [N, W]: prefix + block (canvas columns
        ``[offset, block_end)``) then each row's kept suffix (canvas columns, sorted)."""
        dev = canvas.device
        n = len(rows)
        off = min(pads[r] for r in rows)
        width = block_end - off
        ks = [len(k) for k in kept]
        S = width + max(ks)
        rows_t = torch.tensor(list(rows), dtype=torch.long, device=dev)
        cols = torch.arange(off, block_end, device=dev)
        ids = torch.full((n, S), filler, dtype=torch.long, device=dev)
        ids[:, :width] = canvas[rows_t][:, off:block_end]
        pos = torch.zeros((n, S), dtype=torch.long, device=dev)
        need_mask = any(pads[r] > off for r in rows) or min(ks) != max(ks)
        mask = torch.ones((n, S), dtype=torch.bool, device=dev) if need_mask else None
        for i, r in enumerate(rows):
            p = pads[r]
            pos[i, :width] = (cols - p).clamp(min=0)
            k = kept[i].to(dev)
            if len(k):
                ids[i, width:width + len(k)] = canvas[r, k]
                pos[i, width:width + len(k)] = k - p
            if mask is not None:
                mask[i, : p - off] = False
                mask[i, width + len(k):] = False
        return cls(ids, pos, mask, block_start - off, block_end - off, list(rows), off, prompt_end - off)

    @property
    def size(self) -> int:
        return self.positions.shape[1]

    @property
    def n(self) -> int:
        return self.positions.shape[0]

    def sync_block(self, canvas: torch.Tensor) -> None:
        """Copy the block's current ids from the canvas [N, W]."""
        self.ids[:, self.bs:self.be] = canvas[self.rows_t, self.bs + self.offset:self.be + self.offset]

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the view rows ``keep`` (indices into the current rows)."""
        self.ids, self.positions = self.ids[keep], self.positions[keep]
        if self.key_mask is not None:
            self.key_mask = self.key_mask[keep]
        self.set_rows([self.rows[i] for i in keep.tolist()])


class Runner:
    """Runs the model on a span of the view; counts forwards (NFE) and model time, per batch
    (``nfe``, ``model_time``) and per row (``row_nfe``, ``row_model_time``: the forwards a row
    took part in)."""

    def __init__(self, model, mask_id: int, cfg_scale: float = 0.0, n_rows: int = 1) -> None:  # noqa: ANN001
        self.model = model
        self.shift = model.args.logits_shift
        self.mask_id, self.cfg_scale = mask_id, cfg_scale
        self.nfe = 0
        self.model_time = 0.0
        self.row_nfe = [0] * n_rows
        self.row_model_time = [0.0] * n_rows
        self.sync = model.device.type == "cuda"

    def _forward(self, view: View, ids: torch.Tensor, pos: torch.Tensor, cache: KVCache | None, start: int,
                 end: int, rows: tuple[int, int]) -> torch.Tensor:
        km = view.key_mask
        if km is not None and cache is None:
            km = km[:, start:end]
        t0 = time.perf_counter()
        out = self.model(ids, pos, cache=cache, cache_start=start, key_mask=km, logits_range=rows)
        if self.sync:
            torch.cuda.synchronize(out.device)
        dt = time.perf_counter() - t0
        self.model_time += dt
        self.nfe += 1
        for r in view.rows:
            self.row_nfe[r] += 1
            self.row_model_time[r] += dt
        return out

    def block_logits(self, view: View, start: int, end: int, cache: KVCache | None = None) -> torch.Tensor:
        """Feed view[:, start:end]; return the logits of the block's positions, shape [n, B, V].

        With a logit shift, position p reads the output at p-1; if p-1 is not in the fed span,
        the span's own first row stands in (the reference convention L'[0] = raw[0])."""
        bs, be, s = view.bs, view.be, self.shift
        first = max(bs - s, start)
        rows = (first - start, be - s - start)
        ids, pos = view.ids[:, start:end], view.positions[:, start:end]
        out = self._forward(view, ids, pos, cache, start, end, rows)
        if self.cfg_scale > 0:
            un_ids = ids.clone()
            lo, hi = start, min(end, view.prompt_end)
            if hi > lo:
                un_ids[:, : hi - lo] = self.mask_id
            un = self._forward(view, un_ids, pos, None, start, end, rows)
            out = un + (self.cfg_scale + 1) * (out - un)
        if bs - s < start:
            out = torch.cat([out[:, :1], out], dim=1)
        return out


class CachePolicy:
    name = "base"
    refreshes = False
    kv: KVCache | None = None

    def refresh(self, runner: Runner, view: View) -> torch.Tensor:
        raise NotImplementedError

    def step(self, runner: Runner, view: View, feed_from_block: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def select_rows(self, keep: torch.Tensor) -> None:
        """Drop the cache rows of view rows that leave the batch (``keep``: the rows that stay)."""
        if self.kv is not None:
            self.kv.select_rows(keep)


class NoCache(CachePolicy):
    name = "none"

    def step(self, runner: Runner, view: View, feed_from_block: bool = False) -> torch.Tensor:
        return runner.block_logits(view, 0, view.size)


class PrefixCache(CachePolicy):
    name = "prefix"
    refreshes = True

    def refresh(self, runner: Runner, view: View) -> torch.Tensor:
        self.kv = runner.model.new_cache(view.n, view.size)
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
