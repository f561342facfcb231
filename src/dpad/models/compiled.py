"""The compiled fast path: the model forward through ``torch.compile`` (inductor).

Two ways to reuse compiled graphs across the shapes a decode produces (DPad views, cached steps
and batches change length from block to block):

- ``bucket=None`` (the CPU default): dynamic shapes. One graph per kind of call (with / without a
  KV cache, with / without a key mask) serves every length; the arithmetic is the eager forward's
  (inductor fuses the element-wise work), no padding.
- ``bucket=N`` (the CUDA default, needed for CUDA graphs): static shapes. The input is padded to a
  multiple of ``N`` tokens and a KV cache to a multiple of ``N`` slots plus ``N`` scratch slots;
  padded tokens sit at masked key slots (their keys are never attended, their rows never read)
  and write their keys/values to the scratch slots, so every real row computes what it computes
  unpadded. The requested logits rows are gathered by index, the cache written by slot index, so
  no Python int reaches the graph: a graph is reused for every call of the same padded shape.
  With ``mode="reduce-overhead"`` (CUDA) the graphs run as CUDA graphs on static KV buffers
  (one pooled buffer per padded cache shape, marked static).

Masked padding changes the floating-point reduction order of attention only by summing exact
zeros, so float64 decodes are token-identical to eager (tested); lower precisions may differ in
the last bits, as batching does. ``stats()`` reports the graphs compiled (the first compile and
every recompile) and the time the calls that compiled took.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from .layers import KVCache, Rows, Transformer

MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def round_up(n: int, m: int) -> int:
    return max(m, -(-n // m) * m)


class PaddedCache(KVCache):
    """A KV cache with ``real`` usable slots inside ``slots`` = round_up(real) + scratch slots."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], real: int) -> None:
        self.k, self.v = k, v
        self.slots = k[0].shape[2] if k else 0
        self.real = real


class CompiledForward:
    """Callable with the signature of :meth:`Transformer.forward_eager`, compiled."""

    def __init__(self, model: Transformer, mode: str | None = None, bucket: int | None = None,
                 backend: str = "inductor", dynamic: bool | None = None, verbose: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"compile mode {mode!r} is not one of {', '.join(map(str, MODES))}")
        if bucket is not None and (not isinstance(bucket, int) or bucket < 1):
            raise ValueError(f"bucket={bucket!r} must be a positive integer (tokens) or None")
        if mode == "reduce-overhead" and bucket is None:
            raise ValueError("mode='reduce-overhead' (CUDA graphs) needs static shapes: give bucket=N")
        self.model, self.mode, self.bucket, self.backend_name = model, mode, bucket, backend
        self.verbose = verbose
        self.graphs = 0
        self.compile_time_s = 0.0
        self.first_compile_s: float | None = None
        self.calls = 0
        self._pool: dict[tuple, PaddedCache] = {}
        self.static_kv = mode == "reduce-overhead"
        dyn = (bucket is None) if dynamic is None else dynamic
        # every padded shape is its own graph: allow enough of them (dynamo's default stops at 8)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        torch._dynamo.config.accumulated_recompile_limit = max(
            torch._dynamo.config.accumulated_recompile_limit, 1024)

        def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> Any:
            self.graphs += 1
            if backend == "eager":
                return gm.forward
            if backend == "aot_eager":
                from torch._dynamo.backends.common import aot_autograd

                return aot_autograd(fw_compiler=lambda g, _: g.forward)(gm, example_inputs)
            from torch._inductor.compile_fx import compile_fx

            patches: dict[str, Any] = {}
            if mode == "reduce-overhead":
                patches["triton.cudagraphs"] = True
            elif mode in ("max-autotune", "max-autotune-no-cudagraphs"):
                patches["max_autotune"] = True
                patches["triton.cudagraphs"] = mode == "max-autotune"
            return compile_fx(gm, example_inputs, config_patches=patches)

        self.fn = torch.compile(model.forward_eager, backend=counting_backend, dynamic=dyn)

    # ----------------------------------------------------------------- caches
    def new_cache(self, batch: int, slots: int) -> KVCache:
        a, m = self.model.args, self.model
        if self.bucket is None:
            return KVCache(a.n_layers, batch, a.n_kv_heads, slots, a.head_dim, m.dtype, m.device)
        total = round_up(slots, self.bucket) + self.bucket
        key = (batch, total)
        if self.static_kv and key in self._pool:  # static buffers: the same addresses every block
            c = self._pool[key]
            return PaddedCache(c.k, c.v, slots)
        shape = (batch, a.n_kv_heads, total, a.head_dim)
        k = [torch.zeros(shape, dtype=m.dtype, device=m.device) for _ in range(a.n_layers)]
        v = [torch.zeros(shape, dtype=m.dtype, device=m.device) for _ in range(a.n_layers)]
        if self.static_kv:
            for t in k + v:
                torch._dynamo.mark_static_address(t)
            self._pool[key] = PaddedCache(k, v, slots)
        return PaddedCache(k, v, slots)

    # ----------------------------------------------------------------- calls
    def _pad(self, ids: torch.Tensor, positions: torch.Tensor | None, cache: KVCache | None,
             cache_start: int | torch.Tensor, key_mask: torch.Tensor | None,
             logits_range: Rows | None) -> tuple:
        if cache is not None and not isinstance(cache, PaddedCache):  # the engine's caches: padded by the engine
            return ids, positions, cache, cache_start, key_mask, logits_range
        B, T = ids.shape
        dev = ids.device
        Tb = round_up(T, self.bucket)
        pad = Tb - T
        if positions is None:
            positions = torch.arange(T, device=dev).expand(B, T)
        ids_b = F.pad(ids, (0, pad))
        pos_b = F.pad(positions, (0, pad))
        rows = logits_range
        if rows is None:
            rows = torch.arange(T, device=dev)
        elif not isinstance(rows, torch.Tensor):
            rows = torch.arange(rows[0], rows[1], device=dev)
        if cache is None:
            km = torch.zeros((B, Tb), dtype=torch.bool, device=dev)
            km[:, :T] = True if key_mask is None else key_mask
            return ids_b, pos_b, None, 0, km, rows
        if not isinstance(cache, PaddedCache):  # the engine's caches: the engine padded the call itself
            return ids, positions, cache, cache_start, key_mask, logits_range
        if isinstance(cache_start, torch.Tensor):
            real_slots = cache_start
        else:
            if cache_start < 0 or cache_start + T > cache.real:
                raise ValueError(f"cache write [{cache_start}, {cache_start + T}) outside the cache's "
                                 f"{cache.real} slots")
            real_slots = torch.arange(cache_start, cache_start + T, device=dev)
        slots = torch.cat([real_slots, torch.arange(cache.slots - pad, cache.slots, device=dev)])
        km = torch.zeros((B, cache.slots), dtype=torch.bool, device=dev)
        km[:, :cache.real] = True if key_mask is None else key_mask[:, :cache.real]
        return ids_b, pos_b, cache, slots, km, rows

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, *,
                 cache: KVCache | None = None, cache_start: int | torch.Tensor = 0,
                 key_mask: torch.Tensor | None = None, logits_range: Rows | None = None,
                 return_hidden: bool = False) -> torch.Tensor:
        if self.bucket is not None:
            input_ids, positions, cache, cache_start, key_mask, logits_range = self._pad(
                input_ids, positions, cache, cache_start, key_mask, logits_range)
        g0 = self.graphs
        t0 = time.perf_counter()
        out = self.fn(input_ids, positions, cache=cache, cache_start=cache_start, key_mask=key_mask,
                      logits_range=logits_range, return_hidden=return_hidden)
        self.calls += 1
        if self.graphs != g0:
            if input_ids.device.type == "cuda":
                torch.cuda.synchronize(input_ids.device)
            dt = time.perf_counter() - t0
            self.compile_time_s += dt
            if self.first_compile_s is None:
                self.first_compile_s = dt
                if self.verbose:
                    print(f"[dpad] compiled the model forward in {dt:.1f} s (first call; torch.compile "
                          f"{self.backend_name}, mode={self.mode or 'default'}, "
                          f"{'bucket ' + str(self.bucket) if self.bucket else 'dynamic shapes'})",
                          file=sys.stderr)
        return out

    def stats(self) -> dict[str, Any]:
        """``graphs``: graphs compiled so far (``recompiles`` = graphs - 1); ``compile_time_s``:
        wall time of the calls that compiled; ``calls``: compiled forwards run."""
        return {"graphs": self.graphs, "recompiles": max(0, self.graphs - 1),
                "compile_time_s": round(self.compile_time_s, 3),
                "first_compile_s": None if self.first_compile_s is None else round(self.first_compile_s, 3),
                "calls": self.calls, "mode": self.mode or "default", "bucket": self.bucket,
                "backend": self.backend_name}


def compile_model(model: Transformer, **options: Any) -> Transformer:
    """Route ``model``'s inference forwards through ``torch.compile`` (see :class:`CompiledForward`
    for ``options``: mode, bucket, backend). Returns the model."""
    model.compiled = CompiledForward(model, **options)
    return model


def default_options(device: torch.device) -> dict[str, Any]:
    """CPU: dynamic shapes (no padding). CUDA: buckets of 32 tokens (a dual-cache step of a 32-token
    block fills one exactly) + CUDA graphs."""
    if device.type == "cuda":
        return {"mode": "reduce-overhead", "bucket": 32}
    return {"mode": None, "bucket": None}
