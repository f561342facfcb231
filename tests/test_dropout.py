"""Suffix policies: GaussianDecay statistics, UniformKeep, Window, Full and Explicit."""

from __future__ import annotations

import math

import pytest
import torch

from dpad.config import DecodeConfig
from dpad.engine.suffix import (
    Explicit,
    Full,
    GaussianDecay,
    UniformKeep,
    Window,
    from_config,
    gaussian_keep_prob,
)

N_DRAWS = 4000


def phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize(("window", "sigma", "scale"), [(64, 4.0, 2.0), (40, 3.0, 3.0), (17, 1.0, 0.5)])
def test_gaussian_keep_prob_formula(window: int, sigma: float, scale: float) -> None:
    p = gaussian_keep_prob(window, sigma, scale)
    assert p.dtype == torch.float32 and p.shape == (window,)
    want = torch.tensor([scale * phi(sigma * d / (window - 1)) for d in range(window)], dtype=torch.float64)
    assert torch.allclose(p.double(), want, rtol=1e-6, atol=0)
    assert bool((p[1:] <= p[:-1]).all()), "keep probability decays with distance"


@pytest.mark.parametrize(("window", "sigma", "scale"), [(64, 4.0, 2.0), (40, 3.0, 3.0)])
def test_gaussian_empirical_keep_rate(window: int, sigma: float, scale: float) -> None:
    """Over N = 4000 blocks the keep count at distance d is Binomial(N, q_d), q_d = min(1, p(d)).

    Tolerance: |rate_d - q_d| <= 5 * sqrt(q_d (1 - q_d) / N) + 1e-6, a two-sided 5-sigma bound
    (normal approximation; per-distance false-alarm probability ~5.7e-7, so ~4e-5 over the 64
    distances of the larger window). For q_d = 1 (scale 3.0 clips near d = 0) the bound is 0: such
    tokens must be kept every time. The test is seeded, hence deterministic.
    """
    policy = GaussianDecay(window, sigma, scale)
    policy.reset(2024)
    q = policy.prob.double().clamp(max=1.0)
    beyond = 24  # suffix tokens past the window, which must never be kept
    counts = torch.zeros(window + beyond, dtype=torch.float64)
    kept_sizes = []
    for i in range(N_DRAWS):
        block_end = 100 + 16 * (i % 7)  # vary the block position: only the distance matters
        kept = policy.kept(block_end, block_end + window + beyond)
        assert kept.dtype == torch.long
        assert bool((kept[1:] > kept[:-1]).all()), "kept positions are sorted and distinct"
        counts[kept - block_end] += 1
        kept_sizes.append(len(kept))
    assert counts[window:].sum() == 0, "nothing beyond the window is ever kept"
    rate = counts[:window] / N_DRAWS
    tol = 5 * torch.sqrt(q * (1 - q) / N_DRAWS) + 1e-6
    bad = (rate - q).abs() > tol
    assert not bad.any(), f"distances {bad.nonzero().flatten().tolist()}: rate {rate[bad]} vs p {q[bad]}"
    if scale > 1 / phi(0):
        assert rate[0] == 1.0  # p(0) > 1 is kept every time
    # the mean kept count matches expected_kept (sum of N draws: sd = sqrt(sum q(1-q)) / sqrt(N) per block)
    mean_sd = math.sqrt(float((q * (1 - q)).sum()) / N_DRAWS)
    assert abs(sum(kept_sizes) / N_DRAWS - policy.expected_kept()) <= 5 * mean_sd


def test_gaussian_short_suffix_and_reset() -> None:
    policy = GaussianDecay(32, 4.0, 2.0)
    policy.reset(5)
    for avail in (0, 1, 5, 31):
        kept = policy.kept(200, 200 + avail)
        assert all(200 <= p < 200 + avail for p in kept.tolist())
    policy.reset(5)
    a = [policy.kept(64, 200).tolist() for _ in range(5)]
    policy.reset(5)
    b = [policy.kept(64, 200).tolist() for _ in range(5)]
    assert a == b
    assert policy.expected_kept(available=5) == pytest.approx(float(policy.prob[:5].clamp(max=1).sum()))


def test_expected_kept_paper_setting() -> None:
    """W = 256, k = 4, a = 2.0: the docs' "~64 kept suffix tokens" (2 * (W-1)/k * 1/2 + ...)."""
    policy = GaussianDecay(256, 4.0, 2.0)
    expected = policy.expected_kept()
    assert abs(expected - 64) <= 2
    assert expected == pytest.approx(sum(min(1.0, 2.0 * phi(4.0 * d / 255)) for d in range(256)), rel=1e-5)


@pytest.mark.parametrize(("window", "n"), [(32, 8), (16, 16), (64, 1), (8, 0)])
def test_uniform_keep_exactly_n(window: int, n: int) -> None:
    policy = UniformKeep(window, n)
    policy.reset(11)
    seen: set[int] = set()
    for i in range(200):
        be = 40 + i % 5
        kept = policy.kept(be, be + window + 10).tolist()
        assert len(kept) == n
        assert kept == sorted(set(kept))
        assert all(be <= p < be + window for p in kept)
        seen.update(p - be for p in kept)
    # drawn uniformly: the kept distances cover most of the window
    assert len(seen) > window // 2 if n else not seen
    # only 3 suffix tokens left: keep min(n, 3) of them
    short = policy.kept(100, 103).tolist()
    assert len(short) == min(n, 3) and all(100 <= p < 103 for p in short)


def test_window_and_full() -> None:
    assert Window(8).kept(10, 30).tolist() == list(range(10, 18))
    assert Window(8).kept(10, 14).tolist() == [10, 11, 12, 13]
    assert Full().kept(10, 14).tolist() == [10, 11, 12, 13]
    assert Full().kept(14, 14).tolist() == []


def test_explicit_replays_and_rejects() -> None:
    policy = Explicit({40: [44, 41, 40], 56: [], "72": [80, 72]})
    policy.reset(0)
    assert policy.kept(40, 88).tolist() == [40, 41, 44]
    assert policy.kept(56, 88).tolist() == []
    assert policy.kept(72, 88).tolist() == [72, 80]
    assert policy.kept(40, 88).dtype == torch.long
    with pytest.raises(KeyError, match="88"):
        policy.kept(88, 88)
    with pytest.raises(ValueError, match=r"outside \[40, 88\)"):
        Explicit({40: [39, 41]}).kept(40, 88)
    with pytest.raises(ValueError, match=r"outside \[40, 88\)"):
        Explicit({40: [41, 88]}).kept(40, 88)
    assert Explicit({40: [87]}).kept(40, 88).tolist() == [87]


def test_from_config() -> None:
    assert isinstance(from_config(DecodeConfig()), Full)
    w = from_config(DecodeConfig(suffix="window", window=12))
    assert isinstance(w, Window) and w.window == 12
    g = from_config(DecodeConfig(suffix="gaussian", window=256, sigma=3.0, scale=1.6))
    assert isinstance(g, GaussianDecay) and g.window == 256
    assert torch.equal(g.prob, gaussian_keep_prob(256, 3.0, 1.6))
    u = from_config(DecodeConfig(suffix="uniform", window=64, uniform_keep=16))
    assert isinstance(u, UniformKeep) and (u.window, u.n) == (64, 16)


def test_explicit_rejects_duplicates() -> None:
    with pytest.raises(ValueError):
        Explicit({40: [41, 41, 45]}).kept(40, 88)
