"""Record the attention the current block's queries pay to every key, from the real forward.

:class:`AttentionRecorder` is a context manager that hooks a :class:`~dpad.models.Transformer`
without touching its code:

- a forward *pre*-hook on the Transformer reads the call's absolute ``positions``, ``cache``,
  ``cache_start`` and ``logits_range`` (the decode loop asks for the current block's logits only,
  so ``logits_range`` tells which input rows are the block's queries);
- a forward hook on every :class:`~dpad.models.layers.Attention` module receives the module's
  exact inputs (``x`` after the attention norm, the rotary tables ``cos``/``sin``, the layer's
  ``cache`` and ``key_mask``) and recomputes ``q`` (block rows only) and ``k`` exactly as
  ``Attention.forward`` does (projection, ``Rotary.apply`` with the given tables, the cache's keys
  after this forward's write, GQA repetition), then ``softmax(q k^T / sqrt(hd))`` with the key
  mask. The recomputed probabilities times ``V`` through ``o_proj`` reproduce the module's output
  (tested), so they are the attention the model really used.

Per forward it keeps, per layer, the attention of the block's queries averaged over heads and
queries: a ``[n_layers, S]`` array over the view's keys (``S`` = keys of the view, with their
absolute positions). Full per-query rows are kept only on request (``keep_rows=True``, tests).

:func:`recorded_decode` runs the engine's decode loop under a recorder.
:func:`by_distance` folds the records into attention by distance from the block end
(``d = key_position - block_end``, ``d = 0`` is the first suffix token).
"""

from __future__ import annotations

import inspect
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import DecodeConfig
from ..engine import GenerationOutput
from ..engine import suffix as suffix_mod
from ..engine.loop import check_length, decode
from ..errors import ConfigError
from ..models import LoadedModel
from ..models.layers import Attention, Transformer
from .common import Prompt, check_analysis_config, env_info, response_text, write_csv, write_json

_ATTN_SIG = inspect.signature(Attention.forward)
_MODEL_SIG = inspect.signature(Transformer.forward)


@dataclass
class ForwardAttention:
    """The block queries' attention in one forward."""

    block_start: int
    block_end: int
    key_positions: np.ndarray  # [S] absolute positions of the keys (the view)
    attn: np.ndarray  # [n_layers, S]: mean over heads and block queries
    heads: np.ndarray | None = None  # [n_layers, H, S] float32: mean over block queries (head_blocks)
    rows: list[np.ndarray] | None = None  # per layer [H, Q, S] (keep_rows=True only)

    @property
    def suffix(self) -> np.ndarray:
        """Boolean mask over keys: the suffix (positions >= block end)."""
        return self.key_positions >= self.block_end

    def mass(self) -> dict[str, np.ndarray]:
        """Per layer, the attention mass on the prefix, the block itself and the suffix."""
        kp = self.key_positions
        return {"prefix": self.attn[:, kp < self.block_start].sum(1),
                "block": self.attn[:, (kp >= self.block_start) & (kp < self.block_end)].sum(1),
                "suffix": self.attn[:, kp >= self.block_end].sum(1)}


@dataclass
class _Call:
    key_positions: torch.Tensor
    query_rows: tuple[int, int]
    query_positions: torch.Tensor
    layers: dict[int, torch.Tensor] = field(default_factory=dict)
    heads: dict[int, torch.Tensor] = field(default_factory=dict)
    rows: dict[int, torch.Tensor] = field(default_factory=dict)
    want_heads: bool = False


class AttentionRecorder:
    """Context manager recording the current block's attention in every forward of ``model``.

    ``block_length`` (the decode config's) fixes the query rows as the ``block_length`` rows that
    end where the requested logits end (corrected for Dream's logit shift). Without it the query
    rows are exactly ``logits_range`` (or all rows when the forward asks for all logits).
    Batch size 1 only (the decode loop's). ``head_blocks`` keeps per-head (query-averaged)
    attention for the forwards of the first ``head_blocks`` blocks seen (``-1``: every block;
    memory ``n_layers * H * S`` floats per forward). ``keep_rows`` also stores the per-head,
    per-query probability rows over all keys (``n_layers * H * Q * S`` floats per forward; tests).
    """

    def __init__(self, model: Transformer, block_length: int | None = None, keep_rows: bool = False,
                 head_blocks: int = 0) -> None:
        if not isinstance(model, Transformer):
            raise ConfigError(f"AttentionRecorder needs a dpad Transformer, got {type(model).__name__}")
        self.model = model
        self.block_length = block_length
        self.keep_rows = keep_rows
        self.head_blocks = head_blocks
        self._head_ends: set[int] = set()
        self.records: list[ForwardAttention] = []
        self._handles: list[Any] = []
        self._call: _Call | None = None
        self._view_positions: torch.Tensor | None = None
        self._shift = int(model.args.logits_shift)

    # ------------------------------------------------------------------ hooks
    def __enter__(self) -> AttentionRecorder:
        self._handles.append(self.model.register_forward_pre_hook(self._pre_model, with_kwargs=True))
        self._handles.append(self.model.register_forward_hook(self._post_model, with_kwargs=True))
        for mod in self.model.modules():
            if isinstance(mod, Attention):
                self._handles.append(mod.register_forward_hook(self._post_attention, with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._call = None

    def _pre_model(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        b = _MODEL_SIG.bind(module, *args, **kwargs)
        b.apply_defaults()
        ids: torch.Tensor = b.arguments["input_ids"]
        B, T = ids.shape
        if B != 1:
            raise ConfigError(f"AttentionRecorder records batch size 1 (the decode loop's), got {B}")
        positions = b.arguments["positions"]
        pos = torch.arange(T, device=ids.device) if positions is None else positions[0]
        cache = b.arguments["cache"]
        start = int(b.arguments["cache_start"])
        if cache is None or getattr(cache, "self_contained", False):  # attends over its own tokens
            keys = pos
            if cache is not None:  # a refresh: these are the view's slots, read by the next steps
                self._view_positions = pos.clone()
        else:
            if start == 0 and T == cache.slots:
                self._view_positions = pos.clone()
            if self._view_positions is None or len(self._view_positions) != cache.slots:
                raise ConfigError("a cached forward came before the forward that filled its cache: "
                                  "cannot tell the key positions")
            keys = self._view_positions
        rng = b.arguments["logits_range"]
        if rng is None:
            r0, r1 = 0, T
        else:
            if isinstance(rng, torch.Tensor) and rng.ndim == 2:  # the engine's rows per batch row
                r0, r1 = int(rng[0, 0]), int(rng[0, -1]) + 1
            else:
                r0, r1 = int(rng[0]), int(rng[1])
            if self.block_length is not None:
                r1 = min(T, r1 + self._shift)
                r0 = max(0, r1 - self.block_length)
        qpos = pos[r0:r1].detach().cpu()
        want = False
        if self.head_blocks and len(qpos):
            be = int(qpos.max()) + 1
            if be not in self._head_ends and (self.head_blocks < 0 or len(self._head_ends) < self.head_blocks):
                self._head_ends.add(be)
            want = be in self._head_ends
        self._call = _Call(key_positions=keys.detach().cpu(), query_rows=(r0, r1), query_positions=qpos,
                           want_heads=want)

    def _post_attention(self, module: Attention, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        call = self._call
        if call is None:
            return
        b = _ATTN_SIG.bind(module, *args, **kwargs)
        probs = block_attention_probs(module, b.arguments["x"], b.arguments["rotary"], b.arguments["cos"],
                                      b.arguments["sin"], b.arguments["layer"], b.arguments["cache"],
                                      b.arguments["key_mask"], call.query_rows)
        layer = int(b.arguments["layer"])
        head_mean = probs[0].mean(dim=1)  # [H, S]
        call.layers[layer] = head_mean.mean(0).double().cpu()  # [S]
        if call.want_heads:
            call.heads[layer] = head_mean.float().cpu()
        if self.keep_rows:
            call.rows[layer] = probs[0].double().cpu()

    def _post_model(self, module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
        call, self._call = self._call, None
        if call is None or not call.layers:
            return
        n = len(call.layers)
        attn = torch.stack([call.layers[i] for i in range(n)]).numpy()
        qp = call.query_positions
        self.records.append(ForwardAttention(
            block_start=int(qp.min()), block_end=int(qp.max()) + 1,
            key_positions=call.key_positions.numpy().astype(np.int64), attn=attn,
            heads=torch.stack([call.heads[i] for i in range(n)]).numpy() if call.heads else None,
            rows=[call.rows[i].numpy() for i in range(n)] if self.keep_rows else None))


def block_attention_probs(module: Attention, x: torch.Tensor, rotary: nn.Module, cos: torch.Tensor,
                          sin: torch.Tensor, layer: int, cache: Any, key_mask: torch.Tensor | None,
                          query_rows: tuple[int, int]) -> torch.Tensor:
    """Attention probabilities ``[B, H, Q, S]`` of the query rows, recomputed as ``Attention.forward``
    computes them (called after the forward, so a cache already holds this forward's keys)."""
    B, T, _ = x.shape
    r0, r1 = query_rows
    hd = module.head_dim
    with torch.no_grad():
        q = module.query(x[:, r0:r1], rotary, cos[:, :, r0:r1], sin[:, :, r0:r1])
        if cache is None or getattr(cache, "self_contained", False):
            k = module.key(x, rotary, cos, sin)
        else:
            k = cache.k[layer]
        if module.n_kv_heads != module.n_heads:
            k = k.repeat_interleave(module.n_heads // module.n_kv_heads, dim=1)
        work = torch.promote_types(q.dtype, torch.float32)
        scores = (q.to(work) @ k.to(work).transpose(-1, -2)) / math.sqrt(hd)
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return scores.softmax(dim=-1)


# ---------------------------------------------------------------------------- aggregation
@dataclass
class DistanceProfile:
    """Attention of the block's queries to the suffix by distance from the block end.

    ``mean[l, d]``: mean over forwards (steps of every block that has a suffix token at distance
    ``d``) of the head- and query-averaged attention on the key at distance ``d``; ``count[d]``:
    how many forwards contributed. ``per_block[block_end]``: the same for one block (``[L, D]``,
    NaN where the block's suffix is shorter).
    """

    mean: np.ndarray
    count: np.ndarray
    per_block: dict[int, np.ndarray]
    block_steps: dict[int, int]
    mass: dict[str, np.ndarray]  # per layer: mean attention mass on prefix / block / suffix

    @property
    def n_layers(self) -> int:
        return self.mean.shape[0]

    @property
    def max_distance(self) -> int:
        return self.mean.shape[1]

    def layer_mean(self) -> np.ndarray:
        return self.mean.mean(0)


def by_distance(records: list[ForwardAttention]) -> DistanceProfile:
    """Fold forward records into a :class:`DistanceProfile`."""
    if not records:
        raise ConfigError("no attention was recorded (did the decode run any forward?)")
    n_layers = records[0].attn.shape[0]
    D = max(int((r.key_positions[r.suffix] - r.block_end).max(initial=-1)) + 1 for r in records)
    D = max(D, 1)
    total = np.zeros((n_layers, D))
    count = np.zeros(D)
    blk_sum: dict[int, np.ndarray] = defaultdict(lambda: np.zeros((n_layers, D)))
    blk_cnt: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(D))
    steps: dict[int, int] = defaultdict(int)
    mass: dict[str, list[np.ndarray]] = defaultdict(list)
    for r in records:
        s = r.suffix
        d = r.key_positions[s] - r.block_end
        np.add.at(total, (slice(None), d), r.attn[:, s])
        np.add.at(count, d, 1)
        np.add.at(blk_sum[r.block_end], (slice(None), d), r.attn[:, s])
        np.add.at(blk_cnt[r.block_end], d, 1)
        steps[r.block_end] += 1
        for k, v in r.mass().items():
            mass[k].append(v)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        per_block = {be: np.where(blk_cnt[be] > 0, blk_sum[be] / np.maximum(blk_cnt[be], 1), np.nan)
                     for be in sorted(blk_sum)}
    return DistanceProfile(mean=mean, count=count, per_block=per_block, block_steps=dict(steps),
                           mass={k: np.mean(v, axis=0) for k, v in mass.items()})


def block_position_attention(records: list[ForwardAttention], block_end: int,
                             heads: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(key_positions, attn)``: the mean over one block's forwards of the block queries' attention
    on every key of the view (the view is fixed within a block); ``attn`` is ``[n_layers, S]``, or
    ``[n_layers, H, S]`` with ``heads=True`` (needs records made with ``head_blocks``)."""
    recs = [r for r in records if r.block_end == block_end]
    if not recs:
        raise ConfigError(f"no forward recorded for the block ending at {block_end}")
    kp = recs[0].key_positions
    for r in recs[1:]:
        if not np.array_equal(r.key_positions, kp):
            raise ConfigError(f"the view changed within the block ending at {block_end}")
    if heads:
        if any(r.heads is None for r in recs):
            raise ConfigError(f"no per-head attention recorded for the block ending at {block_end}")
        return kp, np.mean([r.heads for r in recs], axis=0)
    return kp, np.mean([r.attn for r in recs], axis=0)


# ---------------------------------------------------------------------------- recorded decode
def recorded_decode(lm: LoadedModel, prompt: Prompt, cfg: DecodeConfig,
                    policy: suffix_mod.SuffixPolicy | None = None,
                    keep_rows: bool = False, head_blocks: int = 0) -> tuple[GenerationOutput, list[ForwardAttention]]:
    """Decode ``prompt`` with the engine's loop while recording the block queries' attention
    (see :class:`~dpad.analysis.attention.AttentionRecorder` for ``keep_rows``/``head_blocks``)."""
    check_analysis_config(cfg)
    check_length(len(prompt.ids), cfg, lm.args.max_seq_len)
    with AttentionRecorder(lm.model, block_length=cfg.block_length, keep_rows=keep_rows,
                           head_blocks=head_blocks) as rec:
        out = decode(lm.model, prompt.ids, cfg, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id,
                     eot_id=lm.eot_token_id,
                     suffix_policy=policy)
    return out, rec.records



# ---------------------------------------------------------------------------- command
def analyze_attention(lm: Any, prompt: Any, cfg: Any, out: Any, label: str = "") -> dict[str, Any]:
    """``dpad analyze attention``: decode ``prompt`` (a :class:`~dpad.analysis.common.Prompt`) with
    ``cfg`` while recording; write ``attention.png``, ``attention.csv`` (layer, distance,
    mean_attention, n_forwards; layer ``avg`` = layer average), ``attention_blocks.csv`` (per block),
    ``attention_heads.csv`` (first block, per head) and ``attention.json`` (summary). Returns the
    summary."""
    import time
    from pathlib import Path

    from . import plots

    t0 = time.perf_counter()
    output, records = recorded_decode(lm, prompt, cfg, head_blocks=1)
    decode_s = time.perf_counter() - t0
    prof = by_distance(records)
    out = Path(out)
    P = len(prompt.ids)
    avg = np.nanmean(prof.mean, axis=0)
    rows: list[list[Any]] = []
    for layer in range(prof.n_layers):
        rows += [[layer, d, float(prof.mean[layer, d]), int(prof.count[d])] for d in range(prof.max_distance)]
    rows += [["avg", d, float(avg[d]), int(prof.count[d])] for d in range(prof.max_distance)]
    write_csv(out / "attention.csv", ["layer", "distance", "mean_attention", "n_forwards"], rows)
    brows: list[list[Any]] = []
    for i, (be, a) in enumerate(prof.per_block.items()):
        n = int(np.sum(np.isfinite(a[0])))
        for layer in range(prof.n_layers):
            brows += [[i, be, layer, d, float(a[layer, d])] for d in range(n)]
        bav = a.mean(0)
        brows += [[i, be, "avg", d, float(bav[d])] for d in range(n)]
    write_csv(out / "attention_blocks.csv", ["block", "block_end", "layer", "distance", "mean_attention"], brows)
    uniform = float(np.mean([1.0 / len(r.key_positions) for r in records]))
    shown = {be: a for be, a in prof.per_block.items() if np.isfinite(a).any()}  # blocks with a suffix
    blocks = [f"{(be - P - 1) // cfg.block_length} ({prof.block_steps[be]} steps)" for be in shown]
    name = label or "model"
    title = (f"{name}: block queries' attention to the masked suffix ({cfg.method_name()}, "
             f"gen {cfg.gen_length}, block {cfg.block_length}, prompt {P} tokens, {len(records)} forwards)")
    be0 = min(r.block_end for r in records)
    kp0, heads0 = block_position_attention(records, be0, heads=True)  # [n_layers, H, S]
    suf0 = kp0 >= be0
    d0 = kp0[suf0] - be0
    head_grid = np.full((heads0.shape[0] * heads0.shape[1], int(d0.max(initial=-1)) + 1), np.nan)
    head_grid[:, d0] = heads0[:, :, suf0].reshape(head_grid.shape[0], -1)
    write_csv(out / "attention_heads.csv", ["layer", "head", "distance", "mean_attention"],
              [[layer, h, int(d), float(heads0[layer, h, i])] for layer in range(heads0.shape[0])
               for h in range(heads0.shape[1]) for i, d in zip(np.nonzero(suf0)[0], d0, strict=True)])
    plots.attention_figure(out / "attention.png", prof.mean, shown, blocks, uniform, title, prof.mass,
                           head_grid=head_grid, n_heads=heads0.shape[1])
    near = [d for d in (0, 8, 16, 32, 64, 128) if d < prof.max_distance]
    summary = {
        "model": name, "prompt": prompt.text, "prompt_tokens": P, "config": cfg.to_dict(),
        "response": response_text(lm, output), "response_tokens": output.response_length,
        "nfe": output.nfe, "forwards_recorded": len(records), "decode_seconds": round(decode_s, 2),
        "mass": {k: {"per_layer": v.tolist(), "layer_avg": float(v.mean())} for k, v in prof.mass.items()},
        "uniform_attention_per_token": uniform,
        "layer_avg_attention_at_distance": {str(d): float(avg[d]) for d in near},
        "env": env_info(lm),
        "files": ["attention.png", "attention.csv", "attention_blocks.csv", "attention_heads.csv", "attention.json"],
    }
    if prompt.solution is not None:
        from ..scoring import gsm8k_score

        summary["correct"] = bool(gsm8k_score(summary["response"], prompt.solution)["strict"])
    write_json(out / "attention.json", summary)
    return summary
