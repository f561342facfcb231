"""Unmasking policies: which masked positions of the current block to commit, and to what.

Two separable questions, answered in float64 on the block's logits only:

1. *Proposal* — a token and a confidence per position. Temperature 0 is argmax. Temperature > 0
   follows the model family's reference sampler: LLaDA draws Gumbel-max in float64
   (``exp(l) / (-log u) ** T``; confidences from the untempered softmax), Dream divides the logits
   by T, filters top-p then top-k and draws from the tempered softmax of the masked positions
   (:class:`DreamProposer`, the same draws as Dream's ``diffusion_generate`` for the same seed).
   Confidence: ``low_confidence``/``maskgit_plus`` (probability of the proposed token),
   ``topk_margin`` (top-1 minus top-2 probability), ``entropy`` (negative entropy),
   ``random`` (uniform), ``origin`` (Dream: each mask revealed with probability 1 - s/t).
2. *How many* — ``Threshold`` (Fast-dLLM: the most confident always, every other one with
   confidence >= tau), ``Factor`` (accept the n-th while c_n >= 1 - f/(n+1); as the reference,
   all of them when only the last rank fails),
   ``EntropyBounded`` (EB-sampler: the longest prefix of the confidence ranking whose summed
   entropy minus its largest entropy is <= gamma), each optionally under a ``DependencyGuard``
   (no two positions within distance D in one step unless both pass a stricter bound), or a fixed
   schedule: ``llada`` (the block's masks spread evenly over its steps, remainder first) or
   ``dream`` (linear timesteps 1 -> eps: int(m * (1 - s/t)) at each step, all at the last).

Confidences are ranked (``torch.topk``, or ``torch.multinomial`` with ``alg_temp``) laid out on
the row's whole canvas, ``-inf`` outside the block's masks, as the reference samplers lay them
out: equal confidences and the ``alg_temp`` draws then resolve exactly as there.

LLaDA-family draws follow the reference's global stream (:class:`DrawSpan`): the LLaDA, Fast-dLLM
and DPad samplers draw Gumbel noise (float64) over the *whole* logits tensor their forward returned
and ``random`` confidences (float32) over its positions; the row's generator draws the same counts
in the same order and keeps the block's part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rules import RULES

NEG_INF = float("-inf")


def llada_schedule(n_masks: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps: base count, remainder on the first steps."""
    base, rem = divmod(n_masks, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Logits below the k-th largest of their row set to -inf (ties with the k-th are kept)."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filter: keep the most probable tokens up to cumulative probability p (the one that
    crosses p included, the top-1 always); the rest set to -inf."""
    if p is None or p >= 1.0:
        return logits
    sorted_l, order = torch.sort(logits, descending=True, dim=-1)
    drop_sorted = sorted_l.softmax(-1).cumsum(-1) > p
    drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


@dataclass(frozen=True)
class DrawSpan:
    """Where a row's block sits in the logits the reference's forward returned at this step, so a
    LLaDA-family row draws what the reference draws from its global generator: ``rows`` positions
    (the full canvas without a cache and at a cached block's first forward, the canvas from the
    block's start on a prefix-cache step, the block on a dual-cache step; with DPad, the same spans
    of the pruned view), the block's first row at ``offset``, and ``gumbel`` Gumbel-noise tensors
    per step (2 on the prefix-cache steps of Fast-dLLM and DPad's baseline, whose loop draws one
    more that it throws away before the one it uses)."""

    rows: int
    offset: int = 0
    gumbel: int = 1


_SKIP_CHUNK = 1 << 20


def skip_uniform(gen: torch.Generator, count: int, dtype: torch.dtype) -> None:
    """Advance ``gen`` past ``count`` values of ``torch.rand(..., dtype=dtype)`` (CPU uniform draws
    are sequential, so drawing and dropping them is the same as one draw of the whole tensor)."""
    if count <= 0:
        return
    buf = torch.empty(min(count, _SKIP_CHUNK), dtype=dtype)
    while count > 0:
        k = min(count, len(buf))
        torch.rand((k,), generator=gen, dtype=dtype, out=buf[:k])
        count -= k


def draw_rows(gen: torch.Generator, span: DrawSpan, n: int, width: int, dtype: torch.dtype,
              tensors: int = 1) -> torch.Tensor:
    """``tensors`` draws of ``torch.rand((span.rows, width))`` from ``gen``, returning rows
    ``[offset, offset + n)`` of the last one (shape ``[n, width]``; ``width`` 0: shape ``[n]``)."""
    w = max(width, 1)
    if span.offset < 0 or span.offset + n > span.rows:
        raise ValueError(f"the block (rows {span.offset}..{span.offset + n}) lies outside the drawn {span.rows} rows")
    skip_uniform(gen, ((tensors - 1) * span.rows + span.offset) * w, dtype)
    out = torch.rand((n, w) if width else (n,), generator=gen, dtype=dtype)
    skip_uniform(gen, (span.rows - span.offset - n) * w, dtype)
    return out


class Proposer:
    """``banned``: token ids whose logits are -inf before the proposal (LLaDA's ``logits_eos_inf``:
    never proposed, and the probabilities renormalise without them). ``unconfident``: token ids
    removed from the distribution the confidence is read from, after the proposal (LLaDA's
    ``confidence_eos_eot_inf``: a position proposing one gets confidence 0 and is committed last)."""

    def __init__(self, confidence: str, temperature: float, top_p: float | None, top_k: int | None,
                 gen: torch.Generator, banned: tuple[int, ...] = (), unconfident: tuple[int, ...] = ()) -> None:
        self.confidence, self.temperature = confidence, temperature
        self.top_p, self.top_k, self.gen = top_p, top_k, gen
        self.banned, self.unconfident = tuple(banned), tuple(unconfident)

    @staticmethod
    def _drop(logits: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
        if not ids:
            return logits
        return logits.index_fill(-1, torch.tensor(ids, device=logits.device), NEG_INF)

    def _filter(self, logits: torch.Tensor) -> torch.Tensor:
        return top_p_filter(top_k_filter(logits, self.top_k), self.top_p)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [n, V] -> the entropy (nats, float64) of each position's proposal distribution."""
        p = torch.softmax(self._filter(self._drop(logits.to(torch.float64), self.banned)), dim=-1)
        return torch.special.entr(p).sum(-1)

    def __call__(self, logits: torch.Tensor, masked: torch.Tensor,
                 span: DrawSpan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [n, V], masked [n] -> (tokens [n], confidence [n]) in float64. ``span``: the
        logits the reference's forward returned this step (default: just these ``n`` rows); the
        Gumbel noise (float64, ``[rows, V]``, ``span.gumbel`` times) and then the ``random``
        confidences (float32, ``[rows]``) are drawn over it, as the reference draws them."""
        n, V = logits.shape
        span = DrawSpan(n) if span is None else span
        logits = self._filter(self._drop(logits.to(torch.float64), self.banned))
        if self.temperature > 0:
            u = draw_rows(self.gen, span, n, V, torch.float64, span.gumbel).to(logits.device)
            x0 = torch.argmax(logits.exp() / (-torch.log(u)) ** self.temperature, dim=-1)
        else:
            x0 = torch.argmax(logits, dim=-1)
        p = torch.softmax(self._drop(logits, self.unconfident), dim=-1)
        c = self.confidence
        if c in ("low_confidence", "maskgit_plus", "origin"):  # origin: the Origin rule picks at random
            conf = torch.gather(p, -1, x0[..., None])[..., 0]
        elif c == "topk_margin":
            top2 = torch.topk(p, 2, dim=-1).values
            conf = top2[..., 0] - top2[..., 1]
        elif c == "entropy":
            conf = (p * torch.log(p + 1e-10)).sum(-1)
        elif c == "random":  # torch.rand's default dtype, as the reference draws it
            conf = draw_rows(self.gen, span, n, 0, torch.float32).to(logits.device, torch.float64)
        else:  # pragma: no cover - validated by DecodeConfig
            raise ValueError(c)
        return x0, conf


class DreamProposer(Proposer):
    """Dream's ``sample_tokens`` on the masked positions only: logits / T, top-p, then top-k (-inf
    where Dream writes the dtype's minimum: the same probabilities);
    x0 drawn from the tempered softmax (``torch.multinomial`` on the renormalised probabilities,
    which is what ``Categorical.sample`` runs) or its argmax at T = 0; the confidence is computed
    on that tempered distribution. Unmasked positions get confidence -inf."""

    def _filter(self, logits: torch.Tensor) -> torch.Tensor:
        return top_k_filter(top_p_filter(logits, self.top_p), self.top_k)  # Dream's order

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [n, V] -> the entropy (nats, float64) of each position's tempered, filtered distribution."""
        logits = self._drop(logits.to(torch.float64), self.banned)
        if self.temperature > 0:
            logits = logits / self.temperature
        return torch.special.entr(torch.softmax(self._filter(logits), dim=-1)).sum(-1)

    def sample(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [m, V] of the positions to decide -> (tokens [m], confidence [m])."""
        logits = self._drop(logits.to(torch.float64), self.banned)
        if self.temperature > 0:
            logits = logits / self.temperature
        logits = self._filter(logits)
        probs = torch.softmax(logits, dim=-1)
        if self.temperature > 0 and len(probs):
            norm = probs / probs.sum(-1, keepdim=True)
            x0 = torch.multinomial(norm.cpu(), 1, True, generator=self.gen)[:, 0].to(probs.device)
            conf = torch.gather(probs, -1, x0[:, None])[:, 0]
        else:
            conf, x0 = probs.max(dim=-1)
        if self.unconfident:
            probs = torch.softmax(self._drop(logits, self.unconfident), dim=-1)
            conf = torch.gather(probs, -1, x0[:, None])[:, 0]
        if self.confidence == "topk_margin":
            top2 = torch.topk(probs, 2, dim=-1).values
            conf = top2[:, 0] - top2[:, 1]
        elif self.confidence == "entropy":
            conf = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
        elif self.confidence == "random":
            conf = torch.rand(x0.shape, generator=self.gen, dtype=torch.float64).to(probs.device)
        return x0, conf

    def __call__(self, logits: torch.Tensor, masked: torch.Tensor,
                 span: DrawSpan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Dream draws over the masked positions only (``span`` does not apply)."""
        x0 = torch.zeros(masked.shape, dtype=torch.long, device=logits.device)
        conf = torch.full(masked.shape, NEG_INF, dtype=torch.float64, device=logits.device)
        x0[masked], conf[masked] = self.sample(logits[masked])
        return x0, conf


class CountRule:
    """Decides which masked positions to commit from their confidences (and, for rules that set
    ``needs_entropy``, the entropy of each position's proposal distribution)."""

    needs_entropy = False

    def start_block(self, n_masks: int) -> None:
        pass

    def select(self, conf: torch.Tensor, masked: torch.Tensor, step: int) -> torch.Tensor:
        """conf, masked: [n] -> bool [n] of positions to commit (a subset of ``masked``)."""
        raise NotImplementedError

    def choose(self, proposer: Proposer, logits: torch.Tensor, masked: torch.Tensor, step: int,
               layout: tuple[int, int], span: DrawSpan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Propose (drawing over ``span``), then select on the confidences laid out on the canvas
        (``layout``: positions before and after the block) -> (commit mask [n], tokens [n])."""
        x0, conf = proposer(logits, masked, span)
        ent = proposer.entropy(logits) if self.needs_entropy else None
        before, after = layout
        n = len(masked)
        if before or after:
            conf = torch.cat([conf.new_full((before,), NEG_INF), conf, conf.new_full((after,), NEG_INF)])
            masked = torch.cat([masked.new_zeros(before), masked, masked.new_zeros(after)])
            if ent is not None:
                ent = torch.cat([ent.new_zeros(before), ent, ent.new_zeros(after)])
        chosen = self.select(conf, masked, step, ent) if ent is not None else self.select(conf, masked, step)
        return chosen[before:before + n], x0


class RankedRule(CountRule):
    """Rules that look at the masked confidences sorted in descending order (the top-1 is always
    committed): subclasses say which ranks to accept."""

    def accept(self, ranked: torch.Tensor) -> torch.Tensor:
        """ranked confidences [m] (descending) -> bool [m] of the ranks to commit."""
        raise NotImplementedError

    def accept_ranked(self, ranked: torch.Tensor, positions: torch.Tensor,
                      entropy: torch.Tensor | None) -> torch.Tensor:
        """Like :meth:`accept`, also given the positions and (``needs_entropy``) entropies of the ranks."""
        return self.accept(ranked)

    def select(self, conf: torch.Tensor, masked: torch.Tensor, step: int,
               entropy: torch.Tensor | None = None) -> torch.Tensor:
        out = torch.zeros_like(masked)
        n = int(masked.sum())
        if n == 0:
            return out
        vals, idx = torch.topk(torch.where(masked, conf, torch.full_like(conf, NEG_INF)), n)
        ok = self.accept_ranked(vals, idx, None if entropy is None else entropy[idx])
        ok[0] = True
        out[idx[ok]] = True
        return out


class BatchedRankedRule(RankedRule):
    """A ranked rule whose acceptance is one tensor computation over rows: :meth:`accept_rows` takes
    the ranked confidences ``[rows, L]`` (descending, ``-inf`` after a row's masked positions), each
    row's knob ``[rows]`` and (``needs_entropy``) the ranked entropies, and returns which ranks pass
    (the engine then keeps the top-1 and nothing past a row's masked positions). The one-row
    :meth:`accept_ranked` is the same computation on one row. Registered in ``RANKED_RULES`` under
    the name of its :mod:`dpad.rules` spec (= the DecodeConfig field of its knob)."""

    def __init__(self, knob: float) -> None:
        self.knob = knob

    @staticmethod
    def accept_rows(ranked: torch.Tensor, knob: torch.Tensor, entropy: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def accept_ranked(self, ranked: torch.Tensor, positions: torch.Tensor,
                      entropy: torch.Tensor | None) -> torch.Tensor:
        knob = torch.tensor([self.knob], dtype=ranked.dtype, device=ranked.device)
        return self.accept_rows(ranked[None], knob, None if entropy is None else entropy[None])[0]


def _prefix(ok: torch.Tensor) -> torch.Tensor:
    """The longest all-True prefix of each row (the first rank always accepted)."""
    ok[:, 0] = True
    return torch.cumprod(ok.to(torch.int64), 1).bool()


class Threshold(BatchedRankedRule):
    """Fast-dLLM: every masked position with confidence >= tau (the most confident always)."""

    @property
    def tau(self) -> float:
        return self.knob

    @staticmethod
    def accept_rows(ranked: torch.Tensor, knob: torch.Tensor, entropy: torch.Tensor | None) -> torch.Tensor:
        return ranked >= knob[:, None]


class Factor(BatchedRankedRule):
    """Fast-dLLM factor rule as DPad's ``get_transfer_index_dynamic`` runs it: accept the n-th
    (1-based) while c_n >= 1 - f / (n + 1), the top-1 always; and, the reference's quirk
    (docs/quirks.md), when the first rank to fail that bound is the *last* of the row's m masked
    positions, all m are committed, the failing one included."""

    @property
    def f(self) -> float:
        return self.knob

    @staticmethod
    def accept_rows(ranked: torch.Tensor, knob: torch.Tensor, entropy: torch.Tensor | None) -> torch.Tensor:
        n = torch.arange(1, ranked.shape[1] + 1, dtype=ranked.dtype, device=ranked.device)
        ok = _prefix(ranked >= 1 - knob[:, None] / (n + 1))
        m = (ranked != NEG_INF).sum(1, keepdim=True)  # the row's masked positions (-inf: none)
        last_fails = ok.sum(1, keepdim=True) == m - 1  # the first failure is the last rank
        return ok | (last_fails & (n[None] <= m))


class EntropyBounded(BatchedRankedRule):
    """EB-sampler (Ben-Hamu et al. 2025, "Accelerated Sampling from Masked Diffusion Models via
    Entropy Bounded Unmasking"): rank the masked positions by the error proxy (the configured
    confidence: ``entropy`` ranks by entropy, ``low_confidence`` by probability) and commit the
    largest prefix U of the ranking with ``sum(H(U)) - max(H(U)) <= gamma`` (at least one)."""

    needs_entropy = True

    @property
    def gamma(self) -> float:
        return self.knob

    @staticmethod
    def accept_rows(ranked: torch.Tensor, knob: torch.Tensor, entropy: torch.Tensor | None) -> torch.Tensor:
        assert entropy is not None
        bound = torch.cumsum(entropy, 1) - torch.cummax(entropy, 1).values
        return _prefix(bound <= knob[:, None])


RANKED_RULES: dict[str, type[BatchedRankedRule]] = {"threshold": Threshold, "factor": Factor,
                                                     "entropy_bound": EntropyBounded}
"""The implementation of every parallel rule of :data:`dpad.rules.RULES`, by name."""


def ranked_rule_name(cfg) -> str | None:  # noqa: ANN001
    """The name of ``cfg``'s parallel rule (the one rule field that is set), or None."""
    return next((name for name in RULES if getattr(cfg, name) is not None), None)


class DependencyGuard(RankedRule):
    """Wraps a ranked rule: of the positions it accepts, walked in rank order, a position is
    dropped when a position already kept in this step lies within ``distance`` of it, unless
    both have confidence >= ``strict``. Neighbouring tokens (the digits of one number) are then
    not committed together from their independent marginals unless both are nearly certain."""

    def __init__(self, base: RankedRule, distance: int, strict: float) -> None:
        self.base, self.distance, self.strict = base, distance, strict
        self.needs_entropy = base.needs_entropy

    def accept_ranked(self, ranked: torch.Tensor, positions: torch.Tensor,
                      entropy: torch.Tensor | None) -> torch.Tensor:
        ok = self.base.accept_ranked(ranked, positions, entropy)
        ok[0] = True
        pos, sure = positions.tolist(), (ranked >= self.strict).tolist()
        kept: list[int] = []
        for r in range(len(pos)):
            if not ok[r]:
                continue
            if any(abs(pos[r] - pos[k]) <= self.distance and not (sure[r] and sure[k]) for k in kept):
                ok[r] = False
            else:
                kept.append(r)
        return ok


class TopK(CountRule):
    """Commit the k most confident masks, k from a fixed schedule. With ``alg_temp`` > 0 the
    positions are sampled (multinomial over softmax(conf / alg_temp)) instead of top-k."""

    def __init__(self, kind: str, steps_per_block: int, eps: float, alg_temp: float,
                 gen: torch.Generator) -> None:
        self.kind, self.spb, self.alg_temp, self.gen = kind, steps_per_block, alg_temp, gen
        self.timesteps = torch.linspace(1, eps, steps_per_block + 1, dtype=torch.float32)
        self.plan: list[int] = []

    def start_block(self, n_masks: int) -> None:
        self.plan = llada_schedule(n_masks, self.spb) if self.kind == "llada" else []

    def count(self, n_masks: int, step: int) -> int:
        if step >= self.spb - (0 if self.kind == "llada" else 1):
            return n_masks  # the schedule is spent: everything left
        if self.kind == "llada":
            return self.plan[step]
        t, s = self.timesteps[step], self.timesteps[step + 1]
        m = torch.tensor(float(n_masks), dtype=torch.float32)
        return int(m * (1 - s / t))

    def select(self, conf: torch.Tensor, masked: torch.Tensor, step: int) -> torch.Tensor:
        out = torch.zeros_like(masked)
        n = int(masked.sum())
        k = min(self.count(n, step), n)
        if k <= 0:
            return out
        c = torch.where(masked, conf, torch.full_like(conf, NEG_INF))
        if self.alg_temp > 0:
            w = torch.softmax(c / self.alg_temp, dim=-1)
            idx = torch.multinomial(w.cpu(), k, replacement=False, generator=self.gen).to(c.device)
        else:
            idx = torch.topk(c, k).indices
        out[idx] = True
        return out


class Origin(TopK):
    """Dream ``origin``: each masked position is revealed with probability 1 - s/t (``torch.rand``
    in float32 over the masked positions, as the reference draws it, at every step), and only the
    revealed positions get a token proposal (and its draw, at temperature > 0)."""

    def choose(self, proposer: Proposer, logits: torch.Tensor, masked: torch.Tensor, step: int,
               layout: tuple[int, int], span: DrawSpan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = torch.zeros(masked.shape, dtype=torch.long, device=logits.device)
        out = torch.zeros_like(masked)
        idx = masked.nonzero()[:, 0]
        u = torch.rand(len(idx), generator=self.gen, dtype=torch.float32).to(logits.device)
        if step >= self.spb - 1:
            reveal = u < 1
        else:
            t, s = self.timesteps[step], self.timesteps[step + 1]
            reveal = u < (1 - s / t).to(logits.device)
        idx = idx[reveal]
        if len(idx):
            sample = proposer.sample if isinstance(proposer, DreamProposer) else (
                lambda lg: proposer(lg, torch.ones(len(lg), dtype=torch.bool, device=lg.device)))
            x0[idx] = sample(logits[idx])[0]
            out[idx] = True
        return out, x0


class Unmasker:
    """Proposal + count rule, bound to one decode run."""

    def __init__(self, cfg, family: str, gen: torch.Generator, eos_id: int | None = None,  # noqa: ANN001
                 eot_id: int | None = None) -> None:
        proposer = DreamProposer if family == "dream" else Proposer
        self.reference_draws = family != "dream"
        # Fast-dLLM's and DPad's baseline prefix-cache steps draw a Gumbel tensor they discard
        # before the one they use; DPad's dropout generator (gaussian/uniform suffix) does not
        self.prefix_gumbel = 1 if cfg.suffix in ("gaussian", "uniform") else 2
        self.cache = cfg.cache
        ends = tuple(i for i in (eos_id, eot_id) if i is not None)
        banned = (eos_id,) if cfg.logits_eos_inf and eos_id is not None else ()
        unconfident = ends if cfg.confidence_eos_eot_inf else ()
        self.proposer = proposer(cfg.confidence, cfg.temperature, cfg.top_p, cfg.top_k, gen, banned, unconfident)
        self.layout = (0, 0)
        kind = cfg.schedule if cfg.schedule != "auto" else ("dream" if family == "dream" else "llada")
        name = ranked_rule_name(cfg)
        ranked: RankedRule | None = None if name is None else RANKED_RULES[name](getattr(cfg, name))
        if ranked is not None and cfg.dependency_distance is not None:
            strict = float("inf") if cfg.dependency_threshold is None else cfg.dependency_threshold
            ranked = DependencyGuard(ranked, cfg.dependency_distance, strict)
        if ranked is not None:
            self.rule: CountRule = ranked
        elif cfg.confidence == "origin":
            self.rule = Origin("dream", cfg.steps_per_block, cfg.eps, 0.0, gen)
        else:
            self.rule = TopK(kind, cfg.steps_per_block, cfg.eps, cfg.alg_temp, gen)

    def start_block(self, n_masks: int, layout: tuple[int, int] = (0, 0)) -> None:
        """A new block with ``n_masks`` masks; ``layout``: the row's canvas positions before and
        after the block (its own coordinates, padding excluded)."""
        self.layout = layout
        self.rule.start_block(n_masks)

    def draw_span(self, start: int, length: int, block_start: int, cached_step: bool) -> DrawSpan | None:
        """What the reference draws over at a forward that fed view positions ``[start, start +
        length)`` with the block at view position ``block_start`` (``cached_step``: a forward that
        reads a KV cache, not a block's first one). None for Dream, which draws per masked position."""
        if not self.reference_draws:
            return None
        gumbel = self.prefix_gumbel if cached_step and self.cache == "prefix" else 1
        return DrawSpan(length, block_start - start, gumbel)

    def select(self, logits: torch.Tensor, masked: torch.Tensor, step: int,
               span: DrawSpan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """logits [n, V], masked [n] -> (commit mask [n], tokens [n]); ``span``: see :meth:`draw_span`."""
        return self.rule.choose(self.proposer, logits, masked, step, self.layout, span)


# --------------------------------------------------------------------------- batched selection
GREEDY_CONFIDENCES = ("low_confidence", "maskgit_plus", "topk_margin", "entropy")


def batchable(cfg) -> bool:  # noqa: ANN001
    """Whether rows decoded with ``cfg`` go through :func:`select_batch`: greedy proposals with a
    deterministic confidence, or (``rng='device'``) sampled ones with counter-based noise, under a
    ranked rule (under the dependency guard or not) or a fixed top-k schedule. Other rows (sampling
    or ``alg_temp`` with ``rng='exact'``, ``random``/``origin`` confidences, LLaDA's end-token options)
    are decided one row at a time by their :class:`Unmasker`, which draws from the row's own
    generator exactly as the reference does."""
    plain = not cfg.logits_eos_inf and not cfg.confidence_eos_eot_inf and cfg.confidence in GREEDY_CONFIDENCES
    if cfg.temperature > 0 or cfg.alg_temp > 0:
        return plain and cfg.rng == "device"
    return plain and (cfg.top_p is None or cfg.top_p >= 1.0) and cfg.top_k is None


_M64 = (1 << 64) - 1


def _i64(c: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer on int64 tensors (multiplication wraps modulo 2**64 on every device)."""
    x = (x ^ _shr(x, 30)) * _i64(0xBF58476D1CE4E5B9)
    x = (x ^ _shr(x, 27)) * _i64(0x94D049BB133111EB)
    return x ^ _shr(x, 31)


def counter_uniform(seeds: torch.Tensor, counters: torch.Tensor, L: int, V: int, stream: int = 0) -> torch.Tensor:
    """Uniform noise in (0, 1), float64 ``[n, L, V]``, on ``seeds``' device: value ``[i, j, v]`` is a
    hash of (row i's seed, its counter, ``stream``, j * V + v), so a row's draws depend on nothing
    else (not on the batch, its other rows or ``L``) and are the same on every device. 53 random
    bits each. Stream 0: the token draws; 1: ``alg_temp``'s position draws."""
    key = _mix(_mix(seeds.to(torch.int64) * _i64(0x9E3779B97F4A7C15) + counters.to(torch.int64))
               + stream * _i64(0xC2B2AE3D27D4EB4F))  # [n]
    idx = torch.arange(L * V, device=seeds.device, dtype=torch.int64).view(1, L, V)
    x = _mix(idx * _i64(0xD1B54A32D192ED03) + key.view(-1, 1, 1))
    return (_shr(x, 11).to(torch.float64) + 0.5) * 2.0 ** -53


@dataclass
class RowDraws:
    """The sampling settings of a batch's rows (``rng='device'``): temperature ``[n]`` (0: greedy),
    top-p ``[n]`` (2: none), top-k ``[n]`` (vocabulary size: none), and the noise keys: the row's
    seed and a counter that differs at each of its forwards."""

    temperature: torch.Tensor
    top_p: torch.Tensor
    top_k: torch.Tensor
    seed: torch.Tensor
    counter: torch.Tensor
    sampling: bool = True
    """Some row samples its tokens (else only ``alg_temp`` positions are drawn)."""
    top_k_width: int = 0
    """The largest top-k of the rows that filter (0: none does) and whether some row has a nucleus
    filter: host values, so the step reads nothing back from the device."""
    any_top_p: bool = False

    @classmethod
    def of(cls, cfgs: list, seeds: list[int], counters: list[int], V: int, device: torch.device) -> RowDraws | None:  # noqa: ANN001
        """None when no row draws (every row greedy, no ``alg_temp``)."""
        sampling = any(c.temperature > 0 for c in cfgs)
        if not sampling and all(c.alg_temp == 0 for c in cfgs):
            return None
        t = lambda xs, dt: torch.tensor(xs, dtype=dt, device=device)  # noqa: E731
        ks = [V if c.top_k is None else min(c.top_k, V) for c in cfgs]
        ps = [2.0 if c.top_p is None or c.top_p >= 1.0 else c.top_p for c in cfgs]
        return cls(t([c.temperature for c in cfgs], torch.float64), t(ps, torch.float64), t(ks, torch.long),
                   t(seeds, torch.long), t(counters, torch.long), sampling,
                   max((k for k in ks if k < V), default=0), min(ps) < 1.0)


def _top_k_rows(lg: torch.Tensor, k: torch.Tensor, width: int) -> torch.Tensor:
    """Per row, logits below its k-th largest set to -inf (ties kept), as :func:`top_k_filter`;
    rows with ``k`` >= the vocabulary size untouched. ``width``: the largest ``k`` of the rows that
    filter (0: none does), a host number, so nothing is read back from the device."""
    V = lg.shape[-1]
    if width <= 0:
        return lg
    idx = (k.clamp(max=width) - 1).view(-1, 1, 1).expand(*lg.shape[:2], 1)
    kth = torch.topk(lg, width, dim=-1).values.gather(-1, idx)
    return lg.masked_fill((lg < kth) & (k < V).view(-1, 1, 1), NEG_INF)


def _top_p_rows(lg: torch.Tensor, p: torch.Tensor, any_p: bool) -> torch.Tensor:
    """Per row, the nucleus filter of :func:`top_p_filter` (rows with ``p`` >= 1 untouched;
    ``any_p``: some row filters, a host flag)."""
    if not any_p:
        return lg
    on = p < 1.0
    sorted_l, order = torch.sort(lg, descending=True, dim=-1)
    drop = sorted_l.softmax(-1).cumsum(-1) > p.view(-1, 1, 1)
    drop = torch.cat([torch.zeros_like(drop[..., :1]), drop[..., :-1]], dim=-1)
    drop = torch.zeros_like(drop).scatter(-1, order, drop) & on.view(-1, 1, 1)
    return lg.masked_fill(drop, NEG_INF)


def propose_sampled(logits: torch.Tensor, confidences: list[str], sampler: str,
                    draws: RowDraws) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`propose_greedy` for rows of which some sample (``draws.temperature`` > 0), with
    each family's distribution as its reference sampler defines it: LLaDA samples softmax(l / T)
    of the top-k- then top-p-filtered logits l (its Gumbel-max ``exp(l) / (-log u) ** T``) and reads
    confidences from the untempered filtered softmax; Dream filters the tempered logits (top-p,
    then top-k) and samples and reads confidences from their softmax. The noise is
    :func:`counter_uniform`, as Gumbel-max: ``argmax(z + g)``, ``g = -log(-log u)``."""
    lg = logits.to(torch.float64)
    n, L, V = lg.shape
    T = draws.temperature.view(-1, 1, 1)
    hot = T > 0
    if sampler == "dream":
        z = _top_k_rows(_top_p_rows(torch.where(hot, lg / torch.where(hot, T, 1.0), lg), draws.top_p, draws.any_top_p),
                        draws.top_k, draws.top_k_width)
        p = torch.softmax(z, dim=-1)
    else:
        f = _top_p_rows(_top_k_rows(lg, draws.top_k, draws.top_k_width), draws.top_p, draws.any_top_p)
        p = torch.softmax(f, dim=-1)
        z = torch.where(hot, f / torch.where(hot, T, 1.0), f)
    g = -torch.log(-torch.log(counter_uniform(draws.seed, draws.counter, L, V)))
    x0 = torch.where(hot[..., 0], torch.argmax(z + g, dim=-1), torch.argmax(p if sampler == "dream" else lg, dim=-1))
    conf = torch.gather(p, -1, x0[..., None])[..., 0]
    return x0, _other_confidences(conf, p, confidences), p


class RowRule:
    """How one batchable row decides this step, as plain numbers: ``rule`` is a ``RANKED_RULES``
    name with its ``knob``, or ``"count"``: commit the ``count`` most confident (``count`` < 0: all
    that are left; with ``ratio`` set, Dream's ``int(m * ratio)`` of the ``m`` masks left).
    ``distance`` >= 0 puts a ranked rule under the :class:`DependencyGuard` (``strict``: its bound);
    ``alg_temp`` > 0 (a count, ``rng='device'``) samples the positions (see :func:`select_batch`)."""

    __slots__ = ("rule", "knob", "count", "ratio", "distance", "strict", "alg_temp")

    def __init__(self, rule: str, knob: float = 0.0, count: int = 0, ratio: torch.Tensor | None = None,
                 distance: int = -1, strict: float = float("inf"), alg_temp: float = 0.0) -> None:
        self.rule, self.knob, self.count, self.ratio = rule, knob, count, ratio
        self.distance, self.strict, self.alg_temp = distance, strict, alg_temp


def propose_greedy(logits: torch.Tensor, confidences: list[str], sampler: str) -> tuple[torch.Tensor, torch.Tensor,
                                                                                          torch.Tensor]:
    """logits [n, L, V] -> (tokens [n, L], confidences [n, L], probabilities [n, L, V]), float64, for
    greedy rows: what :class:`Proposer` (LLaDA: argmax of the logits) or :class:`DreamProposer`
    (Dream: the most probable token) compute one row at a time, with each row's own confidence."""
    lg = logits.to(torch.float64)
    p = torch.softmax(lg, dim=-1)
    if sampler == "dream":
        conf, x0 = p.max(dim=-1)
    else:
        x0 = torch.argmax(lg, dim=-1)
        conf = torch.gather(p, -1, x0[..., None])[..., 0]
    return x0, _other_confidences(conf, p, confidences), p


def _other_confidences(conf: torch.Tensor, p: torch.Tensor, confidences: list[str]) -> torch.Tensor:
    """``conf`` (the proposed token's probability) with the rows whose confidence is ``topk_margin``
    (top-1 minus top-2 probability) or ``entropy`` (negative entropy) replaced, from ``p`` [n, L, V]."""
    for kind in set(confidences) & {"topk_margin", "entropy"}:
        if kind == "topk_margin":
            top2 = torch.topk(p, 2, dim=-1).values
            alt = top2[..., 0] - top2[..., 1]
        else:
            alt = (p * torch.log(p + 1e-10)).sum(-1)
        rows = torch.tensor([c == kind for c in confidences], device=p.device)
        conf = torch.where(rows[:, None], alt, conf)
    return conf


def select_batch(logits: torch.Tensor, masked: torch.Tensor, confidences: list[str], rules: list[RowRule],
                 sampler: str, draws: RowDraws | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which masked positions each row commits, and to what, for batchable rows in one tensor
    computation: logits [n, L, V], masked [n, L] -> (commit mask [n, L], tokens [n, L]).

    Ranking is a stable descending sort of the masked confidences (equal confidences: the leftmost
    position first). A ranked rule keeps the ranks its ``accept_rows`` passes, always the top-1; a
    count keeps the ``k`` first ranks (``k`` may be 0 on Dream's schedule). ``draws``: the rows'
    sampling settings when some row samples (:func:`propose_sampled`)."""
    n, L = masked.shape
    dev = logits.device
    if draws is None or not draws.sampling:
        x0, conf, p = propose_greedy(logits, confidences, sampler)
    else:
        x0, conf, p = propose_sampled(logits, confidences, sampler, draws)
    conf = conf.masked_fill(~masked, NEG_INF)
    if any(r.alg_temp > 0 for r in rules):
        # alg_temp: k positions drawn without replacement from softmax(conf / alg_temp), as
        # Gumbel-top-k (the k largest of conf / alg_temp + Gumbel noise: the same distribution)
        assert draws is not None
        tau = torch.tensor([r.alg_temp if r.alg_temp > 0 else 1.0 for r in rules], dtype=conf.dtype, device=dev)[:, None]
        u = counter_uniform(draws.seed, draws.counter, 1, L, stream=1)[:, 0]
        hot = torch.tensor([r.alg_temp > 0 for r in rules], device=dev)[:, None]
        conf = torch.where(hot & masked, conf / tau - torch.log(-torch.log(u)), conf)
    ranked, order = torch.sort(conf, dim=1, descending=True, stable=True)
    left = masked.sum(1)  # [n]
    names = [r.rule for r in rules]
    ent = None
    if any(name in RANKED_RULES and RANKED_RULES[name].needs_entropy for name in names):
        ent = torch.special.entr(p).sum(-1).gather(1, order)
    rank = torch.arange(L, device=dev)
    kinds = list(dict.fromkeys(names))
    accept = None
    for name in kinds:
        if name == "count":
            acc = _count_accept(rules, left, rank)
        else:
            knob = torch.tensor([r.knob for r in rules], dtype=torch.float64, device=dev)
            acc = RANKED_RULES[name].accept_rows(ranked, knob, ent)
            acc[:, 0] = True
        if len(kinds) == 1:
            accept = acc
        else:
            rows = torch.tensor([x == name for x in names], device=dev)
            accept = torch.where(rows[:, None], acc, accept if accept is not None else torch.zeros_like(acc))
    assert accept is not None
    accept &= rank[None] < left[:, None]
    if any(r.distance >= 0 for r in rules):
        accept = _guard_rows(accept, ranked, order, rules)
    chosen = torch.zeros_like(accept).scatter_(1, order, accept)
    return chosen, x0


def _guard_rows(accept: torch.Tensor, ranked: torch.Tensor, order: torch.Tensor, rules: list[RowRule]) -> torch.Tensor:
    """:class:`DependencyGuard` over rows at once: walking the ranks in order, an accepted rank is
    dropped when a rank kept before it lies within the row's distance, unless both pass its strict
    bound (rows without a guard: distance -1, nothing dropped). One tensor step per rank, whatever
    the number of rows."""
    dev = accept.device
    dist = torch.tensor([r.distance for r in rules], device=dev)[:, None]
    strict = torch.tensor([r.strict for r in rules], dtype=ranked.dtype, device=dev)[:, None]
    sure = ranked >= strict
    kept = torch.zeros_like(accept)
    for k in range(accept.shape[1]):
        near = (order[:, :k] - order[:, k:k + 1]).abs() <= dist
        clash = (near & kept[:, :k] & ~(sure[:, :k] & sure[:, k:k + 1])).any(1)
        kept[:, k] = accept[:, k] & ~clash
    return kept


def _count_accept(rules: list[RowRule], left: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The first k ranks of each row: k from the row's fixed schedule (host numbers), all that are
    left (k < 0), or Dream's ``int(m * (1 - s/t))`` in float32 for the m masks left."""
    dev = left.device
    k = torch.tensor([r.count for r in rules], dtype=torch.long, device=dev)
    k = torch.where(k < 0, left, k)
    if any(r.ratio is not None for r in rules):
        ratio = torch.stack([r.ratio if r.ratio is not None else torch.zeros((), dtype=torch.float32)
                             for r in rules]).to(dev)
        dream = torch.tensor([r.ratio is not None for r in rules], device=dev)
        k = torch.where(dream, (left.to(torch.float32) * ratio).to(torch.long), k)
    return rank[None] < torch.minimum(k, left)[:, None]
