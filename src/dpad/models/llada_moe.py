"""LLaDA-MoE (inclusionAI LLaDA-MoE-7B-A1B Base / Instruct): official config fields and key names.

The released ``config.json`` says ``model_type: "llada"`` like dense LLaDA; it is told apart by
its ``architectures`` (``LLaDAMoEModelLM``) or its MoE fields (``num_experts``).
Architecture (official ``modeling_lladamoe.py``): OLMoE-style bidirectional transformer,
pre-norm RMSNorm blocks, per-head RMSNorm on q and k before RoPE (``qk_layernorm``), full
half-split RoPE evaluated in the model dtype, SwiGLU experts routed by softmax top-k
(:mod:`.moe`); logits are not shifted.
Released values: hidden 2048, 16 layers, 16 heads (MHA), 64 experts of width 1024, top-8,
every layer MoE, no shared expert, rope_theta 50000, vocab 157184, mask 156895, eos 156892.

Checkpoint layout (sharded safetensors + ``model.safetensors.index.json``):
``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``,
``model.layers.{i}.self_attn.{q,k}_norm``, ``input_layernorm``, ``post_attention_layernorm``,
``model.layers.{i}.mlp.gate`` (router), ``model.layers.{i}.mlp.experts.{j}.{gate,up,down}_proj``,
``model.layers.{i}.shared_expert.*`` (if any), dense layers ``model.layers.{i}.mlp.{gate,up,down}_proj``,
``model.norm``, ``lm_head``.

The official code ignores ``norm_topk_prob``, ``routed_scaling_factor`` and the router group
fields (it never renormalises, scales or groups); so do we. Features it would run that dpad does
not (expert bias, q/k/v clipping, attention bias, partial rotary, RoPE scaling) are rejected.
"""

from __future__ import annotations

from typing import Any

from .dream import TOP_LEVEL_KEYS
from .layers import ModelArgs
from .moe import MoEArgs

MODEL_TYPE = "llada-moe"
ARCHITECTURES = ("LLaDAMoEModelLM", "LLaDAMoEModel")
RELEASED_VOCAB = 157184
RELEASED_MASK_ID = 156895  # the model card's generate(mask_id=...); not in config.json

_PREFIX = "model.layers."
_RENAMES = (("self_attn.", "attn."), ("input_layernorm.", "attn_norm."),
            ("post_attention_layernorm.", "mlp_norm."), ("shared_expert.", "mlp.shared."), ("mlp.", "mlp."))


def is_llada_moe(cfg: dict[str, Any]) -> bool:
    """Whether a ``model_type: llada`` config describes LLaDA-MoE rather than dense LLaDA."""
    archs = cfg.get("architectures") or []
    return any(a in ARCHITECTURES for a in archs) or "num_experts" in cfg


def args_from_config(cfg: dict[str, Any]) -> ModelArgs:
    """Build :class:`ModelArgs` from an official LLaDA-MoE config, rejecting features we do not run."""
    unsupported = {
        "moe_router_enable_expert_bias": cfg.get("moe_router_enable_expert_bias"),
        "clip_qkv": cfg.get("clip_qkv"),
        "attention_bias": cfg.get("attention_bias"),
        "rope_scaling": cfg.get("rope_scaling"),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"LLaDA-MoE config sets {', '.join(bad)}: not supported by dpad's LLaDA-MoE model")
    if float(cfg.get("partial_rotary_factor", 1)) != 1.0:
        raise ValueError(f"LLaDA-MoE config: partial_rotary_factor {cfg['partial_rotary_factor']} is not "
                         "supported (only full rotary, 1)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"LLaDA-MoE config: unsupported hidden_act {cfg.get('hidden_act')!r}")
    score = cfg.get("moe_router_score_function")
    if score not in (None, "softmax"):
        raise ValueError(f"LLaDA-MoE config: moe_router_score_function {score!r} is not supported (softmax)")
    d = int(cfg["hidden_size"])
    n_heads = int(cfg["num_attention_heads"])
    n_layers = int(cfg["num_hidden_layers"])
    freq = cfg.get("moe_layer_freq") or [1] * n_layers
    if len(freq) != n_layers:
        raise ValueError(f"LLaDA-MoE config: moe_layer_freq has {len(freq)} entries for {n_layers} layers")
    layers = tuple(bool(f) for f in freq)
    n_experts, top_k = int(cfg["num_experts"]), int(cfg["num_experts_per_tok"])
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"LLaDA-MoE config: num_experts_per_tok {top_k} must be in 1..num_experts ({n_experts})")
    shared = cfg.get("shared_expert_intermediate_size")
    dense = int(cfg.get("dense_intermediate_size") or 0)
    if not all(layers) and dense <= 0:
        raise ValueError("LLaDA-MoE config: moe_layer_freq has dense layers but no dense_intermediate_size")
    vocab = int(cfg["vocab_size"])
    mask = cfg.get("mask_token_id")
    if mask is None and vocab == RELEASED_VOCAB:
        mask = RELEASED_MASK_ID
    return ModelArgs(
        arch=MODEL_TYPE,
        vocab_size=vocab,
        dim=d,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        hidden_dim=dense,
        rope_theta=float(cfg["rope_theta"]),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        max_seq_len=int(cfg.get("max_position_embeddings", 4096)),
        qkv_bias=False,
        qk_norm=bool(cfg.get("qk_layernorm")),
        rope_full_precision=False,
        logits_shift=0,
        mask_token_id=mask,
        eos_token_id=cfg.get("eos_token_id"),
        eot_token_id=cfg.get("eot_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        moe=MoEArgs(n_experts=n_experts, top_k=top_k, expert_dim=int(cfg["expert_intermediate_size"]),
                    layers=layers, shared_dim=None if shared is None else int(shared)),
        extra={"weight_tying": bool(cfg.get("tie_word_embeddings", False))},
    )


def map_checkpoint_key(key: str, args: ModelArgs) -> str | None:
    """Official checkpoint key -> our module key (None: not a parameter we hold)."""
    if key in TOP_LEVEL_KEYS:
        return TOP_LEVEL_KEYS[key]
    if key.startswith(_PREFIX):
        idx, rest = key[len(_PREFIX):].split(".", 1)
        for official, ours in _RENAMES:
            if rest.startswith(official):
                return f"layers.{idx}.{ours}{rest[len(official):]}"
    return None


def checkpoint_key(ours: str, args: ModelArgs) -> str:
    """Inverse of :func:`map_checkpoint_key` (names missing tensors in the official scheme)."""
    inverse = {v: k for k, v in TOP_LEVEL_KEYS.items()}
    if ours in inverse:
        return inverse[ours]
    _, idx, rest = ours.split(".", 2)
    for official, mine in _RENAMES:
        if rest.startswith(mine):
            return f"{_PREFIX}{idx}.{official}{rest[len(mine):]}"
    raise KeyError(ours)
