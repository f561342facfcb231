"""THE decode loop: blocks -> steps, for a batch of rows. The only place that calls the model.

```
for block in blocks:                                    # all rows in lockstep over blocks
    view = prefix + block + suffix_policy.kept(...)     # per row; DPad lives in the suffix policy
    if cache refreshes: logits = cache.refresh(view)   # block-start forward (1 NFE), first decision
    while some row's block has masks:
        feed only those rows                            # a finished row waits for the others
        logits = cache.step(view)                      # forward on the uncached part of the view
        commit = unmasker.select(logits, ...)          # per row
    per row: on_block(...) callback; early termination / cancellation -> the row leaves the batch
```

Batching: prompts of different lengths are left-padded on one canvas ``[N, Pmax + G]`` so that
every row's current block sits at the same columns; each row keeps its own RoPE positions
(``0..`` from its first real token) and padded slots are masked out as attention keys. Every row
has its own seeded generators (suffix dropout and sampling), so row ``i`` of a batch draws exactly
what a single run with the same seed draws, and a batch decodes the same tokens (and per-row NFE)
as the single runs. :func:`decode` is this loop with one row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..config import DecodeConfig
from ..errors import ConfigError
from . import cache as cache_mod
from . import suffix as suffix_mod
from .unmask import Unmasker


@dataclass
class GenerationOutput:
    """One row's result. ``generated`` has ``gen_length`` ids (EOS-filled after early stop).

    ``nfe`` counts the forwards this row took part in; ``batch_forwards`` the forwards of the whole
    batch it ran in (equal to ``nfe`` for a single run)."""

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
    batch_size: int = 1
    batch_forwards: int = 0
    cancelled: bool = False

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
            "batch_size": self.batch_size,
            "batch_forwards": self.batch_forwards,
            **({"compile": self.extra["compile"]} if "compile" in self.extra else {}),
        }


@dataclass
class BlockEvent:
    """Passed to the ``on_block`` callback as soon as a row's block is fully committed.

    ``row``: the prompt's index in the batch; ``block``: the block index; ``tokens``: the block's
    committed ids; ``generated``: every committed id of the row so far (blocks ``0..block``);
    ``eos``: the block holds the EOS id (the response up to the first EOS is final); ``last``: it is
    the last block; ``nfe``: the forwards the row took part in so far."""

    row: int
    block: int
    tokens: list[int]
    generated: list[int]
    eos: bool
    last: bool
    nfe: int


BlockCallback = Callable[[BlockEvent], "bool | None"]
"""``on_block(event)``: return True to cancel the row (it leaves the batch at the block's end)."""

CancelCheck = Callable[[int], bool]
"""``is_cancelled(row)``: checked for every row before every forward (a cheap flag read); True makes
the row leave the batch at once, mid-block (its output then holds only the blocks committed so far
and ``cancelled=True``)."""


def check_length(prompt_len: int, cfg: DecodeConfig, max_len: int) -> None:
    if prompt_len + cfg.gen_length > max_len:
        raise ConfigError(
            f"gen_length={cfg.gen_length} is too long: prompt ({prompt_len} tokens) + gen_length = "
            f"{prompt_len + cfg.gen_length} exceeds the model's maximum sequence length {max_len}; "
            f"use gen_length <= {max(0, max_len - prompt_len)} or a shorter prompt")


def _commit(canvas: torch.Tensor, view: cache_mod.View, logits: torch.Tensor, unmaskers: list[Unmasker],
            step: dict[int, int], bs: int, be: int, mask_id: int) -> None:
    """Each view row's unmasker picks positions of its block to commit; the view follows."""
    for k, r in enumerate(view.rows):
        block = canvas[r, bs:be]
        masked = block == mask_id
        chosen, x0 = unmaskers[r].select(logits[k], masked, step[r])
        block[chosen] = x0[chosen]
        step[r] += 1
    view.sync_block(canvas)


@torch.no_grad()
def decode(model, prompt: list[int] | torch.Tensor, cfg: DecodeConfig, *,  # noqa: ANN001
           mask_id: int, eos_id: int, eot_id: int | None = None,
           suffix_policy: suffix_mod.SuffixPolicy | None = None, on_block: BlockCallback | None = None) -> GenerationOutput:
    """Decode one prompt (token ids) with ``model`` (a :class:`~dpad.models.Transformer`)."""
    return decode_batch(model, [prompt], cfg, mask_id=mask_id, eos_id=eos_id, eot_id=eot_id,
                        suffix_policies=[suffix_policy], on_block=on_block)[0]


@torch.no_grad()
def decode_batch(model, prompts: Sequence[list[int] | torch.Tensor], cfg: DecodeConfig, *,  # noqa: ANN001
                 mask_id: int, eos_id: int, eot_id: int | None = None,
                 suffix_policies: Sequence[suffix_mod.SuffixPolicy | None] | None = None,
                 seeds: Sequence[int] | None = None,
                 on_block: BlockCallback | None = None,
                 is_cancelled: CancelCheck | None = None) -> list[GenerationOutput]:
    """Decode a batch of prompts (token ids, any lengths) in lockstep over blocks.

    ``eot_id``: the end-of-turn token (``cfg.confidence_eos_eot_inf`` treats it like EOS), if any;
    ``seeds`` (default: ``cfg.seed`` for every row) seed each row's own generators;
    ``suffix_policies`` optionally give a row its own suffix policy object (e.g. ``Explicit``).
    A row leaves the batch (its rows of the view and KV cache are dropped) as soon as it is done:
    early termination, cancellation through ``on_block`` (at the block's end) or ``is_cancelled``
    (checked before every forward), or its last block.
    """
    t_start = time.perf_counter()
    dev = model.device
    N = len(prompts)
    if N == 0:
        return []
    if seeds is not None and len(seeds) != N:
        raise ConfigError(f"seeds has {len(seeds)} entries for {N} prompts")
    if suffix_policies is not None and len(suffix_policies) != N:
        raise ConfigError(f"suffix_policies has {len(suffix_policies)} entries for {N} prompts")
    prompts_t = [torch.as_tensor(p, dtype=torch.long).flatten() for p in prompts]
    lens = [len(p) for p in prompts_t]
    for p in prompts_t:
        check_length(len(p), cfg, model.args.max_seq_len)
        if bool((p == mask_id).any()):
            raise ConfigError(f"the prompt contains the mask token id {mask_id}; prompts must be fully observed")
    if N > 1 and min(lens) == 0 and max(lens) > 0:
        raise ConfigError("an empty prompt cannot be batched with non-empty ones; decode it on its own")
    G, BL = cfg.gen_length, cfg.block_length
    Pm = max(lens)
    pads = [Pm - n for n in lens]
    W = Pm + G
    canvas = torch.full((N, W), mask_id, dtype=torch.long)
    for r, p in enumerate(prompts_t):
        canvas[r, :pads[r]] = eos_id  # left padding: never attended to
        canvas[r, pads[r]:Pm] = p
    canvas = canvas.to(dev)

    family = "dream" if model.args.logits_shift else "llada"
    row_seeds = [cfg.seed] * N if seeds is None else [int(s) for s in seeds]
    suffixes: list[suffix_mod.SuffixPolicy] = []
    unmaskers: list[Unmasker] = []
    for r in range(N):
        sp = (suffix_policies[r] if suffix_policies is not None else None) or suffix_mod.from_config(cfg)
        sp.reset(row_seeds[r])
        suffixes.append(sp)
        unmaskers.append(Unmasker(cfg, family, torch.Generator().manual_seed(row_seeds[r]), eos_id, eot_id))
    cache = cache_mod.from_config(cfg)
    runner = cache_mod.Runner(model, mask_id, cfg.cfg_scale, N)
    dream_compat = cfg.compat == "dpad-dream"
    fastdllm_compat = cfg.compat == "fast-dllm"

    forwards: list[list[int]] = [[] for _ in range(N)]
    kept_sets: list[list[list[int]]] = [[] for _ in range(N)]
    stopped = [False] * N
    cancelled = [False] * N
    t_done = [0.0] * N
    committed = [0] * N  # generated columns that are final
    alive = list(range(N))

    def stop_now(r: int) -> bool:
        if not cancelled[r] and is_cancelled is not None and is_cancelled(r):
            cancelled[r] = True
            t_done[r] = time.perf_counter() - t_start
        return cancelled[r]

    for b in range(cfg.num_blocks):
        alive = [r for r in alive if not stop_now(r)]
        if not alive:
            break
        bs, be = Pm + b * BL, Pm + (b + 1) * BL
        kept = []
        for r in alive:
            own = suffixes[r].kept(lens[r] + (b + 1) * BL, lens[r] + G)  # the row's own coordinates
            kept_sets[r].append(own.tolist())
            kept.append(own + pads[r])
        view = cache_mod.View.build(canvas, alive, pads, kept, bs, be, Pm, mask_id)
        nfe0 = {r: runner.row_nfe[r] for r in alive}
        step = {r: 1 if dream_compat else 0 for r in alive}
        cached_steps = dict.fromkeys(alive, 0)
        notified: set[int] = set()
        for r in alive:
            unmaskers[r].start_block(int((canvas[r, bs:be] == mask_id).sum()),
                                     (lens[r] + b * BL, G - (b + 1) * BL))

        if cache.refreshes:
            logits = cache.refresh(runner, view)
            if dream_compat:
                # reference quirk: the refresh commits the block's first position with its argmax
                for k, r in enumerate(view.rows):
                    if canvas[r, bs] == mask_id:
                        canvas[r, bs] = torch.argmax(logits[k, 0])
                view.sync_block(canvas)
            else:
                _commit(canvas, view, logits, unmaskers, step, bs, be, mask_id)
        while True:
            left = (canvas[view.rows_t, bs:be] == mask_id).any(1).tolist()
            act = []
            for k, r in enumerate(view.rows):
                if not left[k] and r not in notified:
                    notified.add(r)
                    committed[r] = be - Pm
                    if on_block is not None:
                        toks = canvas[r, bs:be].tolist()
                        ev = BlockEvent(r, b, toks, canvas[r, Pm:be].tolist(), eos_id in toks,
                                        b == cfg.num_blocks - 1, runner.row_nfe[r])
                        if on_block(ev):
                            cancelled[r] = True
                if cancelled[r] or stop_now(r):
                    continue
                if left[k] or (fastdllm_compat and cache.refreshes and cached_steps[r] == 0):
                    act.append(k)
            if not act:
                break
            if len(act) < view.n:  # rows whose block is done wait for the others, at no cost
                keep = torch.tensor(act, dtype=torch.long, device=dev)
                view.select(keep)
                cache.select_rows(keep)
            logits = cache.step(runner, view, feed_from_block=dream_compat)
            _commit(canvas, view, logits, unmaskers, step, bs, be, mask_id)
            for r in view.rows:
                cached_steps[r] += 1
        cache.kv = None  # a fresh cache at every block start

        still = []
        for r in alive:
            forwards[r].append(runner.row_nfe[r] - nfe0[r])
            if cancelled[r] and r not in notified:  # left mid-block: nothing of this block is final
                t_done[r] = t_done[r] or time.perf_counter() - t_start
                continue
            done = cancelled[r] or b == cfg.num_blocks - 1
            if cfg.early_termination and bool((canvas[r, bs:be] == eos_id).any()):
                canvas[r, be:] = eos_id
                committed[r] = G
                stopped[r] = be < W
                done = True
            if done:
                t_done[r] = time.perf_counter() - t_start
            else:
                still.append(r)
        alive = still

    compiled = getattr(model, "compiled", None)
    extra = {"compile": compiled.stats()} if compiled is not None else {}
    outs = []
    for r in range(N):
        gen_ids = canvas[r, Pm:].tolist()
        final = gen_ids[: committed[r]]
        resp_len = final.index(eos_id) if eos_id in final else len(final)
        outs.append(GenerationOutput(
            prompt=prompts_t[r].tolist(), generated=gen_ids, nfe=runner.row_nfe[r], forwards_per_block=forwards[r],
            kept_per_block=kept_sets[r], model_time_s=runner.row_model_time[r], total_time_s=t_done[r],
            response_length=resp_len, stopped_early=stopped[r], blocks_decoded=len(forwards[r]),
            batch_size=N, batch_forwards=runner.nfe, cancelled=cancelled[r], extra=dict(extra)))
    return outs
