"""``decode`` / ``decode_batch``: a closed batch of prompts through the step-wise :class:`Engine`.

``decode_batch`` adds every prompt to one engine and steps it until every row is final. Rows may
have different prompt lengths and, with a list of configs, different settings (gen length, block
length, rule, suffix policy, cache...); every row decodes exactly what it decodes alone, with its own
seeded generators (suffix dropout and sampling), and leaves as soon as it is done: early
termination, cancellation through ``on_block`` (at the block's end) or ``is_cancelled`` (checked
before every forward), or its last block. :func:`decode` is one row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..config import DecodeConfig
from ..errors import ConfigError
from . import suffix as suffix_mod
from .engine import BlockEvent, Engine, Finished, GenerationOutput, check_length

__all__ = ["BlockCallback", "BlockEvent", "CancelCheck", "GenerationOutput", "check_length", "decode", "decode_batch"]

BlockCallback = Callable[[BlockEvent], "bool | None"]
"""``on_block(event)``: return True to cancel the row (it leaves the batch at the block's end)."""

CancelCheck = Callable[[int], bool]
"""``is_cancelled(row)``: checked for every row before every forward (a cheap flag read); True makes
the row leave the batch at once, mid-block (its output then holds only the blocks committed so far
and ``cancelled=True``)."""


@torch.no_grad()
def decode(model, prompt: list[int] | torch.Tensor, cfg: DecodeConfig, *,  # noqa: ANN001
           mask_id: int, eos_id: int, eot_id: int | None = None,
           suffix_policy: suffix_mod.SuffixPolicy | None = None, on_block: BlockCallback | None = None) -> GenerationOutput:
    """Decode one prompt (token ids) with ``model`` (a :class:`~dpad.models.Transformer`)."""
    return decode_batch(model, [prompt], cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
                        suffix_policies=[suffix_policy], on_block=on_block)[0]


@torch.no_grad()
def decode_batch(model, prompts: Sequence[list[int] | torch.Tensor], cfg: DecodeConfig | Sequence[DecodeConfig], *,  # noqa: ANN001
                 mask_id: int, eos_id: int, eot_id: int | None = None,
                 suffix_policies: Sequence[suffix_mod.SuffixPolicy | None] | None = None,
                 seeds: Sequence[int] | None = None,
                 on_block: BlockCallback | None = None,
                 is_cancelled: CancelCheck | None = None) -> list[GenerationOutput]:
    """Decode a batch of prompts (token ids, any lengths), each with ``cfg`` or its own entry of a
    list of configs.

    ``eot_id``: the end-of-turn token (``cfg.confidence_eos_eot_inf`` treats it like EOS), if any;
    ``seeds`` (default: each row's ``cfg.seed``) seed each row's own generators;
    ``suffix_policies`` optionally give a row its own suffix policy object (e.g. ``Explicit``).
    Every prompt is checked before any forward runs.
    """
    N = len(prompts)
    if N == 0:
        return []
    cfgs = [cfg] * N if isinstance(cfg, DecodeConfig) else list(cfg)
    for name, seq in (("configs", cfgs), ("seeds", seeds), ("suffix_policies", suffix_policies)):
        if seq is not None and len(seq) != N:
            raise ConfigError(f"{name} has {len(seq)} entries for {N} prompts")
    engine = Engine(model, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id)
    for p, c in zip(prompts, cfgs, strict=True):
        engine.check(p, c)
    for i, p in enumerate(prompts):
        engine.add(p, cfgs[i], seed=None if seeds is None else seeds[i],
                   suffix_policy=None if suffix_policies is None else suffix_policies[i],
                   on_block=on_block, is_cancelled=None if is_cancelled is None else (lambda i=i: is_cancelled(i)),
                   tag=i)
    outs: dict[int, GenerationOutput] = {}
    try:
        for ev in engine.run():
            if isinstance(ev, Finished):
                outs[ev.row] = ev.output
    finally:
        engine.close()
    for o in outs.values():
        o.batch_size, o.batch_forwards = N, engine.forwards
    return [outs[i] for i in range(N)]
