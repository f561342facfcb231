"""The parallel rules: Fast-dLLM's factor rule with DPad's quirk (the first failure at the last rank
commits every rank), the EB-sampler (``entropy_bound``) and the dependency guard
(``dependency_distance`` / ``dependency_threshold``): the selection itself, validation, and their
composition with the caches and DPad on the golden tiny model (float64, CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from dpad.config import DecodeConfig
from dpad.engine import decode, decode_batch
from dpad.engine.unmask import (
    DependencyGuard,
    EntropyBounded,
    Factor,
    Proposer,
    RowRule,
    Threshold,
    Unmasker,
    select_batch,
)
from dpad.errors import ConfigError

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
MASK, EOS = 250, 251
BASE = dict(gen_length=64, block_length=16)
DPAD = dict(suffix="gaussian", scale=2.0, window=32, sigma=4.0, early_termination=True)


def _eb_by_formula(entropy: list[float], order: list[int], gamma: float) -> set[int]:
    """The EB-sampler written out: walk the ranking, stop before sum - max exceeds gamma."""
    chosen: list[int] = []
    for i in order:
        hs = [entropy[j] for j in chosen + [i]]
        if chosen and sum(hs) - max(hs) > gamma:
            break
        chosen.append(i)
    return set(chosen)


@pytest.mark.parametrize("gamma", [0.0, 0.05, 0.3, 1.0, 100.0])
def test_entropy_bounded_is_the_eb_rule(gamma: float) -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(12, 30, generator=g, dtype=torch.float64) * 4
        masked = torch.rand(12, generator=g) < 0.7
        masked[3] = True
        prop = Proposer("low_confidence", 0.0, None, None, g)
        _, conf = prop(logits, masked)
        ent = prop.entropy(logits)
        p = logits.softmax(-1)
        assert torch.allclose(ent, -(p * p.log()).sum(-1))
        got = EntropyBounded(gamma).select(conf, masked, 0, ent)
        order = sorted(torch.nonzero(masked).flatten().tolist(), key=lambda i: -float(conf[i]))
        assert set(torch.nonzero(got).flatten().tolist()) == _eb_by_formula(ent.tolist(), order, gamma)
        assert got.sum() >= 1 and not (got & ~masked).any()


def test_entropy_bounded_ranked_by_entropy() -> None:
    """confidence='entropy' ranks by entropy (the paper's entropy proxy): the set is a prefix of the
    entropy-ascending order."""
    ent = torch.tensor([0.5, 0.01, 0.2, 0.02, 0.9], dtype=torch.float64)
    masked = torch.ones(5, dtype=torch.bool)
    got = EntropyBounded(0.1).select(-ent, masked, 0, ent)  # conf = -entropy
    # ascending: 0.01, 0.02, 0.2, 0.5 -> sums minus max: 0, 0.01, 0.03, 0.23 -> the first three
    assert torch.nonzero(got).flatten().tolist() == [1, 2, 3]
    assert EntropyBounded(0.0).select(-ent, masked, 0, ent).sum() == 1


def _logits_for(conf: torch.Tensor) -> torch.Tensor:
    """Logits over 2 tokens whose argmax (token 0, conf > 0.5) has probability ``conf``."""
    return torch.stack([conf, 1 - conf], -1).log()


def _factor_count_reference(sorted_conf: list[float], f: float) -> int:
    """How many ranks DPad's ``get_transfer_index_dynamic`` commits (llada/generate_baseline.py,
    from its documented behaviour): bounds 1 - f/(n+1) for n = 1..m with the first set to -1; walk
    to the first rank below its bound (the walk ends on the last rank when none is); that index,
    plus one when it is the first or the last rank."""
    m = len(sorted_conf)
    bounds = [-1.0] + [1 - f / (n + 1) for n in range(2, m + 1)]
    top = 0
    for top in range(m):
        if sorted_conf[top] < bounds[top]:
            break
    return top + 1 if top in (0, m - 1) else top


def test_factor_commits_all_when_only_the_last_rank_fails() -> None:
    """The quirk: bounds for f = 1 are 0.667, 0.75, 0.8, 0.833 for ranks 2..5. Ranks 1-4 pass and
    the last (0.55 < 0.833) fails: the reference commits all five, the failing one included."""
    conf = torch.tensor([0.95, 0.55, 0.99, 0.9, 0.85], dtype=torch.float64)  # ranked: .99 .95 .9 .85 .55
    masked = torch.ones(5, dtype=torch.bool)
    ranked = conf.sort(descending=True).values
    assert _factor_count_reference(ranked.tolist(), 1.0) == 5
    assert Factor(1.0).accept_ranked(ranked, torch.arange(5), None).tolist() == [True] * 5
    assert Factor(1.0).select(conf, masked, 0).all()  # the one-row path
    chosen, _ = select_batch(_logits_for(conf)[None], masked[None], ["low_confidence"],
                             [RowRule("factor", knob=1.0)], "llada")
    assert chosen.all()  # the batched path
    # a failure before the last rank stops there (the failing rank and everything after it stay)
    conf2 = torch.tensor([0.99, 0.95, 0.7, 0.6, 0.9], dtype=torch.float64)  # ranked .99 .95 .9 .7 .6: rank 4 fails
    assert Factor(1.0).select(conf2, masked, 0).tolist() == [True, True, False, False, True]
    conf3 = torch.tensor([0.99, 0.5, 0.6, 0.7, 0.9], dtype=torch.float64)  # ranked .99 .9 .7 .6 .5: rank 3 fails
    assert Factor(1.0).select(conf3, masked, 0).tolist() == [True, False, False, False, True]
    # two masks: the second failing is the last rank, so both are committed
    two = torch.tensor([0.2, 0.1], dtype=torch.float64)
    assert Factor(1.0).select(two, torch.ones(2, dtype=torch.bool), 0).all()
    # unmasked positions do not count as ranks: the last *masked* rank is what matters
    wide = torch.tensor([0.99, 0.3, 0.95, 0.1], dtype=torch.float64)
    assert Factor(1.0).select(wide, torch.tensor([True, False, True, True]), 0).tolist() == [True, False, True, True]


@pytest.mark.parametrize("f", [0.1, 0.5, 1.0, 2.0, 4.0])
def test_factor_matches_the_reference_count(f: float) -> None:
    """Random confidences, both paths (batched over rows of different mask counts, and one row
    with and without the guard) against the reference's walk."""
    g = torch.Generator().manual_seed(int(f * 10))
    rows, L = 200, 12
    spread = torch.where(torch.rand(rows, 1, generator=g) < 0.5, 0.5, 0.02).to(torch.float64)
    conf = 1 - torch.rand(rows, L, generator=g, dtype=torch.float64) ** 3 * spread  # > 0.5: the argmax
    masked = torch.rand(rows, L, generator=g) < 0.6
    masked[:, 0] = True
    quirk = 0
    for r in range(rows):
        m = int(masked[r].sum())
        ranked = conf[r][masked[r]].sort(descending=True).values
        want = _factor_count_reference(ranked.tolist(), f)
        quirk += m > 1 and want == m and bool(ranked[-1] < 1 - f / (m + 1))
        one = Factor(f).select(conf[r], masked[r], 0)
        assert int(one.sum()) == want and not (one & ~masked[r]).any()
        assert bool((conf[r][one].min() >= conf[r][masked[r] & ~one].max()) if want < m else True)
        wide = DependencyGuard(Factor(f), 0, math.inf).select(conf[r], masked[r], 0)
        assert torch.equal(wide, one)  # distance 0 never drops a position
    # the batched path: the confidences as each position's probability of its argmax
    lg = _logits_for(conf)
    chosen, _ = select_batch(lg, masked, ["low_confidence"] * rows, [RowRule("factor", knob=f)] * rows, "llada")
    for r in range(rows):
        one = Factor(f).select(torch.softmax(lg[r], -1)[:, 0], masked[r], 0)
        assert torch.equal(chosen[r], one), r
    assert quirk > 0  # some rows hit the quirk


def test_dependency_guard_selection() -> None:
    conf = torch.tensor([0.9995, 0.95, 0.999, 0.5, 0.97, 0.92, 0.2, 0.9992], dtype=torch.float64)
    masked = torch.ones(8, dtype=torch.bool)
    base = Threshold(0.9).select(conf, masked, 0)
    assert torch.nonzero(base).flatten().tolist() == [0, 1, 2, 4, 5, 7]
    guard = DependencyGuard(Threshold(0.9), 1, 0.99)
    # rank order 0, 7, 2 (all sure, kept), then 4 (0.97, no kept neighbour: kept), 1 (0.95,
    # next to sure 0 and 2 but itself not sure: dropped), 5 (0.92, next to 4: dropped)
    assert torch.nonzero(guard.select(conf, masked, 0)).flatten().tolist() == [0, 2, 4, 7]
    never = DependencyGuard(Threshold(0.9), 2, math.inf)
    assert torch.nonzero(never.select(conf, masked, 0)).flatten().tolist() == [0, 4, 7]
    # the top-1 is always committed, even under the widest guard
    only = DependencyGuard(Threshold(0.9), 100, math.inf).select(conf, masked, 0)
    assert only.sum() == 1 and bool(only[0])


@pytest.mark.parametrize(("field", "kw"), [
    ("entropy_bound", dict(entropy_bound=-0.1)),
    ("entropy_bound", dict(entropy_bound="x")),
    ("entropy_bound", dict(entropy_bound=0.1, threshold=0.9)),
    ("entropy_bound", dict(entropy_bound=0.1, factor=1.0)),
    ("dependency_distance", dict(dependency_distance=1)),
    ("dependency_distance", dict(threshold=0.9, dependency_distance=0)),
    ("dependency_distance", dict(threshold=0.9, dependency_distance=1.5)),
    ("dependency_distance", dict(threshold=0.9, dependency_distance=True)),
    ("dependency_threshold", dict(threshold=0.9, dependency_distance=1, dependency_threshold=0.0)),
    ("dependency_threshold", dict(threshold=0.9, dependency_distance=1, dependency_threshold=1.5)),
    ("dependency_threshold", dict(threshold=0.9, dependency_threshold=0.99)),
    ("confidence", dict(confidence="origin", entropy_bound=0.1)),
])
def test_invalid_rule_options_name_the_field(field: str, kw: dict) -> None:
    with pytest.raises(ConfigError, match=field):
        DecodeConfig(**kw)


def test_method_label_and_text_numbers() -> None:
    assert DecodeConfig(entropy_bound=0.1, cache="prefix").method_name() == "parallel+prefix"
    # numbers as text are refused, as for every numeric field (tests/test_config.py)
    with pytest.raises(ConfigError, match="^entropy_bound='0.25' is invalid: text is not a number"):
        DecodeConfig(entropy_bound="0.25")
    with pytest.raises(ConfigError, match="^dependency_threshold='0.99' is invalid: text is not a number"):
        DecodeConfig(threshold=0.9, dependency_distance=2, dependency_threshold="0.99")
    cfg = DecodeConfig(threshold=0.9, dependency_distance=2, dependency_threshold=0.99)
    assert cfg.dependency_threshold == 0.99 and cfg.parallel


@pytest.fixture(scope="module")
def llada():
    from dpad.models import load

    torch.set_num_threads(1)
    return load(GOLDEN / "llada-tiny", dtype="float64")


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 250, (n,), generator=g).tolist() for n in (5, 12, 20, 8)]


COMBOS = {"none": {}, "prefix+dpad": dict(cache="prefix", **DPAD), "dual+dpad": dict(cache="dual", **DPAD)}
SHORT = dict(gen_length=32, block_length=16)


@pytest.mark.parametrize("combo", list(COMBOS))
def test_degenerate_rules_equal_one_token_per_step(llada, prompts: list, combo: str) -> None:
    """Under every cache and suffix policy, EB with gamma=0 (no zero-entropy positions here) and
    the guard with D >= block length and no strict bound commit exactly the top-1 per step: the
    same tokens and NFE as the one-token-per-step schedule with the same cache and suffix."""
    plain = DecodeConfig(**SHORT, **{**COMBOS[combo], "window": 16} if COMBOS[combo] else {})
    ref = decode_batch(llada.model, prompts, plain, mask_id=MASK, eos_id=EOS)
    for rule in (dict(entropy_bound=0.0), dict(threshold=0.5, dependency_distance=16),
                 dict(entropy_bound=5.0, dependency_distance=16)):
        got = decode_batch(llada.model, prompts, plain.replace(**rule), mask_id=MASK, eos_id=EOS)
        for a, b in zip(ref, got, strict=True):
            assert b.generated == a.generated, rule
            assert b.nfe == a.nfe, rule


@pytest.mark.parametrize("combo", ["prefix+dpad", "dual+dpad"])
@pytest.mark.parametrize("rule", [dict(entropy_bound=0.5), dict(threshold=0.3, dependency_distance=1,
                                                                   dependency_threshold=0.6),
                                  dict(entropy_bound=1.0, dependency_distance=2, dependency_threshold=0.5)])
def test_rules_batch_equals_singles_and_go_parallel(llada, prompts: list, combo: str, rule: dict) -> None:
    cfg = DecodeConfig(**BASE, **COMBOS[combo], **rule)
    singles = [decode(llada.model, p, cfg, mask_id=MASK, eos_id=EOS) for p in prompts]
    batch = decode_batch(llada.model, prompts, cfg, mask_id=MASK, eos_id=EOS)
    for s, b in zip(singles, batch, strict=True):
        assert b.generated == s.generated and b.nfe == s.nfe and b.kept_per_block == s.kept_per_block
    one = decode_batch(llada.model, prompts, DecodeConfig(**BASE, **COMBOS[combo]), mask_id=MASK, eos_id=EOS)
    assert sum(b.nfe for b in batch) < sum(o.nfe for o in one)  # the rules really commit in parallel


def test_sampling_rules_are_seeded(llada, prompts: list) -> None:
    cfg = DecodeConfig(**BASE, temperature=1.0, entropy_bound=0.5, cache="prefix", **DPAD)
    a = [decode(llada.model, p, cfg, mask_id=MASK, eos_id=EOS).generated for p in prompts[:3]]
    b = [decode(llada.model, p, cfg, mask_id=MASK, eos_id=EOS).generated for p in prompts[:3]]
    c = [decode(llada.model, p, cfg.replace(seed=7), mask_id=MASK, eos_id=EOS).generated for p in prompts[:3]]
    assert a == b and a != c


def test_unmasker_builds_the_rules() -> None:
    g = torch.Generator()
    assert isinstance(Unmasker(DecodeConfig(entropy_bound=0.1), "llada", g).rule, EntropyBounded)
    u = Unmasker(DecodeConfig(entropy_bound=0.1, dependency_distance=1), "llada", g)
    assert isinstance(u.rule, DependencyGuard) and isinstance(u.rule.base, EntropyBounded)
    assert u.rule.strict == math.inf and u.rule.needs_entropy


def test_dream_rules_batch_equals_singles(prompts: list) -> None:
    """The Dream proposal (tempered, filtered distribution) feeds EB its own entropies; batch == singles."""
    from dpad.models import load

    lm = load(GOLDEN / "dream-tiny", dtype="float64")
    cfg = DecodeConfig(**BASE, entropy_bound=0.5, dependency_distance=1, dependency_threshold=0.7,
                       cache="prefix", temperature=0.5, top_p=0.9, **DPAD)
    singles = [decode(lm.model, p, cfg, mask_id=MASK, eos_id=EOS) for p in prompts]
    batch = decode_batch(lm.model, prompts, cfg, mask_id=MASK, eos_id=EOS)
    for s, b in zip(singles, batch, strict=True):
        assert b.generated == s.generated and b.nfe == s.nfe


def test_batched_guard_matches_the_row_guard() -> None:
    """The dependency guard in the batched step against :class:`DependencyGuard` row by row: random
    confidences, rows with other distances, strict bounds, rules and mask counts, and rows without
    a guard in the same batch."""
    g = torch.Generator().manual_seed(3)
    rows, L = 300, 16
    conf = 1 - torch.rand(rows, L, generator=g, dtype=torch.float64) ** 2 * 0.4  # > 0.5: the argmax
    masked = torch.rand(rows, L, generator=g) < 0.7
    masked[:, 0] = True
    lg = _logits_for(conf)
    p = torch.softmax(lg, -1)[..., 0]
    rules, want, dropped = [], [], 0
    for r in range(rows):
        dist = r % 5 - 1  # -1: no guard, then 0..3
        strict = (math.inf, 0.97, 0.9)[r % 3]
        base = Threshold(0.8) if r % 2 else Factor(1.0)
        name, knob = ("threshold", 0.8) if r % 2 else ("factor", 1.0)
        rules.append(RowRule(name, knob=knob, distance=dist, strict=strict))
        one = (base if dist < 0 else DependencyGuard(base, dist, strict)).select(p[r], masked[r], 0)
        dropped += int(base.select(p[r], masked[r], 0).sum() - one.sum())
        want.append(one)
    chosen, _ = select_batch(lg, masked, ["low_confidence"] * rows, rules, "llada")
    for r in range(rows):
        assert torch.equal(chosen[r], want[r]), r
    assert dropped > 0  # the guard did drop positions
