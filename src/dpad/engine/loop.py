"""THE decode loop: blocks -> steps. The only place that calls the model.

```
for block in blocks:
    view = prefix + block + suffix_policy.kept(...)     # DPad lives in the suffix policy
    if cache refreshes: logits = cache.refresh(view)   # block-start forward (1 NFE), first decision
    while block has masks:
        logits = cache.step(view)                      # forward on the uncached part of the view
        commit = unmasker.select(logits, ...)
    if early termination and the finished block holds EOS: fill the rest with EOS, stop
```
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..config import DecodeConfig
from ..errors import ConfigError
from . import cache as cache_mod
from . import suffix as suffix_mod
from .unmask import Unmasker


@dataclass
class GenerationOutput:
    """One row's result. ``generated`` has ``gen_length`` ids (EOS-filled after early stop)."""

    prompt: list[int]
    generated: list[int]
    nfe: int
    forwards_per_block: list[int]
    kept_per_block: list[list[int]]
    model_time_s: float
    total_time_s: float
    response_length: int
    stopped_early: bool
    blocks_decoded: int
    extra: dict = field(default_factory=dict)

    @property
    def ids(self) -> list[int]:
        return self.prompt + self.generated

    def stats(self) -> dict:
        return {
            "nfe": self.nfe,
            "forwards_per_block": self.forwards_per_block,
            "blocks_decoded": self.blocks_decoded,
            "model_time_s": self.model_time_s,
            "total_time_s": self.total_time_s,
            "response_tokens": self.response_length,
            "tokens_per_forward": self.response_length / max(1, self.nfe),
            "stopped_early": self.stopped_early,
            "kept_suffix_per_block": [len(k) for k in self.kept_per_block],
        }


def check_length(prompt_len: int, cfg: DecodeConfig, max_len: int) -> None:
    if prompt_len + cfg.gen_length > max_len:
        raise ConfigError(
            f"gen_length={cfg.gen_length} is too long: prompt ({prompt_len} tokens) + gen_length = "
            f"{prompt_len + cfg.gen_length} exceeds the model's maximum sequence length {max_len}; "
            f"use gen_length <= {max(0, max_len - prompt_len)} or a shorter prompt")


@torch.no_grad()
def decode(model, prompt: list[int] | torch.Tensor, cfg: DecodeConfig, *,  # noqa: ANN001
           mask_id: int, eos_id: int, suffix_policy: suffix_mod.SuffixPolicy | None = None) -> GenerationOutput:
    """Decode one prompt (token ids) with ``model`` (a :class:`~dpad.models.Transformer`)."""
    t_start = time.perf_counter()
    dev = model.device
    prompt_t = torch.as_tensor(prompt, dtype=torch.long).flatten()
    P, G, B = len(prompt_t), cfg.gen_length, cfg.block_length
    check_length(P, cfg, model.args.max_seq_len)
    if ((prompt_t == mask_id).any()):
        raise ConfigError(f"the prompt contains the mask token id {mask_id}; prompts must be fully observed")
    L = P + G
    canvas = torch.cat([prompt_t, torch.full((G,), mask_id, dtype=torch.long)]).to(dev)

    suffix = suffix_policy or suffix_mod.from_config(cfg)
    suffix.reset(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    family = "dream" if model.args.logits_shift else "llada"
    unmasker = Unmasker(cfg, family, gen)
    cache = cache_mod.from_config(cfg)
    runner = cache_mod.Runner(model, mask_id, cfg.cfg_scale, P)
    dream_compat = cfg.compat == "dpad-dream"
    fastdllm_compat = cfg.compat == "fast-dllm"

    forwards: list[int] = []
    kept_sets: list[list[int]] = []
    stopped = False

    def commit(view: cache_mod.View, logits: torch.Tensor, step: int) -> None:
        block = canvas[view.bs:view.be]
        masked = block == mask_id
        chosen, x0 = unmasker.select(logits, masked, step)
        block[chosen] = x0[chosen]
        view.sync_block(canvas)

    for b in range(cfg.num_blocks):
        bs, be = P + b * B, P + (b + 1) * B
        nfe0 = runner.nfe
        kept = suffix.kept(be, L).to(dev)
        kept_sets.append(kept.tolist())
        view = cache_mod.View(canvas, torch.cat([torch.arange(be, device=dev), kept]), bs, be)
        unmasker.start_block(int((canvas[bs:be] == mask_id).sum()))
        step = 1 if dream_compat else 0
        if cache.refreshes:
            logits = cache.refresh(runner, view)
            if dream_compat:
                # reference quirk: the refresh commits the block's first position with its argmax
                if canvas[bs] == mask_id:
                    canvas[bs] = torch.argmax(logits[0])
                    view.sync_block(canvas)
            else:
                commit(view, logits, step)
                step += 1
        cached_steps = 0
        while bool((canvas[bs:be] == mask_id).any()) or (
                fastdllm_compat and cache.refreshes and cached_steps == 0):
            logits = cache.step(runner, view, feed_from_block=dream_compat)
            commit(view, logits, step)
            step += 1
            cached_steps += 1
        forwards.append(runner.nfe - nfe0)
        if cfg.early_termination and bool((canvas[bs:be] == eos_id).any()):
            canvas[be:] = eos_id
            stopped = be < L
            break

    gen_ids = canvas[P:].tolist()
    resp_len = gen_ids.index(eos_id) if eos_id in gen_ids else len(gen_ids)
    return GenerationOutput(
        prompt=prompt_t.tolist(), generated=gen_ids, nfe=runner.nfe, forwards_per_block=forwards,
        kept_per_block=kept_sets, model_time_s=runner.model_time,
        total_time_s=time.perf_counter() - t_start, response_length=resp_len, stopped_early=stopped,
        blocks_decoded=len(forwards))
