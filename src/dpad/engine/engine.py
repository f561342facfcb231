"""The step-wise engine: requests join and leave between forwards; one step = one forward per kind.

```
engine = Engine(model, mask_id=..., eos_id=...)
a = engine.add(prompt_ids, DecodeConfig(threshold=0.9, cache="prefix"), seed=1)
b = engine.add(other_ids, DecodeConfig(gen_length=64), seed=2)      # any settings, any lengths
while engine.running:
    for event in engine.step():      # BlockEvent: a block committed; Finished: a row is final
        ...
engine.abort(a)                       # leaves before its next forward
```

A step takes every running request one forward further: a request at a block start draws its
kept suffix (DPad) and, with a KV cache, runs its refresh; the others run their next step. Rows
fed their whole view share one forward, rows reading a KV cache another (:mod:`dpad.engine.runner`),
whatever their settings, prompt and gen lengths, blocks and steps. Each row then commits what its
own rule selects (:mod:`dpad.engine.unmask`: one tensor computation for the greedy rows and, with
``rng='device'``, the sampled ones; the row's own :class:`Unmasker` and CPU generator for sampled
rows with ``rng='exact'``, the reference's draws), and the step ends with one host sync:
the rows' block ids. A row decodes exactly what it decodes alone (tested token for token).
``add`` and ``step`` run in ``torch.inference_mode`` (no view or version tracking: 2-5 % off a
small forward on the CPU); the engine's tables are inference tensors, read-only outside it.

Settings that cannot share a forward: none. Classifier-free guidance (``cfg_scale`` > 0) adds an
unconditional copy of its row to the same forward and counts 2 NFE per step, as the reference.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import DecodeConfig
from ..errors import ConfigError
from . import cache as cache_mod
from . import suffix as suffix_mod
from .request import Request
from .runner import RowInput, Runner
from .unmask import RowDraws, RowRule, Unmasker, batchable, llada_schedule, ranked_rule_name, select_batch


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
    extra: dict
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
    """A row's block is fully committed (passed to ``on_block`` and returned by :meth:`Engine.step`).

    ``row``: the request's tag (the prompt's index in ``decode_batch``); ``block``: the block index;
    ``tokens``: the block's committed ids; ``generated``: every committed id of the row so far
    (blocks ``0..block``); ``eos``: the block holds the EOS id (the response up to the first EOS is
    final); ``last``: it is the last block; ``nfe``: the forwards the row took part in so far."""

    row: Any
    block: int
    tokens: list[int]
    generated: list[int]
    eos: bool
    last: bool
    nfe: int


@dataclass
class Finished:
    """A row is final (done, stopped early or cancelled): its output."""

    row: Any
    output: GenerationOutput


def check_length(prompt_len: int, cfg: DecodeConfig, max_len: int) -> None:
    if prompt_len + cfg.gen_length > max_len:
        raise ConfigError(
            f"gen_length={cfg.gen_length} is too long: prompt ({prompt_len} tokens) + gen_length = "
            f"{prompt_len + cfg.gen_length} exceeds the model's maximum sequence length {max_len}; "
            f"use gen_length <= {max(0, max_len - prompt_len)} or a shorter prompt")


class Engine:
    """Requests in, events out. See the module docstring."""

    def __init__(self, model, *, mask_id: int, eos_id: int, eot_id: int | None = None) -> None:  # noqa: ANN001
        self.model = model
        self.mask_id, self.eos_id, self.eot_id = mask_id, eos_id, eot_id
        self.sampler = model.args.sampler
        self.shift = model.args.logits_shift
        self.runner = Runner(model, mask_id)
        self.running: list[Request] = []
        self._ids = 0

    @property
    def forwards(self) -> int:
        """Forwards run so far (a guided step's unconditional rows count as one more)."""
        return self.runner.forwards

    # ------------------------------------------------------------------ requests
    def check(self, prompt: Sequence[int] | torch.Tensor, cfg: DecodeConfig) -> list[int]:
        """The prompt's ids, or a ConfigError saying why it cannot be decoded with ``cfg``."""
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.flatten().tolist()
        ids = [int(t) for t in prompt]
        check_length(len(ids), cfg, self.model.args.max_seq_len)
        if self.mask_id in ids:
            raise ConfigError(f"the prompt contains the mask token id {self.mask_id}; prompts must be fully observed")
        return ids

    @torch.inference_mode()
    def add(self, prompt: Sequence[int] | torch.Tensor, cfg: DecodeConfig, *, seed: int | None = None,
            suffix_policy: suffix_mod.SuffixPolicy | None = None, on_block=None, is_cancelled=None,  # noqa: ANN001
            tag: Any = None) -> Request:
        """Queue a prompt (token ids) for decoding with ``cfg``; it joins at the next step.

        ``seed`` (default ``cfg.seed``) seeds the row's own generators; ``suffix_policy`` replaces
        the one ``cfg`` names (e.g. ``Explicit`` kept sets); ``on_block(event)`` returning True
        cancels the row at the block's end; ``is_cancelled()`` is checked before every forward."""
        ids = self.check(prompt, cfg)
        seed = cfg.seed if seed is None else int(seed)
        sp = suffix_policy or suffix_mod.from_config(cfg)
        sp.reset(seed)
        # LLaDA family: one stream for the suffix's and the sampler's draws, as the references'
        # global generator (DPad's suffix draws at each block start come between the step draws)
        gen = getattr(sp, "gen", None) if self.sampler == "llada" else None
        unmasker = Unmasker(cfg, self.sampler, gen or torch.Generator().manual_seed(seed), self.eos_id, self.eot_id)
        cache = cache_mod.from_config(cfg)
        self._ids += 1
        req = Request(id=self._ids, tag=self._ids if tag is None else tag, prompt=ids, cfg=cfg, seed=seed, suffix=sp,
                      cache=cache, unmasker=unmasker, batched=batchable(cfg), on_block=on_block,
                      is_cancelled=is_cancelled)
        req.gen = [self.mask_id] * cfg.gen_length
        req.crow, req.kvrow = self.runner.add_row(ids, len(ids) + cfg.gen_length, cache.refreshes)
        self.running.append(req)
        return req

    def abort(self, req: Request) -> None:
        """Cancel a request: it leaves before its next forward (its output keeps the final blocks)."""
        req.cancelled = True

    # ------------------------------------------------------------------ the step
    def cost(self, r: Request) -> int:
        """The tokens ``r`` feeds at its next step (a block start: its prefix and next block plus its
        suffix window or whole suffix, an upper bound before the kept suffix is drawn)."""
        if r.block >= 0 and not r.block_over:
            return self._input(r).length * (2 if r.cfg.cfg_scale > 0 else 1)
        be = r.P + (r.block + 2) * r.BL
        suffix = r.P + r.cfg.gen_length - be
        if r.cfg.suffix != "full":
            suffix = min(suffix, r.cfg.window or suffix)
        return (be + suffix) * (2 if r.cfg.cfg_scale > 0 else 1)

    def commit_rate(self, r: Request) -> float:
        """Tokens ``r`` commits per forward: what it committed so far, with half a block's worth
        as the prior of a row that has not run yet (one forward's weight)."""
        return (r.decoded + r.BL / 2) / (r.nfe + 1)

    def price(self, r: Request) -> float:
        """Tokens fed per token committed at ``r``'s next step (:meth:`cost` / :meth:`commit_rate`):
        about 300 for a one-token-per-step row over a whole canvas, under 20 for a fast row."""
        return self.cost(r) / self.commit_rate(r)

    @torch.inference_mode()
    def step(self, only: set[Request] | None = None) -> list[BlockEvent | Finished]:
        """A forward per kind (full, cached; each split in two when that feeds fewer tokens by more than
        a forward's cost, see :func:`_by_length`) for every running request (or those in ``only``: the others wait this step out), their
        commits, one host sync."""
        events: list[BlockEvent | Finished] = []
        self.runner.last_forwards.clear()
        for r in list(self.running):
            if not r.cancelled and r.is_cancelled is not None and r.is_cancelled():
                r.cancelled = True
            if r.cancelled:
                self._finish(r, events, mid_block=True)
        if not self.running:
            return events
        full: list[tuple[Request, RowInput]] = []
        cached: list[tuple[Request, RowInput]] = []
        for r in self.running:
            if only is not None and r not in only:
                continue
            if r.block < 0 or r.block_over:
                self._start_block(r)
            (full if r.refreshing or not r.cache.refreshes else cached).append((r, self._input(r)))
        fixed = SPLIT_COST.get(self.runner.dev.type, SPLIT_COST["cuda"])
        groups = [(g, self.runner.forward_full) for g in _by_length(full, fixed)]
        groups += [(g, self.runner.forward_cached) for g in _by_length(cached, fixed)]
        synced, timings = [], []
        for group, fwd in groups:
            logits, cols, block, timing = fwd([inp for _, inp in group])
            synced.append(self._commit(group, logits, cols, block))
            timings.append(timing)
        ids = (synced[0] if len(synced) == 1 else torch.cat(_pad_cols(synced, self.mask_id))).tolist()  # the sync
        dts = [self.runner.elapsed(t) for t in timings]
        self.runner.model_time += sum(dts)
        k = 0
        for (group, _), dt in zip(groups, dts, strict=True):
            for r, inp in group:
                self._after(r, ids[k][: r.BL], dt, inp, events)
                k += 1
        return events

    def close(self) -> None:
        """Let go of the K/V pool (:meth:`KVPool.close <dpad.engine.runner.KVPool.close>`: on an eager CPU
        model the model's next engine takes it over). Rows still running lose their K/V: call it when
        the engine is done."""
        self.runner.pool.close()

    def run(self) -> list[BlockEvent | Finished]:
        """Step until every request is final; returns all events."""
        out: list[BlockEvent | Finished] = []
        while self.running:
            out.extend(self.step())
        return out

    # ------------------------------------------------------------------ per request, host side
    def _start_block(self, r: Request) -> None:
        r.block += 1
        r.block_over = False
        r.bs = r.P + r.block * r.BL
        G = r.cfg.gen_length
        kept = r.suffix.kept(r.be, r.P + G)
        r.kept_per_block.append(suffix_mod.positions(kept))
        cols = torch.cat([torch.arange(r.be), kept.to(torch.long)])
        r.view_size = len(cols)
        self.runner.set_view(r.crow, r.kvrow, cols)
        r.step = 1 if r.cfg.compat == "dpad-dream" else 0
        r.cached_steps = 0
        r.notified = False
        r.refreshing = r.cache.refreshes
        r.block_nfe0 = r.nfe
        r.unmasker.start_block(r.BL, (r.bs, G - (r.block + 1) * r.BL))

    def _input(self, r: Request) -> RowInput:
        if r.refreshing or not r.cache.refreshes:
            start, end = 0, r.view_size
        else:
            start, end = r.cache.step_span(r.bs, r.be, r.view_size, self.shift, r.cfg.compat == "dpad-dream")
        return RowInput(r.crow, r.kvrow, start, end - start, r.view_size, r.bs, r.BL, r.P, store=r.refreshing,
                        cfg_scale=r.cfg.cfg_scale)

    def _rule(self, r: Request) -> RowRule:
        cfg = r.cfg
        name = ranked_rule_name(cfg)
        if name is not None:
            if cfg.dependency_distance is None:
                return RowRule(name, knob=float(getattr(cfg, name)))
            strict = float("inf") if cfg.dependency_threshold is None else cfg.dependency_threshold
            return RowRule(name, knob=float(getattr(cfg, name)), distance=cfg.dependency_distance, strict=strict)
        spb = cfg.steps_per_block
        kind = cfg.schedule if cfg.schedule != "auto" else self.sampler
        a = cfg.alg_temp
        if kind == "llada":
            return RowRule("count", count=-1 if r.step >= spb else llada_schedule(r.BL, spb)[r.step], alg_temp=a)
        if r.step >= spb - 1:
            return RowRule("count", count=-1, alg_temp=a)
        t = r.unmasker.rule.timesteps
        return RowRule("count", ratio=1 - t[r.step + 1] / t[r.step], alg_temp=a)

    @staticmethod
    def _draws(rows: list[Request], logits: torch.Tensor) -> RowDraws | None:
        """The sampling settings of batched rows (None when all are greedy): noise keyed by the row's
        seed and its forwards so far."""
        return RowDraws.of([r.cfg for r in rows], [r.seed for r in rows], [r.nfe for r in rows], logits.shape[-1],
                           logits.device)

    def _commit(self, group: list[tuple[Request, RowInput]], logits: torch.Tensor, cols: torch.Tensor,
                block: torch.Tensor) -> torch.Tensor:
        """Each row selects its commits; the canvas takes them. Returns the block ids [n, L]."""
        dev = logits.device
        masked = (block == self.mask_id) & (cols != self.runner.trash)
        fast = [i for i, (r, inp) in enumerate(group) if r.batched and not (inp.store and r.cfg.compat == "dpad-dream")]
        if len(fast) == len(group):
            chosen, x0 = select_batch(logits, masked, [r.cfg.confidence for r, _ in group],
                                      [self._rule(r) for r, _ in group], self.sampler,
                                      self._draws([r for r, _ in group], logits))
        else:
            chosen = torch.zeros_like(masked)
            x0 = torch.zeros_like(block)
            if fast:
                idx = torch.tensor(fast, device=dev)
                ch, x = select_batch(logits.index_select(0, idx), masked.index_select(0, idx),
                                     [group[i][0].cfg.confidence for i in fast], [self._rule(group[i][0]) for i in fast],
                                     self.sampler, self._draws([group[i][0] for i in fast], logits))
                chosen.index_copy_(0, idx, ch)
                x0.index_copy_(0, idx, x)
            for i, (r, inp) in enumerate(group):
                if i in fast:
                    continue
                n = r.BL
                if inp.store and r.cfg.compat == "dpad-dream":
                    # reference quirk: the refresh commits the block's first position with its argmax
                    chosen[i, 0] = masked[i, 0]
                    x0[i, 0] = torch.argmax(logits[i, 0])
                    continue
                span = r.unmasker.draw_span(inp.start, inp.length, r.bs, not inp.store and r.cache.refreshes)
                ch, x = r.unmasker.select(logits[i, :n], masked[i, :n], r.step, span)
                chosen[i, :n], x0[i, :n] = ch, x
        new = torch.where(chosen, x0, block)
        self.runner.write([inp for _, inp in group], cols, new)
        return new

    def _after(self, r: Request, ids: list[int], dt: float, inp: RowInput, events: list) -> None:
        """Host bookkeeping of a row after its forward (``ids``: its block now)."""
        compat_refresh = inp.store and r.cfg.compat == "dpad-dream"
        r.nfe += 2 if inp.cfg_scale > 0 else 1
        r.model_time += dt
        if inp.store:
            r.refreshing = False
        elif r.cache.refreshes:
            r.cached_steps += 1
        if not compat_refresh:
            r.step += 1
        o = r.bs - r.P
        r.decoded += r.gen[o:o + r.BL].count(self.mask_id) - ids.count(self.mask_id)
        r.gen[o:o + r.BL] = ids
        if self.mask_id not in ids and not r.notified:
            r.notified = True
            r.committed = o + r.BL
            if r.on_block is not None:
                ev = BlockEvent(r.tag, r.block, list(ids), r.gen[: o + r.BL], self.eos_id in ids, r.last_block, r.nfe)
                events.append(ev)
                if r.on_block(ev):
                    r.cancelled = True
        if not r.notified:
            return
        extra_step = r.cfg.compat == "fast-dllm" and r.cache.refreshes and r.cached_steps == 0
        if r.cancelled or r.is_cancelled is not None and r.is_cancelled():
            r.cancelled = True
        elif extra_step:
            return  # Fast-dLLM runs one cached step after a block its refresh completed
        self._end_block(r, ids, events)

    def _end_block(self, r: Request, ids: list[int], events: list) -> None:
        r.forwards_per_block.append(r.nfe - r.block_nfe0)
        done = r.cancelled or r.last_block
        if r.cfg.early_termination and self.eos_id in ids:
            o = r.be - r.P
            r.gen[o:] = [self.eos_id] * (len(r.gen) - o)
            r.committed = len(r.gen)
            r.stopped = o < len(r.gen)
            done = True
        if done:
            self._finish(r, events, mid_block=False)
        else:
            r.block_over = True  # the next block starts at the next step (after its cancellation check)

    def _finish(self, r: Request, events: list, mid_block: bool) -> None:
        if mid_block and r.block >= 0 and len(r.forwards_per_block) == r.block:
            r.forwards_per_block.append(r.nfe - r.block_nfe0)  # left mid-block: nothing of it is final
        r.done = True
        r.t_done = time.perf_counter() - r.t_add
        self.runner.release(r.crow, r.kvrow)
        self.running.remove(r)
        final = r.gen[: r.committed]
        resp = final.index(self.eos_id) if self.eos_id in final else len(final)
        compiled = getattr(self.model, "compiled", None)
        extra = {"compile": compiled.stats()} if compiled is not None else {}
        out = GenerationOutput(
            prompt=list(r.prompt), generated=list(r.gen), nfe=r.nfe, forwards_per_block=r.forwards_per_block,
            kept_per_block=r.kept_per_block, model_time_s=r.model_time, total_time_s=r.t_done,
            response_length=resp, stopped_early=r.stopped, blocks_decoded=len(r.forwards_per_block),
            extra=extra, batch_forwards=self.forwards, cancelled=r.cancelled)
        events.append(Finished(r.tag, out))


def _by_length(group: list[tuple[Request, RowInput]], fixed: int) -> list[list[tuple[Request, RowInput]]]:
    """One forward, or two (the shorter rows apart) when that feeds fewer tokens, padding included,
    by more than ``fixed``: what one more forward costs, in tokens (:data:`SPLIT_COST`)."""
    if len(group) < 2:
        return [group] if group else []
    rows = sorted(group, key=lambda x: x[1].length)
    lengths = [inp.length for _, inp in rows]
    n, longest = len(rows), lengths[-1]
    best, cut = n * longest - fixed, 0  # one forward, less the cost a second one would add
    for i in range(1, n):
        if lengths[i - 1] == lengths[i]:
            continue
        cost = i * lengths[i - 1] + (n - i) * longest
        if cost < best:
            best, cut = cost, i
    if not cut:
        return [group]
    short = {id(x) for x in rows[:cut]}
    return [[x for x in group if id(x) in short], [x for x in group if id(x) not in short]]


SPLIT_COST = {"cpu": 64, "cuda": 512}
"""What one more forward costs, in fed tokens per device type (other devices: CUDA's): on the CPU a
forward of the embedded model has a fixed cost of ~5 ms against ~0.08 ms per token; on a GPU the
launches of an eager forward weigh more against the tokens."""


def _pad_cols(ts: list[torch.Tensor], fill: int) -> list[torch.Tensor]:
    L = max(t.shape[1] for t in ts)
    return [t if t.shape[1] == L else torch.nn.functional.pad(t, (0, L - t.shape[1]), value=fill) for t in ts]


@torch.no_grad()
def warm_up(model, *, mask_id: int, eos_id: int) -> None:  # noqa: ANN001
    """Compile the engine's common forward kinds once (after ``compile_model``): short greedy decodes
    of one row with every cache mode, with and without DPad, so a first request does not wait for
    them. Later shapes (other lengths, batch buckets) still compile on first use."""
    prompt = [t for t in range(min(24, model.args.vocab_size)) if t not in (mask_id, eos_id)][:16]
    eng = Engine(model, mask_id=mask_id, eos_id=eos_id)
    for cache in ("none", "prefix", "dual"):
        for kw in ({}, {"suffix": "gaussian", "window": 32}):
            eng.add(prompt, DecodeConfig(gen_length=64, block_length=32, threshold=0.9, cache=cache, **kw))
    eng.run()
