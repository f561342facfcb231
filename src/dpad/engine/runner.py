"""The model runner: builds one ragged batched forward for rows of any settings, lengths and blocks,
owns the canvases and the K/V, and calls the model (the only caller).

State per request, on the model's device, in row tables (one row per running request):

- ``canvas [rows, L + 1]``: the request's prompt and generated ids at their own positions
  (column = RoPE position, from 0); the last column is a trash cell that padded writes go to;
- ``vcols [rows, Wv]``: the canvas column of each slot of the request's current view (prefix +
  block, then the kept suffix: DPad's view);
- ``KVPool``: per layer ``[rows, H_kv, slots, head_dim]`` K/V of the view slots, for requests
  with a KV cache.

A forward feeds each row a contiguous span of its view (:mod:`dpad.engine.cache`), right-padded
to the longest; padded tokens are masked as keys and their outputs never read. Two kinds:

- *full*: the fed span is the whole view (no-cache steps, and refreshes, which also store their
  K/V in the pool); attention runs over the fed tokens only;
- *cached*: the fed span is part of the view; attention runs over the row's stored K/V with this
  forward's K/V written at their slots (a scratch slot takes the padded tokens' writes).

Everything per step is a fixed number of tensor operations whatever the number of rows: the
row tables are gathered by index, never looped over in Python.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

GROW = 64  # table widths grow in steps of this many columns


def _round(n: int) -> int:
    return -(-n // GROW) * GROW


_SPARE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (k, v) tables of a closed pool
_SPARE_LOCK = threading.Lock()


RECYCLE_MAX_BYTES = 1 << 30
"""The largest K/V tables a closed pool leaves to the model's next one (larger ones are freed: a big
model's forwards dwarf the page faults, and the memory is not held between decodes)."""


def _recyclable(model) -> bool:  # noqa: ANN001
    """Pools of an eager CPU model pass their tables on: fresh memory there costs page faults on every
    decode, while a GPU's caching allocator keeps freed blocks itself."""
    return model.device.type == "cpu" and getattr(model, "compiled", None) is None


class KVPool:
    """Keys (after RoPE) and values of the view slots of every cached request, one table row each.

    ``rows`` x ``slots`` is the part in use: slots a row has not written read as masked keys, so they
    hold zeros (a finite value). On an eager CPU model a pool starts from the tables the model's last
    closed pool left (:meth:`close`), zeroing only what it comes to use: no fresh memory, whose page
    faults cost more there than the decode's own writes."""

    def __init__(self, model) -> None:  # noqa: ANN001
        self.model = model
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.rows = 0
        self.slots = 0
        self._spare: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        if _recyclable(model):
            with _SPARE_LOCK:
                spare = _SPARE.pop(model, None)
            if spare is not None and spare[0][0].dtype == model.dtype:
                self._spare = spare

    def ensure(self, rows: int, slots: int) -> None:
        """Room for ``rows`` table rows of ``slots`` slots: grows (rows doubling, slots by half), never
        shrinks. Its size is the peak of the rows that ran at once, each sized for its longest view so
        far, until :meth:`close`."""
        if rows <= self.rows and slots <= self.slots:
            return
        a = self.model.args
        R = max(rows, 2 * self.rows) if rows > self.rows else self.rows
        S = max(_round(max(slots, self.slots * 3 // 2)), self.slots) if slots > self.slots else self.slots
        if not self.k and self._spare is not None:
            k, v = self._spare
            self._spare = None
            if k[0].shape[0] >= R and k[0].shape[2] >= S:
                self.k, self.v = k, v
        if self.k and self.k[0].shape[0] >= R and self.k[0].shape[2] >= S:
            for t in self.k + self.v:  # the newly used part starts at zero
                t[: self.rows, :, self.slots:S].zero_()
                t[self.rows:R, :, :S].zero_()
        else:
            shape = (R, a.n_kv_heads, S, a.head_dim)
            self.k = [self._grown(shape, self.k[i] if self.k else None) for i in range(a.n_layers)]
            self.v = [self._grown(shape, self.v[i] if self.v else None) for i in range(a.n_layers)]
            comp = getattr(self.model, "compiled", None)
            if comp is not None and comp.static_kv:  # CUDA graphs read the pool in place, never copy it in
                for t in self.k + self.v:
                    torch._dynamo.mark_static_address(t)
        self.rows, self.slots = R, S

    def _grown(self, shape: tuple[int, ...], old: torch.Tensor | None) -> torch.Tensor:
        """A table of ``shape`` holding the used part of ``old`` in its corner, zeros elsewhere."""
        t = torch.empty(shape, dtype=self.model.dtype, device=self.model.device)
        if old is None:
            return t.zero_()
        r, s = self.rows, self.slots
        t[:r, :, :s] = old[:r, :, :s]
        t[:r, :, s:].zero_()
        t[r:].zero_()
        return t

    def close(self) -> None:
        """Let go of the tables (an eager CPU model's next pool takes them over)."""
        size = sum(t.numel() * t.element_size() for t in self.k + self.v)
        if self.k and _recyclable(self.model) and size <= RECYCLE_MAX_BYTES:
            with _SPARE_LOCK:
                old = _SPARE.get(self.model)
                if old is None or old[0][0].numel() <= self.k[0].numel():  # the larger one stays
                    _SPARE[self.model] = (self.k, self.v)
        self.k, self.v, self.rows, self.slots, self._spare = [], [], 0, 0, None


class _Store:
    """The cache of a *full* forward: attention over the fed tokens; the K/V of the batch rows
    ``src`` are stored in pool rows ``dst`` (slots ``0..T-1``)."""

    self_contained = True  # attention reads only this forward's keys (for hooks that recompute it)

    def __init__(self, pool: KVPool, src: torch.Tensor | None, dst: tuple[int, int] | torch.Tensor | None) -> None:
        self.pool, self.src, self.dst = pool, src, dst

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dst is not None:
            T = k.shape[2]
            for pool, new in ((self.pool.k[layer], k), (self.pool.v[layer], v)):
                if self.src is not None:
                    new = new.index_select(0, self.src)
                if isinstance(self.dst, tuple):
                    pool[self.dst[0]:self.dst[1], :, :T] = new
                else:
                    pool[:, :, :T].index_copy_(0, self.dst, new)
        return k, v


class _Read:
    """The cache of a *cached* forward: the rows' stored K/V (``width`` slots), this forward's K/V
    written at ``slots`` [n, T] (``write_slots``). ``rows``: pool rows (a ``(first, end)`` range is read in place:
    its writes land on slots no later step reads; an index tensor is read as a copy)."""

    def __init__(self, pool: KVPool, rows: tuple[int, int] | torch.Tensor, slots: torch.Tensor, width: int,
                 write_at: int | None = None) -> None:
        self.pool, self.rows, self.write_slots, self.width = pool, rows, slots, width
        self.write_at = write_at
        """Every row's writes fill slots ``write_at..`` (one start, no padding): a slice copy, not indexed writes."""
        self._batch = None if write_at is not None else torch.arange(slots.shape[0], device=slots.device)[:, None]

    self_contained = False

    @property
    def slots(self) -> int:
        return self.width

    @property
    def k(self) -> list[torch.Tensor]:
        """Per layer, the rows' keys as attention read them (for a range of rows read in place,
        after this forward's writes)."""
        return [self._rows(t) for t in self.pool.k]

    def _rows(self, t: torch.Tensor) -> torch.Tensor:
        t = t[:, :, : self.width]
        if isinstance(self.rows, tuple):
            return t[self.rows[0]:self.rows[1]]
        return t.index_select(0, self.rows)

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K, V = self._rows(self.pool.k[layer]), self._rows(self.pool.v[layer])
        if self.write_at is not None:
            a, T = self.write_at, k.shape[2]
            K[:, :, a:a + T] = k
            V[:, :, a:a + T] = v
            return K, V
        # per row its T slots: indexed writes of whole heads (no index tensor of K's size, as a scatter takes)
        b, slots = self._batch, self.write_slots
        K[b, :, slots] = k.transpose(1, 2)
        V[b, :, slots] = v.transpose(1, 2)
        return K, V


def _rows_arg(rows: list[int], dev: torch.device, as_tensor: bool) -> tuple[int, int] | torch.Tensor:
    """Pool rows as a ``(first, end)`` range when they are consecutive (read and written in place),
    else (or for a compiled model, where no Python number may reach the graph) an index tensor."""
    if not as_tensor and rows == list(range(rows[0], rows[0] + len(rows))):
        return rows[0], rows[0] + len(rows)
    return torch.tensor(rows, device=dev)


@dataclass
class RowInput:
    """One row of a forward, as host numbers: its canvas row ``crow`` and pool row ``kvrow`` (-1:
    none), the fed view span ``[start, start + length)``, the view's ``size``, the block's first
    column ``bs`` and ``block_length``, the prompt length, whether the forward stores the row's K/V
    (a refresh) and its classifier-free guidance scale (0: none; > 0 adds an unconditional row)."""

    crow: int
    kvrow: int
    start: int
    length: int
    size: int
    bs: int
    block_length: int
    prompt_len: int
    store: bool = False
    cfg_scale: float = 0.0


class Runner:
    """Row tables + the batched forward. ``forward_full`` / ``forward_cached`` return the logits of
    every row's block positions ``[n, max block length, V]`` and the canvas ids of the block."""

    def __init__(self, model, mask_id: int) -> None:  # noqa: ANN001
        self.model = model
        self.dev = model.device
        self.shift = model.args.logits_shift
        self.mask_id = mask_id
        self.canvas = torch.zeros((0, 0), dtype=torch.long, device=self.dev)
        self.vcols = torch.zeros((0, 0), dtype=torch.long, device=self.dev)
        self.pool = KVPool(model)
        self.free_crows: list[int] = []
        self.free_kvrows: list[int] = []
        self.used_crows = 0
        self.used_kvrows = 0
        self.forwards = 0
        self.model_time = 0.0
        self.last_forwards: list[tuple[int, int]] = []  # (rows, tokens fed) of each forward of the last step
        self.cuda = self.dev.type == "cuda"
        comp = getattr(model, "compiled", None)
        self.compiled = comp is not None
        self.bucket: int | None = None if comp is None else comp.bucket
        """Compiled: no Python number reaches the graph (pool rows by index, the whole pool width
        read); bucketed: fed lengths padded to multiples of the bucket, key masks always given."""

    # ------------------------------------------------------------------ row tables
    def _grow(self, t: torch.Tensor, rows: int, cols: int, fill: int) -> torch.Tensor:
        if rows <= t.shape[0] and cols <= t.shape[1]:
            return t
        R, C = max(rows, 2 * t.shape[0]), max(_round(cols), t.shape[1])
        out = torch.full((R, C), fill, dtype=t.dtype, device=self.dev)
        out[: t.shape[0], : t.shape[1]] = t
        return out

    def add_row(self, ids: list[int], length: int, cached: bool) -> tuple[int, int]:
        """A canvas row holding ``ids`` then masks up to ``length``; a pool row if ``cached``.
        Returns (canvas row, pool row or -1)."""
        if self.free_crows:
            crow = self.free_crows.pop()
        else:
            crow, self.used_crows = self.used_crows, self.used_crows + 1
        width = max(length + 1, self.canvas.shape[1] if self.canvas.numel() else 0)
        if width > self.canvas.shape[1] and self.canvas.shape[1]:  # the trash column moves to the end
            self.canvas[:, -1] = self.mask_id
        self.canvas = self._grow(self.canvas, crow + 1, width, self.mask_id)
        row = torch.full((self.canvas.shape[1],), self.mask_id, dtype=torch.long)
        row[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.canvas[crow] = row.to(self.dev)
        kvrow = -1
        if cached:
            if self.free_kvrows:
                kvrow = self.free_kvrows.pop()
            else:
                kvrow, self.used_kvrows = self.used_kvrows, self.used_kvrows + 1
        return crow, kvrow

    def release(self, crow: int, kvrow: int) -> None:
        self.free_crows.append(crow)
        self.free_crows.sort(reverse=True)  # lowest rows first: groups stay contiguous
        if kvrow >= 0:
            self.free_kvrows.append(kvrow)
            self.free_kvrows.sort(reverse=True)
        if len(self.free_crows) == self.used_crows:  # nothing runs: rows restart from 0 (memory is kept)
            self.free_crows, self.free_kvrows, self.used_crows, self.used_kvrows = [], [], 0, 0

    def set_view(self, crow: int, kvrow: int, cols: torch.Tensor) -> None:
        """The canvas columns of a row's view slots for its new block (prefix + block + kept suffix)."""
        S = len(cols)
        self.vcols = self._grow(self.vcols, max(crow + 1, self.canvas.shape[0]), S + 1, 0)
        self.vcols[crow, :S] = cols.to(self.dev)

    @property
    def trash(self) -> int:
        return self.canvas.shape[1] - 1

    # ------------------------------------------------------------------ forwards
    def _meta(self, rows: Sequence[RowInput], unc: bool) -> torch.Tensor:
        m = [[r.crow, r.start, r.length, r.size, r.bs, r.block_length, r.prompt_len, 0] for r in rows]
        if unc:
            m += [[r.crow, r.start, r.length, r.size, r.bs, r.block_length, r.prompt_len, 1]
                  for r in rows if r.cfg_scale > 0]
        return torch.tensor(m, dtype=torch.long).to(self.dev, non_blocking=True)

    def _inputs(self, rows: Sequence[RowInput], meta: torch.Tensor, T: int):  # noqa: ANN202
        """Fed ids, positions and view slots [n, T] (when some row is shorter than T, or lengths are
        bucketed, its padded tokens get position 0, the mask id and ``fvalid`` False; else ``fvalid``
        is None), the
        rows' canvases, and the rows of the logits: ``(start, end)`` when every row's block sits at
        one offset of its fed span (batch 1, rows in step), else per row [n, max block length]."""
        crow, start, length, _, bs, _, plen, unc = meta.unbind(1)
        ar = torch.arange(T, device=self.dev)
        fidx = start[:, None] + ar
        vc = self.vcols.index_select(0, crow)
        cv = self.canvas.index_select(0, crow)
        fvalid = None
        if self.bucket is not None or any(r.length != T for r in rows):
            fvalid = ar[None] < length[:, None]
            pos = vc.gather(1, fidx.clamp(max=vc.shape[1] - 1)).masked_fill(~fvalid, 0)
            ids = cv.gather(1, pos).masked_fill(~fvalid, self.mask_id)
        else:
            pos = vc.gather(1, fidx)
            ids = cv.gather(1, pos)
        if any(r.cfg_scale > 0 for r in rows):  # unconditional rows: the prompt masked
            ids = ids.masked_fill(unc.bool()[:, None] & (pos < plen[:, None]), self.mask_id)
        BL = max(r.block_length for r in rows)
        offs = {r.bs - self.shift - r.start for r in rows}
        off = min(offs)
        if not self.compiled and len(offs) == 1 and off >= 0 and off + BL <= T:
            return ids, pos, fidx, fvalid, cv, (off, off + BL)
        arb = torch.arange(BL, device=self.dev)
        lrows = (bs - self.shift - start)[:, None] + arb
        return ids, pos, fidx, fvalid, cv, lrows.clamp(0, T - 1)

    def _block(self, rows: Sequence[RowInput], meta: torch.Tensor, cv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(rows)
        bs, bl = meta[:n, 4], meta[:n, 5]
        BL = max(r.block_length for r in rows)
        arb = torch.arange(BL, device=self.dev)
        cols = bs[:, None] + arb
        if any(r.block_length != BL for r in rows):
            cols = torch.where(arb[None] < bl[:, None], cols, self.trash)
        return cols, cv[:n].gather(1, cols)

    def _call(self, rows: Sequence[RowInput], ids: torch.Tensor, pos: torch.Tensor, cache, key_mask,  # noqa: ANN001
              lrows: torch.Tensor | tuple[int, int]) -> tuple[torch.Tensor, float | torch.cuda.Event]:
        if self.cuda:
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
        else:
            c0 = time.perf_counter()
        out = self.model(ids, pos, cache=cache, cache_start=0, key_mask=key_mask, logits_range=lrows)
        self.forwards += 1
        self.last_forwards.append((len(rows), sum(r.length for r in rows)))  # (compiled: padding rows included)
        if self.cuda:
            t1.record()
            return out, (t0, t1)
        return out, time.perf_counter() - c0

    def _guided(self, rows: Sequence[RowInput], out: torch.Tensor) -> torch.Tensor:
        """Classifier-free guidance: cond rows first, then one unconditional row per guided row."""
        n = len(rows)
        g = [i for i, r in enumerate(rows) if r.cfg_scale > 0]
        if not g:
            return out
        idx = torch.tensor(g, device=self.dev)
        scale = torch.tensor([rows[i].cfg_scale for i in g], dtype=out.dtype, device=self.dev)[:, None, None]
        cond, un = out.index_select(0, idx), out[n:]
        return out[:n].index_copy(0, idx, un + (scale + 1) * (cond - un))

    def _width(self, T: int) -> int:
        return T if self.bucket is None else -(-T // self.bucket) * self.bucket

    def _bucket_rows(self, rows: Sequence[RowInput]) -> Sequence[RowInput]:
        """Compiled: the rows padded to a power of two with copies of the first row that store
        nothing and whose outputs are dropped, so a decode whose rows come and go reuses few graphs."""
        n = len(rows)
        nb = 1 << (n - 1).bit_length()
        if not self.compiled or nb == n:
            return rows
        return list(rows) + [replace(rows[0], store=False, cfg_scale=0.0)] * (nb - n)

    def forward_full(self, rows: Sequence[RowInput]):  # noqa: ANN201
        """Rows fed their whole view; rows with ``store`` keep their K/V in the pool."""
        real = len(rows)
        rows = self._bucket_rows(rows)
        unc = any(r.cfg_scale > 0 for r in rows)
        meta = self._meta(rows, unc)
        T = self._width(max(r.length for r in rows))
        ids, pos, _, fvalid, cv, lrows = self._inputs(rows, meta, T)
        store = [i for i, r in enumerate(rows) if r.store]
        cache = None
        if store:  # one allocation for every row that starts a block now (rows are added before they start)
            self.pool.ensure(self.used_kvrows, max(r.size for r in rows) + 1)
            dst = [rows[i].kvrow for i in store]
            src = None if len(store) == len(rows) else torch.tensor(store, device=self.dev)
            cache = _Store(self.pool, src, _rows_arg(dst, self.dev, self.compiled))
        elif self.bucket is not None:
            cache = _Store(self.pool, None, None)  # the caller's padding stands (see CompiledForward)
        out, timing = self._call(rows, ids, pos, cache, fvalid, lrows)
        if unc:
            self.forwards += 1  # the unconditional rows count as a forward of their own (NFE)
        cols, block = self._block(rows, meta, cv)
        return self._guided(rows, out)[:real], cols[:real], block[:real], timing

    def forward_cached(self, rows: Sequence[RowInput]):  # noqa: ANN201
        """Rows fed part of their view, reading their stored K/V for the rest."""
        real = len(rows)
        rows = self._bucket_rows(rows)
        meta = self._meta(rows, False)
        T = self._width(max(r.length for r in rows))
        S = max(r.size for r in rows)
        ids, pos, fidx, fvalid, cv, lrows = self._inputs(rows, meta, T)
        ragged = self.compiled or fvalid is not None or any(r.size != S for r in rows)
        width = self.pool.slots if self.compiled else S + 1 if ragged else S
        slots = fidx.masked_fill(~fvalid, width - 1) if fvalid is not None else fidx
        prow = _rows_arg([r.kvrow for r in rows], self.dev, self.compiled)
        km = None
        if ragged:
            km = torch.arange(width, device=self.dev)[None] < meta[:, 3:4]
        # one start for every row and no padding (batch 1, rows in step): the writes are one slice
        at = rows[0].start if not ragged and all(r.start == rows[0].start for r in rows) else None
        out, timing = self._call(rows, ids, pos, _Read(self.pool, prow, slots, width, at), km, lrows)
        cols, block = self._block(rows, meta, cv)
        return out[:real], cols[:real], block[:real], timing

    def write(self, rows: Sequence[RowInput], cols: torch.Tensor, ids: torch.Tensor) -> None:
        """Write each row's block ids ``ids`` at canvas columns ``cols`` (padded columns: the trash)."""
        crow = torch.tensor([r.crow for r in rows], device=self.dev)
        self.canvas.index_put_((crow[:, None], cols), ids)

    @staticmethod
    def elapsed(timing: float | tuple) -> float:
        """Seconds of a forward (CUDA: read from its events, after the step's one sync)."""
        if isinstance(timing, tuple):
            return timing[0].elapsed_time(timing[1]) / 1000.0
        return timing
