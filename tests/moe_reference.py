"""An independent plain-torch LLaDA-MoE forward: the official order of operations, for bit-exact tests.

Transcribed from the official HF-hub modelling code (``modeling_lladamoe.py``, class
``LLaDAMoEModelLM``, loaded with ``from_pretrained(..., torch_dtype=...)`` so attention resolves
to ``sdpa``; see ``fixtures/golden/llada-moe-tiny/README.md``). It uses nothing from dpad: it reads
``config.json`` and the safetensors shards itself and calls only torch functions, in the order and
dtypes the official code uses them:

- ``LLaDAMoERMSNorm``: cast to float32, ``x * rsqrt(mean(x^2) + eps)``, cast back to the model dtype,
  then ``weight * x`` (so a float64 model normalises in float32);
- attention: q/k/v projections (no bias), per-head RMSNorm on q and k (``qk_layernorm``) before
  RoPE, HF Llama rotary (``inv_freq`` and the angles in float32, cos/sin cast to the model dtype,
  ``q*cos + rotate_half(q)*sin`` in the model dtype), ``F.scaled_dot_product_attention`` with no
  mask (bidirectional), then ``o_proj``;
- MoE feed-forward: router ``gate`` linear, ``softmax(dim=1, dtype=float32)`` (float32 even in a
  float64 model), ``topk``, weights cast back to the model dtype, no renormalisation or scaling
  (the official code ignores ``norm_topk_prob`` and ``routed_scaling_factor``); experts in index
  order over ``one_hot(...).permute(2, 1, 0)`` / ``torch.where``, each SwiGLU expert's output times
  its routing weight accumulated with ``index_add_``; a shared expert, if any, added after;
  dense layers (``moe_layer_freq`` 0) use a plain SwiGLU ``mlp``;
- final ``norm``, ``lm_head``; logits are not shifted.

Config features the official code would run and this transcription does not (q/k/v clipping,
attention bias, RoPE scaling, partial rotary, expert bias, grouped kv heads) raise an error.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

__all__ = ["load_reference", "reference_forward"]


def load_reference(directory: Path, dtype: torch.dtype = torch.float64) -> tuple[dict, dict[str, torch.Tensor]]:
    """The config and every tensor of a checkpoint (sharded or not), cast to ``dtype``."""
    cfg = json.loads((directory / "config.json").read_text())
    index = directory / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
        else ["model.safetensors"]
    weights: dict[str, torch.Tensor] = {}
    for shard in shards:
        weights.update({k: v.to(dtype) for k, v in load_file(str(directory / shard)).items()})
    bad = [k for k in ("clip_qkv", "attention_bias", "rope_scaling", "moe_router_enable_expert_bias") if cfg.get(k)]
    bad += ["partial_rotary_factor"] * (float(cfg.get("partial_rotary_factor", 1)) != 1.0)
    bad += ["num_key_value_heads"] * (cfg.get("num_key_value_heads", cfg["num_attention_heads"]) != cfg["num_attention_heads"])
    bad += ["hidden_act"] * (cfg.get("hidden_act", "silu") != "silu")
    bad += ["moe_router_score_function"] * (cfg.get("moe_router_score_function", "softmax") != "softmax")
    if bad:
        raise ValueError(f"the reference forward does not implement these config values: {bad}")
    return cfg, weights


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _rotary(cfg: dict, head_dim: int, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """HF ``LlamaRotaryEmbedding`` (default rope type, attention_scaling 1.0)."""
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    inv_freq_expanded = inv_freq[None, :, None].float().expand(positions.shape[0], -1, 1)
    freqs = (inv_freq_expanded.float() @ positions[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * 1.0).to(dtype), (emb.sin() * 1.0).to(dtype)


def reference_forward(cfg: dict, w: dict[str, torch.Tensor], ids: torch.Tensor,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [B, T, V] of token ids [B, T] at RoPE positions [B, T] (default 0..T-1), model dtype."""
    n_heads, dim, eps = cfg["num_attention_heads"], cfg["hidden_size"], cfg["rms_norm_eps"]
    hd = dim // n_heads
    B, T = ids.shape
    if positions is None:
        positions = torch.arange(T).unsqueeze(0)
    dtype = w["model.embed_tokens.weight"].dtype

    def linear(x: torch.Tensor, key: str) -> torch.Tensor:
        return F.linear(x, w[key])

    def swiglu(x: torch.Tensor, p: str) -> torch.Tensor:
        return linear(F.silu(linear(x, p + "gate_proj.weight")) * linear(x, p + "up_proj.weight"), p + "down_proj.weight")

    cos, sin = _rotary(cfg, hd, positions, dtype)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    h = F.embedding(ids, w["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        residual = h
        x = _rms_norm(h, w[p + "input_layernorm.weight"], eps)
        q, k = linear(x, p + "self_attn.q_proj.weight"), linear(x, p + "self_attn.k_proj.weight")
        if cfg.get("qk_layernorm"):
            q = _rms_norm(q.reshape(-1, hd), w[p + "self_attn.q_norm.weight"], eps).reshape(B, T, -1)
            k = _rms_norm(k.reshape(-1, hd), w[p + "self_attn.k_norm.weight"], eps).reshape(B, T, -1)
        v = linear(x, p + "self_attn.v_proj.weight")
        q, k, v = (t.view(B, T, n_heads, hd).transpose(1, 2) for t in (q, k, v))
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        a = a.transpose(1, 2).contiguous().view(B, T, dim)
        h = residual + linear(a, p + "self_attn.o_proj.weight")

        residual = h
        x = _rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        if cfg["moe_layer_freq"][i]:
            flat = x.view(-1, dim)
            probs = F.softmax(linear(flat, p + "mlp.gate.weight"), dim=1, dtype=torch.float)
            routing, chosen = torch.topk(probs, cfg["num_experts_per_tok"], dim=-1)
            routing = routing.to(flat.dtype)
            out = torch.zeros_like(flat)
            expert_mask = F.one_hot(chosen, num_classes=cfg["num_experts"]).permute(2, 1, 0)
            for e in range(cfg["num_experts"]):
                slot, rows = torch.where(expert_mask[e])
                current = flat[None, rows].reshape(-1, dim)
                y = swiglu(current, p + f"mlp.experts.{e}.") * routing[rows, slot, None]
                out.index_add_(0, rows, y.to(flat.dtype))
            y = out.reshape(B, T, dim)
            if cfg.get("shared_expert_intermediate_size") is not None:
                y = y + swiglu(x, p + "shared_expert.")
        else:
            y = swiglu(x, p + "mlp.")
        h = residual + y
    h = _rms_norm(h, w["model.norm.weight"], eps)
    return linear(h, "lm_head.weight")
