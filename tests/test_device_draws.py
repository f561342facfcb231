"""``rng='device'``: sampled rows draw counter-based noise on the model's device and are decided in
the batched step. The noise is a pure function of (seed, counter, position, token); a row decodes
the same tokens alone and in any batch; the samples follow each family's distribution; greedy rows
and ``rng='exact'`` are untouched (the golden tests)."""

from __future__ import annotations

import math

import pytest
import torch

from dpad.config import DecodeConfig
from dpad.engine import decode, decode_batch
from dpad.engine.unmask import RowDraws, batchable, counter_uniform, propose_sampled
from dpad.errors import ConfigError

MASK, EOS = 250, 251
DPAD = dict(suffix="gaussian", scale=2.0, window=32, sigma=4.0)


def test_counter_noise_is_a_function_of_its_keys() -> None:
    u = counter_uniform(torch.tensor([1, 2, 1, 1]), torch.tensor([0, 0, 1, 0]), 8, 500)
    assert u.dtype == torch.float64 and u.shape == (4, 8, 500)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert torch.equal(u[0], u[3])  # same keys, same draws
    assert not (u[0] == u[1]).any() and not (u[0] == u[2]).any()  # another seed / counter: other draws
    assert torch.equal(counter_uniform(torch.tensor([1]), torch.tensor([0]), 3, 500)[0], u[0, :3])  # not on L
    # uniform: 10 bins of 16000 draws within 5 standard deviations
    counts = torch.histc(u.flatten(), 10, 0, 1)
    assert (counts - 1600).abs().max() < 5 * math.sqrt(1600)


@pytest.mark.parametrize("sampler", ["llada", "dream"])
def test_samples_follow_the_distribution(sampler: str) -> None:
    """Many draws of one position (other counters) against softmax(l / T) of the filtered logits."""
    V, T, N = 6, 0.7, 20000
    lg = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0], dtype=torch.float64)
    logits = lg.expand(N, 1, V).clone()
    d = RowDraws(torch.full((N,), T, dtype=torch.float64), torch.full((N,), 2.0, dtype=torch.float64),
                 torch.full((N,), 4), torch.full((N,), 5), torch.arange(N), top_k_width=4)
    x0, conf, p = propose_sampled(logits, ["low_confidence"] * N, sampler, d)
    freq = torch.bincount(x0.flatten(), minlength=V).double() / N
    kept = lg.masked_fill(torch.arange(V) >= 4, float("-inf"))  # top-k 4
    want = torch.softmax(kept / T, -1)
    assert (freq - want).abs().max() < 0.015, (freq, want)
    assert freq[4:].sum() == 0
    conf_dist = torch.softmax(kept / T if sampler == "dream" else kept, -1)
    assert torch.allclose(conf[:, 0], conf_dist[x0[:, 0]])


def test_top_p_rows_filter_like_one_row() -> None:
    from dpad.engine.unmask import _top_p_rows, top_p_filter

    g = torch.Generator().manual_seed(0)
    lg = torch.randn(3, 4, 50, generator=g, dtype=torch.float64)
    p = torch.tensor([0.5, 2.0, 0.9], dtype=torch.float64)
    out = _top_p_rows(lg, p, True)
    for i, pi in enumerate(p.tolist()):
        assert torch.equal(out[i], top_p_filter(lg[i], pi if pi < 1 else None))


SAMPLED = [
    dict(gen_length=32, block_length=16, temperature=0.8, threshold=0.9, cache="prefix", seed=3, **DPAD),
    dict(gen_length=64, block_length=16, temperature=1.0, steps=32),
    dict(gen_length=32, block_length=32, temperature=0.5, top_p=0.9, factor=1.0, cache="dual", seed=9),
    dict(gen_length=48, block_length=16, temperature=0.7, top_k=20, entropy_bound=0.5, confidence="entropy"),
    dict(gen_length=32, block_length=16, threshold=0.9, cache="prefix"),  # greedy, in the same forwards
    dict(gen_length=32, block_length=16, temperature=0.6, threshold=0.8, dependency_distance=2),  # guarded
    dict(gen_length=32, block_length=16, temperature=0.5, confidence="entropy", schedule="dream", alg_temp=0.3,
         steps=16),
    dict(gen_length=32, block_length=16, confidence="topk_margin", alg_temp=0.5, steps=8),  # greedy tokens
]


@pytest.mark.parametrize("model", ["llada-tiny", "dream-tiny"])
def test_device_draws_batch_equals_singles(tiny_models: dict, model: str) -> None:
    m = tiny_models[model].model
    g = torch.Generator().manual_seed(1)
    ps = [torch.randint(0, 250, (n,), generator=g).tolist() for n in (7, 19, 3, 12, 25, 9, 14, 4)]
    cfgs = [DecodeConfig(rng="device", **kw) for kw in SAMPLED]
    assert all(batchable(c) for c in cfgs)
    singles = [decode(m, p, c, mask_id=MASK, eos_id=EOS) for p, c in zip(ps, cfgs, strict=True)]
    batch = decode_batch(m, ps, cfgs, mask_id=MASK, eos_id=EOS)
    for s, b in zip(singles, batch, strict=True):
        assert s.generated == b.generated and s.nfe == b.nfe
    again = decode(m, ps[1], cfgs[1], mask_id=MASK, eos_id=EOS)
    assert again.generated == singles[1].generated  # seeded
    other = decode(m, ps[1], cfgs[1].replace(seed=cfgs[1].seed + 1), mask_id=MASK, eos_id=EOS)
    assert other.generated != singles[1].generated
    # the greedy row decodes what it decodes with exact draws
    assert singles[4].generated == decode(m, ps[4], cfgs[4].replace(rng="exact"), mask_id=MASK, eos_id=EOS).generated


def test_device_draws_refuse_per_row_options() -> None:
    for kw in (dict(confidence="random"), dict(logits_eos_inf=True), dict(confidence_eos_eot_inf=True)):
        with pytest.raises(ConfigError) as e:
            DecodeConfig(temperature=0.5, rng="device", **kw)
        assert e.value.field == "rng" and "rng='exact'" in str(e.value)
    assert not batchable(DecodeConfig(temperature=0.5))  # exact draws: the row's own Unmasker


def test_alg_temp_positions_follow_the_distribution() -> None:
    """One position of four drawn with alg_temp: frequencies against softmax(conf / alg_temp) over
    the masked positions (an unmasked one never drawn)."""
    from dpad.engine.unmask import RowRule, select_batch

    N, tau = 20000, 0.5
    conf = torch.tensor([0.9, 0.8, 0.6, 0.95, 0.7], dtype=torch.float64)
    masked = torch.tensor([True, True, True, False, True]).expand(N, 5)
    logits = torch.stack([conf, 1 - conf], -1).log().expand(N, 5, 2)
    d = RowDraws(torch.zeros(N, dtype=torch.float64), torch.full((N,), 2.0, dtype=torch.float64),
                 torch.full((N,), 2), torch.full((N,), 11), torch.arange(N), sampling=False)
    chosen, _ = select_batch(logits, masked, ["low_confidence"] * N, [RowRule("count", count=1, alg_temp=tau)] * N,
                             "dream", d)
    assert (chosen.sum(1) == 1).all() and not chosen[:, 3].any()
    freq = chosen.sum(0).double() / N
    want = torch.softmax(conf.masked_fill(~masked[0], float("-inf")) / tau, -1)
    assert (freq - want).abs().max() < 0.015, (freq, want)
