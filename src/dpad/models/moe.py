"""Mixture-of-experts feed-forward with softmax top-k routing (LLaDA-MoE).

Numerics follow the official LLaDA-MoE modelling code exactly:

- router logits ``gate(h)`` in the model dtype, softmax over the experts in **float32**;
- top-k of those probabilities; the selected probabilities are the weights, **not renormalised**
  (the official code fixes ``norm_topk_prob`` to False) and not scaled, then cast to the model dtype;
- each expert is a SwiGLU MLP; a token's output is the sum over its selected experts of
  ``expert(h) * weight``, accumulated in ascending expert order (the official ``index_add_`` loop);
- an optional shared expert (``shared_expert_intermediate_size``) is added to the routed sum.

Tokens are gathered per expert (only the experts that some token selected run), so a batch of
rows and a pruned DPad view cost only the tokens they hold.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from .layers import MLP, ModelArgs


@dataclass
class MoEArgs:
    n_experts: int
    top_k: int
    expert_dim: int
    layers: tuple[bool, ...]  # True: MoE feed-forward at this layer; False: dense MLP (hidden_dim)
    shared_dim: int | None = None


class SparseMoE(nn.Module):
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
