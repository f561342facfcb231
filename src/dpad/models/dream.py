"""Dream (HKUNLP): Qwen2-style checkpoint, logits shifted by one.

Dream's output at position j predicts token j+1, so the decode loop reads the logits of
position p from the output at p-1 (``ModelArgs.logits_shift = 1``).
Checkpoint layout: ``model.embed_tokens``, ``model.layers.{i}.self_attn.{q,k,v,o}_proj``
(q/k/v with bias), ``model.layers.{i}.mlp.{gate,up,down}_proj``, ``input_layernorm``,
``post_attention_layernorm``, ``model.norm``, ``lm_head`` (or tied embeddings).
"""

from __future__ import annotations

from typing import Any

from .layers import ModelArgs

MODEL_TYPE = "Dream"

_LAYER_KEYS = {
    "self_attn.q_proj.weight": "attn.q_proj.weight",
    "self_attn.q_proj.bias": "attn.q_proj.bias",
    "self_attn.k_proj.weight": "attn.k_proj.weight",
    "self_attn.k_proj.bias": "attn.k_proj.bias",
    "self_attn.v_proj.weight": "attn.v_proj.weight",
    "self_attn.v_proj.bias": "attn.v_proj.bias",
    "self_attn.o_proj.weight": "attn.o_proj.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
}


def args_from_config(cfg: dict[str, Any]) -> ModelArgs:
    if cfg.get("use_sliding_window"):
        raise ValueError("Dream config sets use_sliding_window: sliding-window attention is not supported")
    if cfg.get("rope_scaling"):
        raise ValueError("Dream config sets rope_scaling: only plain RoPE is supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"Dream config: unsupported hidden_act {cfg.get('hidden_act')!r}")
    d = int(cfg["hidden_size"])
    n_heads = int(cfg["num_attention_heads"])
    return ModelArgs(
        arch=MODEL_TYPE,
        vocab_size=int(cfg["vocab_size"]),
        dim=d,
        n_layers=int(cfg["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        hidden_dim=int(cfg["intermediate_size"]),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        max_seq_len=int(cfg.get("max_position_embeddings", 32768)),
        qkv_bias=True,
        rope_full_precision=False,
        logits_shift=1,
        sampler="dream",
        mask_token_id=cfg.get("mask_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        eot_token_id=cfg.get("eot_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        extra={"weight_tying": bool(cfg.get("tie_word_embeddings", False))},
    )


TOP_LEVEL_KEYS = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight",
                  "lm_head.weight": "head.weight"}
"""The official (Hugging Face decoder layout) names of the tensors outside the layers -> ours
(Dream and LLaDA-MoE share them)."""


def map_checkpoint_key(key: str, args: ModelArgs) -> str | None:
    if key in TOP_LEVEL_KEYS:
        return TOP_LEVEL_KEYS[key]
    if key.startswith("model.layers."):
        _, _, idx, rest = key.split(".", 3)
        if rest in _LAYER_KEYS:
            return f"layers.{idx}.{_LAYER_KEYS[rest]}"
    return None


def checkpoint_key(ours: str, args: ModelArgs) -> str:
    top = {v: k for k, v in TOP_LEVEL_KEYS.items()}
    if ours in top:
        return top[ours]
    _, idx, rest = ours.split(".", 2)
    inv = {v: k for k, v in _LAYER_KEYS.items()}
    return f"model.layers.{idx}.{inv[rest]}"
