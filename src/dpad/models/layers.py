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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .moe import MoEArgs


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
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    moe: MoEArgs | None = None  # mixture-of-experts feed-forward (LLaDA-MoE); None = dense MLP
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm with the reference float32 island: normalise in float32, cast back, scale."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class Rotary(nn.Module):
    """Half-split ("rotate_half") rotary embedding evaluated at arbitrary positions."""

    def __init__(self, head_dim: int, theta: float, full_precision: bool) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.full_precision = full_precision

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos/sin of shape [B, 1, T, head_dim] for integer positions [B, T]."""
        angle = positions.to(torch.float32)[..., None] * self.inv_freq.float()
        emb = torch.cat((angle, angle), dim=-1)[:, None]
        return emb.cos(), emb.sin()

    def apply(self, t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        dtype = t.dtype
        if self.full_precision:
            t = t.float()
        else:
            cos, sin = cos.to(dtype), sin.to(dtype)
        half = t.shape[-1] // 2
        rot = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
        return (t * cos + rot * sin).to(dtype)


class KVCache:
    """Per-layer keys (after RoPE) and values for the slots of one view: [B, H_kv, S, hd]."""

    def __init__(self, n_layers: int, batch: int, n_kv_heads: int, slots: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (batch, n_kv_heads, slots, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.slots = slots

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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

    def forward(self, x: torch.Tensor, rotary: Rotary, cos: torch.Tensor, sin: torch.Tensor,
                layer: int, cache: KVCache | None, cache_start: int,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.query(x, rotary, cos, sin)
        k = self.key(x, rotary, cos, sin)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if cache is not None:
            k, v = cache.update(layer, cache_start, k, v)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.up_proj = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.down_proj = nn.Linear(args.hidden_dim, args.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs, index: int = 0) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(args.dim, args.norm_eps)
        self.attn = Attention(args)
        self.mlp_norm = RMSNorm(args.dim, args.norm_eps)
        if args.moe is not None and args.moe.layers[index]:
            from .moe import SparseMoE

            self.mlp = SparseMoE(args)
        else:
            self.mlp = MLP(args)

    def forward(self, x, rotary, cos, sin, layer, cache, cache_start, key_mask):  # noqa: ANN001
        x = x + self.attn(self.attn_norm(x), rotary, cos, sin, layer, cache, cache_start, key_mask)
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
        self.rotary = Rotary(args.head_dim, args.rope_theta, args.rope_full_precision)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def new_cache(self, batch: int, slots: int) -> KVCache:
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
        logits_range: tuple[int, int] | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor:
        """Raw logits ``[B, n, V]`` for rows ``logits_range`` (default: all) of the input.

        ``positions`` [B, T] are absolute RoPE positions (default ``0..T-1``). With ``cache``
        the keys/values of this input are written at slots ``cache_start..`` and attention runs
        over all cache slots; ``key_mask`` [B, S] (True = attend) masks padded slots.
        """
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        cos, sin = self.rotary.cos_sin(positions)
        x = self.embed(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, self.rotary, cos, sin, i, cache, cache_start, key_mask)
        if logits_range is not None:
            x = x[:, logits_range[0]:logits_range[1]]
        x = self.norm(x)
        if return_hidden:
            return x
        return self.head(x)

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
