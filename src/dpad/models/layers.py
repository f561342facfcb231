"""Shared transformer layers for the bidirectional dLLMs (LLaDA, Dream).

One plain ``nn.Module`` tree. The forward takes token ids *and their absolute positions*:
rotary embeddings are computed at those positions, so a DPad view (prefix + block + a sorted
subset of suffix positions) runs with every token at its true RoPE position.

A :class:`KVCache` holds, per layer, keys (after RoPE) and values for the *slots* of one view.
A cached forward writes its own keys/values at ``[cache_start, cache_start + T)`` and attends
over every slot of the cache; that one mechanism gives both the prefix cache (write the block and
the kept suffix, read the frozen prefix) and the dual cache (write the block only).

Numerics follow the reference checkpoints exactly: RMSNorm normalises in float32 and casts back
before the gain; rotary tables are float32; LLaDA rotates q/k in float32
(``rope_full_precision``), Dream casts the float32 tables to the model dtype and rotates there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelArgs:
    """Architecture hyper-parameters shared by every model file."""

    arch: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    rope_theta: float
    norm_eps: float
    max_seq_len: int
    qkv_bias: bool = False
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (LLaDA-MoE)
    rope_full_precision: bool = True
    logits_shift: int = 0  # Dream predicts token j from position j-1's output
    sampler: str = "llada"  # the reference sampler family the engine follows: "llada" or "dream"
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    eot_token_id: int | None = None  # end of turn (chat checkpoints), if any
    pad_token_id: int | None = None
    moe: MoEArgs | None = None  # mixture-of-experts feed-forward (LLaDA-MoE); None = dense MLP
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with the reference float32 island: normalise in float32, cast back, scale.

    The normalisation ``h * rsqrt(mean(h**2) + eps)`` runs as one fused kernel
    (``F.rms_norm`` without weight), bit-identical to the three-op formula in float32
    (``tests/test_layers.py`` checks it)."""
    dtype = x.dtype
    h = F.rms_norm(x.float(), (x.shape[-1],), None, eps)
    return weight * h.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Rotary(nn.Module):
    """Half-split ("rotate_half") rotary embedding evaluated at arbitrary positions.

    With ``max_len`` the float32 cos/sin tables of positions ``0..max_len-1`` are computed once (as
    the reference computes them: position * inv_freq, then cos/sin) and a forward gathers the rows
    of its positions; positions beyond the table are an error.
    """

    def __init__(self, head_dim: int, theta: float, full_precision: bool, max_len: int = 0) -> None:
        super().__init__()
        self.theta = theta
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.full_precision = full_precision
        self.max_len = max_len
        # built here, not on first use: a compiled (CUDA-graph) forward must find them, never make them
        cos, sin = self._cos_signed_sin(self._angles(torch.arange(max_len))) if max_len else (None, None)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)

    def _angles(self, positions: torch.Tensor) -> torch.Tensor:
        angle = positions.to(torch.float32)[..., None] * self.inv_freq.float()
        return torch.cat((angle, angle), dim=-1)

    @staticmethod
    def _cos_signed_sin(emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and the rotate-half signed sin ``(-sin, +sin)`` of the two halves (see :meth:`apply`)."""
        half = emb.shape[-1] // 2
        sin = emb.sin()
        return emb.cos(), torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)

    def table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos / signed sin ``[max_len, head_dim]`` (float32), built with the module (buffers: they move
        with it). A module cast to another dtype gets its float32 tables back here."""
        if self.cos_table.dtype != torch.float32:
            inv = 1.0 / (self.theta ** (torch.arange(0, len(self.inv_freq) * 2, 2, dtype=torch.float32,
                                                     device=self.inv_freq.device) / (len(self.inv_freq) * 2)))
            self.inv_freq = inv
            cos, sin = self._cos_signed_sin(self._angles(torch.arange(self.max_len, device=inv.device)))
            self.cos_table, self.sin_table = cos, sin
        return self.cos_table, self.sin_table

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos and signed sin (the sin of the first half negated) of shape [B, 1, T, head_dim]
        for integer positions [B, T]: what :meth:`apply` takes."""
        if self.max_len:
            cos, sin = self.table()
            return F.embedding(positions, cos)[:, None], F.embedding(positions, sin)[:, None]
        return self._cos_signed_sin(self._angles(positions)[:, None])

    def apply(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """``t * cos + rotate_half(t) * sin`` with ``rotate_half(t) = (-t2, t1)``; the sign lives in the
        signed sin of :meth:`cos_sin` (``-t2 * s == t2 * -s`` exactly), so one copy of the halves is made."""
        dtype = t.dtype
        if self.full_precision:
            t = t.float()
        else:
            cos, sin = cos.to(dtype), sin.to(dtype)
        half = t.shape[-1] // 2
        rot = torch.cat((t[..., half:], t[..., :half]), dim=-1)
        return (t * cos + rot * sin).to(dtype)


class KVCache:
    """Per-layer keys (after RoPE) and values for the slots of one view: [B, H_kv, S, hd]."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, slots: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, n_kv_heads, slots, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.slots = slots

    def update(self, layer: int, start: int | torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v at slots ``[start, start + T)``, or at the slots a LongTensor ``start`` [T] lists."""
        if isinstance(start, torch.Tensor):
            self.k[layer].index_copy_(2, start, k)
            self.v[layer].index_copy_(2, start, v)
            return self.k[layer], self.v[layer]
        end = start + k.shape[2]
        if start < 0 or end > self.slots:
            raise ValueError(f"cache write [{start}, {end}) outside the cache's {self.slots} slots")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer], self.v[layer]

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only the given batch rows (finished rows leave the batch)."""
        self.k = [t[rows] for t in self.k]
        self.v = [t[rows] for t in self.v]


def _fuse_linears(*mods: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the weights (and biases) of linears that read the same input along the output
    dim, and make each module's parameters views of the fused tensors (one storage, no copy)."""
    w = torch.cat([m.weight.detach() for m in mods], dim=0)
    has_bias = mods[0].bias is not None
    b = torch.cat([m.bias.detach() for m in mods], dim=0) if has_bias else None
    o = 0
    for m in mods:
        n = m.weight.shape[0]
        rg = m.weight.requires_grad
        m.weight = nn.Parameter(w[o:o + n], requires_grad=rg)
        if has_bias:
            m.bias = nn.Parameter(b[o:o + n], requires_grad=rg)
        o += n
    return w, b


Rows = tuple[int, int] | torch.Tensor
"""Row selection along the sequence: a ``(start, end)`` range, a LongTensor of row indices shared by
the batch, or a LongTensor ``[B, n]`` of row indices per batch row."""


def take_rows(t: torch.Tensor, rows: Rows | None, dim: int) -> torch.Tensor:
    """Rows ``rows`` of ``t`` along ``dim`` (``t``'s first dim is the batch)."""
    if rows is None:
        return t
    if isinstance(rows, torch.Tensor):
        if rows.ndim == 1:
            return t.index_select(dim, rows)
        shape = [rows.shape[0]] + [1] * (t.ndim - 1)  # per batch row: gather along dim
        shape[dim] = rows.shape[1]
        size = list(t.shape)
        size[dim] = rows.shape[1]
        if t.shape[0] == 1 and rows.shape[0] > 1:  # a table shared by the batch
            size[0] = rows.shape[0]
            t = t.expand(size[0], *t.shape[1:])
        return t.gather(dim, rows.view(shape).expand(size))
    return t.narrow(dim, rows[0], rows[1] - rows[0])


def _use_fused(fused: torch.Tensor | None, weight: torch.Tensor) -> bool:
    """The fused matmul serves forwards that need no gradient of the separate weights."""
    return fused is not None and not (weight.requires_grad and torch.is_grad_enabled())


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        hd = args.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, hd
        self.q_proj = nn.Linear(args.dim, args.n_heads * hd, bias=args.qkv_bias)
        self.k_proj = nn.Linear(args.dim, args.n_kv_heads * hd, bias=args.qkv_bias)
        self.v_proj = nn.Linear(args.dim, args.n_kv_heads * hd, bias=args.qkv_bias)
        self.o_proj = nn.Linear(args.n_heads * hd, args.dim, bias=False)
        if args.qk_norm:
            self.q_norm = RMSNorm(hd, args.norm_eps)
            self.k_norm = RMSNorm(hd, args.norm_eps)
        self.register_buffer("wqkv", None, persistent=False)  # set by fuse()
        self.register_buffer("bqkv", None, persistent=False)

    def fuse(self) -> None:
        """One q/k/v matmul per forward (see :meth:`Transformer.fuse_projections`)."""
        self.wqkv, self.bqkv = _fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def query(self, x: torch.Tensor, rotary: Rotary, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Query heads ``[B, H, T, hd]`` as the forward attends with (per-head norm if any, then RoPE)."""
        q = self.q_proj(x).view(*x.shape[:2], self.n_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q = self.q_norm(q)
        return rotary.apply(q.transpose(1, 2), cos, sin)

    def key(self, x: torch.Tensor, rotary: Rotary, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Key heads ``[B, H_kv, T, hd]`` as the forward attends with (per-head norm if any, then RoPE)."""
        k = self.k_proj(x).view(*x.shape[:2], self.n_kv_heads, self.head_dim)
        if hasattr(self, "k_norm"):
            k = self.k_norm(k)
        return rotary.apply(k.transpose(1, 2), cos, sin)

    def _project(self, x: torch.Tensor, rotary: Rotary, cos: torch.Tensor, sin: torch.Tensor,
                 rows: Rows | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q of the query rows ``[B, H, Tq, hd]``, k and v of every row ``[B, H_kv, T, hd]``, exactly
        as :meth:`query` / :meth:`key` compute them (per-head norm if any, then RoPE)."""
        B, T, _ = x.shape
        H, Hk, hd = self.n_heads, self.n_kv_heads, self.head_dim
        if not _use_fused(self.wqkv, self.q_proj.weight):
            xq, cq, sq = take_rows(x, rows, 1), take_rows(cos, rows, 2), take_rows(sin, rows, 2)
            v = self.v_proj(x).view(B, T, Hk, hd).transpose(1, 2)
            return self.query(xq, rotary, cq, sq), self.key(x, rotary, cos, sin), v
        w, b = self.wqkv, self.bqkv
        norm = hasattr(self, "q_norm")
        if rows is None:
            qkv = F.linear(x, w, b).view(B, T, H + 2 * Hk, hd)
            v = qkv[:, :, H + Hk:].transpose(1, 2)
            if not norm:  # q and k rotated together
                qk = rotary.apply(qkv[:, :, :H + Hk].transpose(1, 2), cos, sin)
                return qk[:, :H], qk[:, H:], v
            q, k = qkv[:, :, :H], qkv[:, :, H:H + Hk]
            cq, sq = cos, sin
        else:
            nq = H * hd
            xq = take_rows(x, rows, 1)
            q = F.linear(xq, w[:nq], None if b is None else b[:nq]).view(B, xq.shape[1], H, hd)
            kv = F.linear(x, w[nq:], None if b is None else b[nq:]).view(B, T, 2 * Hk, hd)
            k, v = kv[:, :, :Hk], kv[:, :, Hk:].transpose(1, 2)
            cq, sq = take_rows(cos, rows, 2), take_rows(sin, rows, 2)
        if norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return rotary.apply(q.transpose(1, 2), cq, sq), rotary.apply(k.transpose(1, 2), cos, sin), v

    def forward(self, x: torch.Tensor, rotary: Rotary, cos: torch.Tensor, sin: torch.Tensor,
                layer: int, cache: KVCache | None, cache_start: int,
                key_mask: torch.Tensor | None, rows: Rows | None = None) -> torch.Tensor:
        """The attention output of rows ``rows`` (default: every row) of ``x``; the keys and values
        come from every row (and the cache)."""
        B = x.shape[0]
        q, k, v = self._project(x, rotary, cos, sin, rows)
        if cache is not None:
            k, v = cache.update(layer, cache_start, k, v)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        # grouped K/V heads (Dream: 7 query heads per K/V head) are read in place, never repeated
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.o_proj(out.transpose(1, 2).reshape(B, q.shape[2], -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.register_buffer("w_gate_up", None, persistent=False)  # set by fuse()

    def fuse(self) -> None:
        """One gate/up matmul per forward (see :meth:`Transformer.fuse_projections`)."""
        self.w_gate_up, _ = _fuse_linears(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_fused(self.w_gate_up, self.gate_proj.weight):
            gate, up = F.linear(x, self.w_gate_up).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class MoEArgs:
    n_experts: int
    top_k: int
    expert_dim: int
    layers: tuple[bool, ...]  # True: MoE feed-forward at this layer; False: dense MLP (hidden_dim)
    shared_dim: int | None = None


class SparseMoE(nn.Module):
    """Mixture-of-experts feed-forward with softmax top-k routing (LLaDA-MoE).

    Numerics follow the official LLaDA-MoE modelling code exactly:

    - router logits ``gate(h)`` in the model dtype, softmax over the experts in **float32**;
    - top-k of those probabilities; the selected probabilities are the weights, **not renormalised**
      (the official code fixes ``norm_topk_prob`` to False) and not scaled, then cast to the model dtype;
    - each expert is a SwiGLU MLP; a token's output is the sum over its selected experts of
      ``expert(h) * weight``, accumulated in ascending expert order (the official ``index_add_`` loop);
    - an optional shared expert (``shared_expert_intermediate_size``) is added to the routed sum.

    Tokens are gathered per expert (only the experts that some token selected run), so a batch of
    rows and a pruned DPad view cost only the tokens they hold."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        moe = args.moe
        assert moe is not None
        self.top_k = moe.top_k
        self.gate = nn.Linear(args.dim, moe.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(replace(args, hidden_dim=moe.expert_dim)) for _ in range(moe.n_experts))
        if moe.shared_dim is not None:
            self.shared = MLP(replace(args, hidden_dim=moe.shared_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = x.reshape(-1, shape[-1])
        probs = torch.softmax(self.gate(h), dim=-1, dtype=torch.float32)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        weights = weights.to(h.dtype)
        out = torch.zeros_like(h)
        by_slot = chosen.t()  # [k, N]: the official loop gathers slot-major
        for e in torch.unique(chosen).tolist():
            slot, tok = torch.where(by_slot == e)
            out.index_add_(0, tok, self.experts[e](h[tok]) * weights[tok, slot, None])
        if hasattr(self, "shared"):
            out = out + self.shared(h)
        return out.reshape(shape)


class Block(nn.Module):
    def __init__(self, args: ModelArgs, index: int = 0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(args.dim, args.norm_eps)
        self.attn = Attention(args)
        self.mlp_norm = RMSNorm(args.dim, args.norm_eps)
        if args.moe is not None and args.moe.layers[index]:
            self.mlp = SparseMoE(args)
        else:
            self.mlp = MLP(args)

    def forward(self, x, rotary, cos, sin, layer, cache, cache_start, key_mask, rows=None):  # noqa: ANN001
        """``rows``: the output of these rows only (keys and values still come from every row)."""
        h = self.attn(self.attn_norm(x), rotary, cos, sin, layer, cache, cache_start, key_mask, rows)
        x = take_rows(x, rows, 1) + h
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Bidirectional pre-norm transformer; the model files map checkpoints onto it."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.embed = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.rotary = Rotary(args.head_dim, args.rope_theta, args.rope_full_precision, args.max_seq_len)
        self.compiled = None  # a dpad.models.compiled.CompiledForward once compile() ran

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def new_cache(self, batch: int, slots: int) -> KVCache:
        if self.compiled is not None:
            return self.compiled.new_cache(batch, slots)
        a = self.args
        return KVCache(a.n_layers, batch, a.n_kv_heads, slots, a.head_dim, self.dtype, self.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
        cache_start: int = 0,
        key_mask: torch.Tensor | None = None,
        logits_range: Rows | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Raw logits ``[B, n, V]`` for rows ``logits_range`` (default: all) of the input.

        ``positions`` [B, T] are absolute RoPE positions (default ``0..T-1``). With ``cache``
        the keys/values of this input are written at slots ``cache_start..`` (or the slots a
        LongTensor ``cache_start`` lists) and attention runs over all cache slots; ``key_mask``
        [B, S] (True = attend) masks padded slots. ``logits_range``: ``(start, end)`` or a
        LongTensor of rows. After :meth:`compile`, forwards without autograd run compiled.
        """
        if self.compiled is not None and not torch.is_grad_enabled():
            return self.compiled(input_ids, positions, cache=cache, cache_start=cache_start, key_mask=key_mask,
                                 logits_range=logits_range, return_hidden=return_hidden)
        return self.forward_eager(input_ids, positions, cache=cache, cache_start=cache_start, key_mask=key_mask,
                                  logits_range=logits_range, return_hidden=return_hidden)

    def forward_eager(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, *,
                      cache: KVCache | None = None, cache_start: int | torch.Tensor = 0,
                      key_mask: torch.Tensor | None = None, logits_range: Rows | None = None,
                      return_hidden: bool = False) -> torch.Tensor:
        """:meth:`forward` without the compiled route (what ``torch.compile`` traces)."""
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = self.rotary.cos_sin(positions)
        x = self.embed(input_ids)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):  # the last layer computes only the logits rows
            x = layer(x, self.rotary, cos, sin, i, cache, cache_start, key_mask,
                      logits_range if i == last else None)
        if last < 0:
            x = take_rows(x, logits_range, 1)
        x = self.norm(x)
        if return_hidden:
            return x
        return self.head(x)

    def fuse_projections(self) -> Transformer:
        """Inference layout: one q/k/v matmul and one gate/up matmul per layer (and expert). The
        fused weights share storage with the ``q_proj``/``k_proj``/``v_proj``/``gate_proj``/``up_proj``
        parameters, so checkpoint names and ``state_dict`` are unchanged and in-place weight updates
        show through; a forward that needs gradients of those weights uses the separate matmuls."""
        for m in self.modules():
            if isinstance(m, (Attention, MLP)):
                m.fuse()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def init_weights(model: Transformer, seed: int = 0, std: float = 0.02) -> None:
    """Small-normal initialisation for training from scratch (output projections scaled by depth)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        with torch.no_grad():
            if p.ndim == 1:
                if name.endswith("bias"):
                    p.zero_()
                else:
                    p.fill_(1.0)
                continue
            s = std
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                s = std / math.sqrt(2 * model.args.n_layers)
            p.copy_(torch.randn(p.shape, generator=g) * s)
