"""Engine invariants on the tiny float64 models (no reference needed).

- A suffix policy that keeps every suffix token (a window >= gen_length, or a Gaussian whose keep
  probability is >= 1 everywhere) decodes exactly like ``suffix='full'``, for every cache mode.
- Runs are functions of ``seed``: same seed -> same tokens and kept sets; the global RNG is untouched.
- Early termination changes nothing before the block that stopped, and fills EOS after it.
- NFE bookkeeping: with a fixed schedule every block takes exactly its steps (the cache refresh
  forward is step 0), so NFE == steps.
"""

from __future__ import annotations

import pytest
import torch
from conftest import EOS_ID, MASK_ID

from dpad.config import DecodeConfig
from dpad.engine import decode

GEN, BLOCK = 48, 16
CACHES = ["none", "prefix", "dual"]
THRESHOLDS = [None, 0.9]
# (model, compat) pairs: every engine mode that applies to the model family
MODES = [("llada-tiny", "none"), ("llada-tiny", "fast-dllm"), ("dream-tiny", "none"), ("dream-tiny", "dpad-dream")]
MODE_IDS = [f"{m}-{c}" for m, c in MODES]


@pytest.fixture(scope="module")
def prompt(cases: list[dict]) -> list[int]:
    return cases[0]["prompt_ids"]


def run(lm, prompt: list[int], eos: int = EOS_ID, **kw):  # noqa: ANN001, ANN003, ANN201
    base = dict(gen_length=GEN, block_length=BLOCK)
    base.update(kw)
    return decode(lm.model, prompt, DecodeConfig(**base), mask_id=MASK_ID, eos_id=eos)


@pytest.mark.parametrize("threshold", THRESHOLDS, ids=["topk", "thr0.9"])
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize(("model", "compat"), MODES, ids=MODE_IDS)
def test_keep_everything_equals_full(model: str, compat: str, cache: str, threshold: float | None,
                                     tiny_models: dict, prompt: list[int]) -> None:
    lm = tiny_models[model]
    kw = dict(cache=cache, threshold=threshold, compat=compat, steps=GEN // 2 if threshold is None else None)
    full = run(lm, prompt, suffix="full", **kw)
    window = run(lm, prompt, suffix="window", window=GEN, **kw)
    # p(d) >= 1e4 * phi(4) = 1.34 for every d < W: every suffix token is kept
    gauss = run(lm, prompt, suffix="gaussian", window=GEN, sigma=4.0, scale=1e4, **kw)
    assert MASK_ID not in full.ids
    L = len(prompt) + GEN
    for out in (full, window, gauss):
        assert out.kept_per_block == [list(range(be, L)) for be in range(len(prompt) + BLOCK, L + 1, BLOCK)]
    assert window.ids == full.ids
    assert gauss.ids == full.ids
    assert window.nfe == full.nfe == gauss.nfe
    assert window.forwards_per_block == full.forwards_per_block == gauss.forwards_per_block


@pytest.mark.parametrize("model", ["llada-tiny", "dream-tiny"])
def test_window_keeps_first_w(model: str, tiny_models: dict, prompt: list[int]) -> None:
    out = run(tiny_models[model], prompt, suffix="window", window=20, threshold=0.9)
    L = len(prompt) + GEN
    assert out.kept_per_block == [list(range(be, min(be + 20, L))) for be in range(len(prompt) + BLOCK, L + 1, BLOCK)]


@pytest.mark.parametrize("model", ["llada-tiny", "dream-tiny"])
def test_same_seed_same_tokens(model: str, tiny_models: dict, prompt: list[int]) -> None:
    lm = tiny_models[model]
    rng_state = torch.get_rng_state()
    sampled = [run(lm, prompt, temperature=1.0, top_k=50, seed=7) for _ in range(2)]
    dropped = [run(lm, prompt, suffix="gaussian", window=32, sigma=4.0, scale=2.0, threshold=0.9, seed=7)
               for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), rng_state), "decode must not consume the global RNG"
    assert sampled[0].ids == sampled[1].ids
    assert dropped[0].ids == dropped[1].ids
    assert dropped[0].kept_per_block == dropped[1].kept_per_block
    # and the seed matters: another seed samples other tokens
    other = run(lm, prompt, temperature=1.0, top_k=50, seed=8)
    assert other.ids != sampled[0].ids


@pytest.mark.parametrize("model", ["llada-tiny", "dream-tiny"])
def test_different_seeds_different_kept_sets(model: str, tiny_models: dict, prompt: list[int]) -> None:
    lm = tiny_models[model]
    kept = {}
    for seed in (1, 2, 3):
        out = run(lm, prompt, suffix="gaussian", window=32, sigma=4.0, scale=2.0, threshold=0.9, seed=seed)
        kept[seed] = out.kept_per_block
        L = len(prompt) + GEN
        block_ends = list(range(len(prompt) + BLOCK, L + 1, BLOCK))
        assert len(out.kept_per_block) == len(block_ends)
        for be, ks in zip(block_ends, out.kept_per_block, strict=True):
            assert ks == sorted(set(ks)) and all(be <= p < min(be + 32, L) for p in ks)
    assert kept[1] != kept[2] and kept[1] != kept[3] and kept[2] != kept[3]


@pytest.mark.parametrize("suffix", ["full", "gaussian"])
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize(("model", "compat"), MODES, ids=MODE_IDS)
def test_early_termination(model: str, compat: str, cache: str, suffix: str, tiny_models: dict,
                           prompt: list[int]) -> None:
    lm = tiny_models[model]
    kw = dict(cache=cache, compat=compat, threshold=0.9, suffix=suffix, window=32, scale=2.0)
    off = run(lm, prompt, eos=EOS_ID, early_termination=False, **kw)
    # an "EOS" the model really emits: the first token of the second block
    eos = off.generated[BLOCK]
    stop = min(i // BLOCK for i, t in enumerate(off.generated) if t == eos)
    assert stop <= 1 < GEN // BLOCK - 1
    on = run(lm, prompt, eos=eos, early_termination=True, **kw)
    end = (stop + 1) * BLOCK
    assert on.generated[:end] == off.generated[:end]
    assert on.generated[end:] == [eos] * (GEN - end)
    assert on.stopped_early
    assert on.blocks_decoded == stop + 1
    assert on.forwards_per_block == off.forwards_per_block[: stop + 1]
    assert on.nfe == sum(on.forwards_per_block) < off.nfe
    assert on.kept_per_block == off.kept_per_block[: stop + 1]
    assert on.response_length == on.generated.index(eos)
    assert not off.stopped_early and off.blocks_decoded == GEN // BLOCK


# the dpad-dream compat mode follows the Dream timestep schedule only
NFE_MODES = [(m, c, s) for m, c in MODES for s in ("llada", "dream") if not (c == "dpad-dream" and s == "llada")]


@pytest.mark.parametrize("steps", [GEN, GEN // BLOCK * 3])
@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize(("model", "compat", "schedule"), NFE_MODES, ids=[f"{m}-{c}-{s}" for m, c, s in NFE_MODES])
def test_nfe_fixed_schedule(model: str, compat: str, schedule: str, cache: str, steps: int,
                            tiny_models: dict, prompt: list[int]) -> None:
    """Refresh (step 0) + cached steps == steps per block, so NFE == steps (e.g. prefix cache with
    one token per step: NFE == gen_length). For dpad-dream the refresh replaces the reference's
    unused timestep 0, so it also takes exactly spb forwards."""
    out = run(tiny_models[model], prompt, cache=cache, compat=compat, steps=steps, schedule=schedule)
    nb = GEN // BLOCK
    spb = steps // nb
    assert MASK_ID not in out.ids
    if compat == "dpad-dream" and cache == "none":
        # the reference's block loop starts at timestep 1 and has no refresh: spb - 1 forwards
        assert out.forwards_per_block == [spb - 1] * nb
        assert out.nfe == steps - nb
    else:
        assert out.forwards_per_block == [spb] * nb
        assert out.nfe == steps


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize(("model", "compat"), MODES, ids=MODE_IDS)
def test_nfe_threshold(model: str, compat: str, cache: str, tiny_models: dict, prompt: list[int]) -> None:
    out = run(tiny_models[model], prompt, cache=cache, compat=compat, threshold=0.9)
    assert MASK_ID not in out.ids
    assert out.nfe == sum(out.forwards_per_block)
    assert len(out.forwards_per_block) == out.blocks_decoded == GEN // BLOCK
    assert all(1 <= f <= BLOCK + 1 for f in out.forwards_per_block)
    if compat == "fast-dllm" and cache != "none":
        # Fast-dLLM always runs at least one cached step after the refresh
        assert all(f >= 2 for f in out.forwards_per_block)
    # every forward commits at least one token, except Fast-dLLM's extra cached step
    assert out.nfe <= GEN + (GEN // BLOCK if compat == "fast-dllm" else 0)
    assert out.nfe < GEN  # on this model a 0.9 threshold does commit several tokens at once
