"""Suffix policies: which masked positions after the current block the model sees.

A policy returns, once per block, the sorted absolute positions it keeps among ``[block_end, L)``.
Dropped positions are physically removed from the model input; kept ones keep their RoPE
positions. Each policy draws from its own seeded ``torch.Generator`` (never the global RNG).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


class SuffixPolicy:
    name = "base"

    def reset(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def kept(self, block_end: int, length: int) -> torch.Tensor:
        raise NotImplementedError


class Full(SuffixPolicy):
    """Vanilla: the whole masked suffix."""

    name = "full"

    def kept(self, block_end: int, length: int) -> torch.Tensor:
        return torch.arange(block_end, length)


class Window(SuffixPolicy):
    """The first W suffix tokens after the block (sliding window, no dropout)."""

    name = "window"

    def __init__(self, window: int) -> None:
        self.window = window

    def kept(self, block_end: int, length: int) -> torch.Tensor:
        return torch.arange(block_end, min(block_end + self.window, length))


def gaussian_keep_prob(window: int, sigma: float, scale: float) -> torch.Tensor:
    """p(d) = scale * phi(sigma * d / (W - 1)) for d = 0..W-1, in float32 as the reference."""
    t = torch.linspace(0, sigma, window, dtype=torch.float32)
    return scale * torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


class GaussianDecay(SuffixPolicy):
    """DPad: inside the window keep distance-d tokens with probability p(d) (one draw per token
    per block, u < p(d)); nothing beyond the window."""

    name = "gaussian"

    def __init__(self, window: int, sigma: float, scale: float) -> None:
        self.window = window
        self.prob = gaussian_keep_prob(window, sigma, scale)

    def expected_kept(self, available: int | None = None) -> float:
        p = self.prob if available is None else self.prob[:available]
        return float(p.clamp(max=1.0).sum())

    def kept(self, block_end: int, length: int) -> torch.Tensor:
        n = length - block_end
        u = torch.rand(n, generator=self.gen)
        p = torch.zeros(n)
        m = min(n, self.window)
        p[:m] = self.prob[:m]
        return block_end + torch.nonzero(u < p).flatten()


class UniformKeep(SuffixPolicy):
    """Ablation: keep n tokens drawn uniformly among the first W suffix tokens."""

    name = "uniform"

    def __init__(self, window: int, n: int) -> None:
        self.window, self.n = window, n

    def kept(self, block_end: int, length: int) -> torch.Tensor:
        avail = min(self.window, length - block_end)
        pick = torch.randperm(avail, generator=self.gen)[: min(self.n, avail)]
        return block_end + torch.sort(pick).values


class Explicit(SuffixPolicy):
    """Replays recorded kept sets: ``{block_end: [positions...]}`` (e.g. a reference run's)."""

    name = "explicit"

    def __init__(self, kept_sets: Mapping[int, Sequence[int]]) -> None:
        self.sets = {int(k): sorted(int(p) for p in v) for k, v in kept_sets.items()}
        for k, v in self.sets.items():
            if len(set(v)) != len(v):
                raise ValueError(f"the kept set for block end {k} lists a position more than once")

    def kept(self, block_end: int, length: int) -> torch.Tensor:
        if block_end not in self.sets:
            raise KeyError(f"no recorded kept set for the block ending at {block_end}")
        pos = torch.tensor(self.sets[block_end], dtype=torch.long)
        if len(pos) and (pos.min() < block_end or pos.max() >= length):
            raise ValueError(f"kept positions for block end {block_end} fall outside [{block_end}, {length})")
        return pos


def positions(kept: torch.Tensor) -> list[int]:
    """A kept set as Python ints (kept sets are drawn on the host: no device is read)."""
    return kept.tolist()


def from_config(cfg) -> SuffixPolicy:  # noqa: ANN001
    if cfg.suffix == "full":
        return Full()
    if cfg.suffix == "window":
        return Window(cfg.window)
    if cfg.suffix == "gaussian":
        return GaussianDecay(cfg.window, cfg.sigma, cfg.scale)
    if cfg.suffix == "uniform":
        return UniformKeep(cfg.window, cfg.uniform_keep)
    raise ValueError(cfg.suffix)
