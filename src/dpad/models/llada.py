"""LLaDA (ML-GSAI): official ``config.json`` fields and checkpoint key names.

LLaDA logits are *not* shifted: the output at position i predicts token i.
Checkpoint layout (``model.transformer.*``): ``wte`` embedding, per block ``q_proj/k_proj/v_proj``,
``attn_out``, ``ff_proj`` (gate), ``up_proj``, ``ff_out`` (down), ``attn_norm``, ``ff_norm``;
``ln_f`` final norm and ``ff_out`` LM head (or the tied ``wte`` when ``weight_tying``).
"""

from __future__ import annotations

from typing import Any

from .layers import ModelArgs

MODEL_TYPE = "llada"

_BLOCK_KEYS = {
    "q_proj.weight": "attn.q_proj.weight",
    "k_proj.weight": "attn.k_proj.weight",
    "v_proj.weight": "attn.v_proj.weight",
    "attn_out.weight": "attn.o_proj.weight",
    "ff_proj.weight": "mlp.gate_proj.weight",
    "up_proj.weight": "mlp.up_proj.weight",
    "ff_out.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "attn_norm.weight",
    "ff_norm.weight": "mlp_norm.weight",
}


def args_from_config(cfg: dict[str, Any]) -> ModelArgs:
    """Build :class:`ModelArgs` from an official LLaDA config, rejecting features we do not run."""
    unsupported = {
        "alibi": cfg.get("alibi", False),
        "include_bias": cfg.get("include_bias", False),
        "scale_logits": cfg.get("scale_logits", False),
        "input_emb_norm": cfg.get("input_emb_norm", False),
        "attention_layer_norm": cfg.get("attention_layer_norm", False),
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"LLaDA config sets {', '.join(bad)}: this feature is not supported by dpad's LLaDA model")
    if cfg.get("block_type", "llama") != "llama" or cfg.get("layer_norm_type", "rms") != "rms":
        raise ValueError("LLaDA config: only block_type 'llama' with layer_norm_type 'rms' is supported")
    if cfg.get("activation_type", "silu") not in ("silu", "swiglu"):
        raise ValueError(f"LLaDA config: unsupported activation_type {cfg.get('activation_type')!r}")
    d = int(cfg["d_model"])
    n_heads = int(cfg["n_heads"])
    n_kv = cfg.get("n_kv_heads") or (1 if cfg.get("multi_query_attention") else n_heads)
    hidden = cfg.get("mlp_hidden_size") or int(cfg.get("mlp_ratio", 4)) * d
    vocab = int(cfg.get("embedding_size") or cfg["vocab_size"])
    return ModelArgs(
        arch=MODEL_TYPE,
        vocab_size=vocab,
        dim=d,
        n_layers=int(cfg["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        hidden_dim=int(hidden),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        max_seq_len=int(cfg.get("max_sequence_length", 4096)),
        qkv_bias=bool(cfg.get("include_qkv_bias", False)),
        rope_full_precision=bool(cfg.get("rope_full_precision", True)),
        logits_shift=0,
        mask_token_id=cfg.get("mask_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        eot_token_id=cfg.get("eot_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        extra={"weight_tying": bool(cfg.get("weight_tying", False))},
    )


def map_checkpoint_key(key: str, args: ModelArgs) -> str | None:
    """Official checkpoint key -> our module key (None: not a parameter we hold)."""
    prefix = "model.transformer."
    if not key.startswith(prefix):
        return None
    k = key[len(prefix):]
    if k == "wte.weight":
        return "embed.weight"
    if k == "ln_f.weight":
        return "norm.weight"
    if k == "ff_out.weight":
        return "head.weight"
    if k.startswith("blocks."):
        _, idx, rest = k.split(".", 2)
        if rest in _BLOCK_KEYS:
            return f"layers.{idx}.{_BLOCK_KEYS[rest]}"
    if args.qkv_bias and k.startswith("blocks.") and k.endswith("_proj.bias"):
        _, idx, rest = k.split(".", 2)
        return f"layers.{idx}.attn.{rest}"
    return None


def checkpoint_key(ours: str, args: ModelArgs) -> str:
    """Inverse of :func:`map_checkpoint_key` (used to save in the official layout)."""
    if ours == "embed.weight":
        return "model.transformer.wte.weight"
    if ours == "norm.weight":
        return "model.transformer.ln_f.weight"
    if ours == "head.weight":
        return "model.transformer.ff_out.weight"
    _, idx, rest = ours.split(".", 2)
    inv = {v: k for k, v in _BLOCK_KEYS.items()}
    if rest in inv:
        return f"model.transformer.blocks.{idx}.{inv[rest]}"
    if rest.startswith("attn.") and rest.endswith("_proj.bias"):
        return f"model.transformer.blocks.{idx}.{rest[len('attn.'):]}"
    raise KeyError(ours)


def config_from_args(args: ModelArgs) -> dict[str, Any]:
    """An official-format LLaDA config.json for a model we built (e.g. the embedded model)."""
    return {
        "architectures": ["LLaDAModelLM"],
        "model_type": MODEL_TYPE,
        "activation_type": "silu",
        "alibi": False,
        "block_type": "llama",
        "layer_norm_type": "rms",
        "d_model": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "mlp_hidden_size": args.hidden_dim,
        "vocab_size": args.vocab_size,
        "embedding_size": args.vocab_size,
        "max_sequence_length": args.max_seq_len,
        "rope": True,
        "rope_full_precision": args.rope_full_precision,
        "rope_theta": args.rope_theta,
        "rms_norm_eps": args.norm_eps,
        "include_bias": False,
        "include_qkv_bias": args.qkv_bias,
        "weight_tying": False,
        "scale_logits": False,
        "input_emb_norm": False,
        "attention_layer_norm": False,
        "mask_token_id": args.mask_token_id,
        "eos_token_id": args.eos_token_id,
        "pad_token_id": args.pad_token_id,
        "torch_dtype": "float32",
    }
