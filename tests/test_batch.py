"""Batch invariance on the golden tiny models (float64, CPU): a batch of 8 prompts of mixed lengths
decodes exactly the tokens (and per-row NFE, kept sets) of the 8 single runs, for every suffix,
cache and unmasking policy and both model families; rows leave the batch when they are done;
the per-block callback sees each committed block and can cancel a row.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpad.config import DecodeConfig
from dpad.engine import BlockEvent, Engine, Finished, decode, decode_batch
from dpad.engine.suffix import Explicit

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
MASK, EOS = 250, 251
LENGTHS = [5, 12, 20, 8, 31, 17, 3, 26]
BASE = dict(gen_length=64, block_length=16)
DPAD = dict(suffix="gaussian", scale=2.0, window=32, sigma=4.0)

LLADA_CASES = {
    "vanilla": {},
    "threshold": dict(threshold=0.9),
    "prefix": dict(cache="prefix"),
    "dual": dict(cache="dual"),
    "dpad": dict(DPAD),
    "parallel+dual+dpad+et": dict(threshold=0.9, cache="dual", early_termination=True, **DPAD),
    "fast-dllm-prefix": dict(threshold=0.9, cache="prefix", compat="fast-dllm"),
}
DREAM_CASES = {
    "vanilla": {},
    "threshold": dict(threshold=0.9),
    "dpad+et": dict(early_termination=True, **DPAD),
    "origin-sampled": dict(confidence="origin", schedule="dream", temperature=0.7, top_p=0.9, steps=32),
    "entropy-alg_temp": dict(confidence="entropy", schedule="dream", temperature=0.5, top_k=40, alg_temp=0.3,
                             steps=32, cache="dual"),
    "dpad-dream-prefix": dict(threshold=0.9, cache="prefix", compat="dpad-dream", confidence="maskgit_plus",
                              schedule="dream", early_termination=True, **DPAD),
}


@pytest.fixture(scope="module")
def models() -> dict:
    from dpad.models import load

    torch.set_num_threads(1)
    return {name: load(GOLDEN / name, dtype="float64") for name in ("llada-tiny", "dream-tiny")}


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 250, (n,), generator=g).tolist() for n in LENGTHS]


def assert_same(singles: list, batch: list) -> None:
    assert len(singles) == len(batch)
    for i, (s, b) in enumerate(zip(singles, batch, strict=True)):
        assert b.generated == s.generated, f"row {i}: tokens differ"
        assert b.nfe == s.nfe, f"row {i}: nfe {b.nfe} != single {s.nfe}"
        assert b.forwards_per_block == s.forwards_per_block, f"row {i}"
        assert b.kept_per_block == s.kept_per_block, f"row {i}: kept sets differ"
        assert b.response_length == s.response_length and b.stopped_early == s.stopped_early
        assert b.batch_size == len(batch) and s.batch_size == 1 and s.batch_forwards == s.nfe
    # batch forwards: at least the busiest row's, at most every row's forwards summed
    assert max(s.nfe for s in singles) <= batch[0].batch_forwards <= sum(s.nfe for s in singles)


def run_case(lm, prompts: list[list[int]], kw: dict) -> None:  # noqa: ANN001
    cfg = DecodeConfig(**BASE, **kw)
    singles = [decode(lm.model, p, cfg, mask_id=MASK, eos_id=EOS) for p in prompts]
    batch = decode_batch(lm.model, prompts, cfg, mask_id=MASK, eos_id=EOS)
    assert_same(singles, batch)


@pytest.mark.parametrize("name", list(LLADA_CASES))
def test_llada_batch_equals_singles(models: dict, prompts: list, name: str) -> None:
    run_case(models["llada-tiny"], prompts, LLADA_CASES[name])


@pytest.mark.parametrize("name", list(DREAM_CASES))
def test_dream_batch_equals_singles(models: dict, prompts: list, name: str) -> None:
    run_case(models["dream-tiny"], prompts, DREAM_CASES[name])


def test_per_row_seeds_and_sampling(models: dict, prompts: list) -> None:
    """Sampling + DPad with a different seed per row: row i == the single run with seed i."""
    lm = models["dream-tiny"]
    cfg = DecodeConfig(**BASE, temperature=1.0, threshold=0.9, cache="prefix", **DPAD)
    seeds = [11 * i + 1 for i in range(4)]
    ps = prompts[:4]
    singles = [decode(lm.model, p, cfg.replace(seed=s), mask_id=MASK, eos_id=EOS) for p, s in zip(ps, seeds, strict=True)]
    batch = decode_batch(lm.model, ps, cfg, mask_id=MASK, eos_id=EOS, seeds=seeds)
    assert_same(singles, batch)
    assert len({tuple(map(len, b.kept_per_block)) for b in batch}) > 1  # the rows' views really differ


def test_explicit_suffix_per_row(models: dict, prompts: list) -> None:
    lm = models["llada-tiny"]
    cfg = DecodeConfig(**BASE, suffix="window", window=16)
    ps = prompts[:3]
    policies = [Explicit({len(p) + 16 * (b + 1): list(range(len(p) + 16 * (b + 1), len(p) + 64, 1 + i + b))
                          for b in range(4)}) for i, p in enumerate(ps)]
    singles = [decode(lm.model, p, cfg, mask_id=MASK, eos_id=EOS, suffix_policy=sp)
               for p, sp in zip(ps, policies, strict=True)]
    batch = decode_batch(lm.model, ps, cfg, mask_id=MASK, eos_id=EOS, suffix_policies=policies)
    assert_same(singles, batch)


def test_finished_rows_leave_the_batch(models: dict, prompts: list) -> None:
    """With early termination the rows stop after different blocks; the batch runs only as many
    steps as its longest row needs (a step: one forward, or two when rows of very different
    lengths go apart), and each row keeps its single-run NFE."""
    lm = models["dream-tiny"]
    cfg = DecodeConfig(**BASE, early_termination=True, **DPAD)
    eng = Engine(lm.model, mask_id=MASK, eos_id=EOS)
    for i, p in enumerate(prompts):
        eng.add(p, cfg, tag=i)
    steps, outs = 0, {}
    while eng.running:
        steps += 1
        outs.update({ev.row: ev.output for ev in eng.step() if isinstance(ev, Finished)})
    batch = [outs[i] for i in range(len(prompts))]
    closed = decode_batch(lm.model, prompts, cfg, mask_id=MASK, eos_id=EOS)
    assert [b.generated for b in batch] == [o.generated for o in closed]
    blocks = [b.blocks_decoded for b in batch]
    assert min(blocks) < max(blocks)  # rows really finish at different blocks
    assert steps == max(b.nfe for b in batch)
    assert steps <= eng.forwards <= 2 * steps
    for b in batch:
        assert b.nfe == sum(b.forwards_per_block)
        if b.stopped_early:
            assert set(b.generated[16 * b.blocks_decoded:]) == {EOS}


def test_block_callback_and_cancel(models: dict, prompts: list) -> None:
    lm = models["llada-tiny"]
    cfg = DecodeConfig(**BASE, threshold=0.9, cache="prefix")
    ps = prompts[:4]
    events: list[BlockEvent] = []

    def on_block(ev: BlockEvent) -> bool:
        events.append(ev)
        return ev.row == 1 and ev.block == 1  # cancel row 1 after its second block

    batch = decode_batch(lm.model, ps, cfg, mask_id=MASK, eos_id=EOS, on_block=on_block)
    full = decode_batch(lm.model, ps, cfg, mask_id=MASK, eos_id=EOS)
    for r in (0, 2, 3):
        evs = [e for e in events if e.row == r]
        assert [e.block for e in evs] == [0, 1, 2, 3] and evs[-1].last
        assert evs[-1].generated == batch[r].generated == full[r].generated
        assert [t for e in evs for t in e.tokens] == full[r].generated
        assert evs[-1].nfe == batch[r].nfe == full[r].nfe
    assert [e.block for e in events if e.row == 1] == [0, 1]
    assert batch[1].cancelled and batch[1].blocks_decoded == 2
    assert batch[1].generated[:32] == full[1].generated[:32]
    assert batch[1].nfe == sum(full[1].forwards_per_block[:2])
    assert MASK in batch[1].generated[32:] and batch[1].response_length <= 32


def test_generate_api_batches(prompts: list) -> None:
    """dpad.generate on a list: batch_size chunks give the single results, in order."""
    import dpad

    lm = dpad.load(device="cpu", dtype="float64")
    from dpad.synthetic import arith

    qs = [p.question for p in arith.generate("test", 5, 3)]
    cfg = DecodeConfig(gen_length=64, block_length=32, threshold=0.9, cache="prefix", suffix="gaussian",
                       window=64, early_termination=True)
    singles = [dpad.generate(lm, q, cfg) for q in qs]
    batched = dpad.generate(lm, qs, cfg, batch_size=3)
    assert [b.response_ids for b in batched] == [s.response_ids for s in singles]
    assert [b.stats["nfe"] for b in batched] == [s.stats["nfe"] for s in singles]
    assert sorted(b.stats["batch_size"] for b in batched) == [2, 2, 3, 3, 3]
    with pytest.raises(dpad.ConfigError, match="batch_size"):
        dpad.generate(lm, qs, cfg, batch_size=0)


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_cancel_check_stops_a_row_mid_block(models: dict, prompts: list, cache: str) -> None:
    """``is_cancelled`` is read before every forward: a row cancelled after 5 of the 16 steps of its
    first block takes no further forward, and the other rows decode what they decode alone."""
    m = models["llada-tiny"].model
    cfg = DecodeConfig(**BASE, cache=cache)  # vanilla: one token per step, 16 steps per block
    calls = {"n": 0}
    inner = m.forward

    def counting(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        return inner(*a, **kw)

    m.forward = counting
    try:
        outs = decode_batch(m, prompts[:3], cfg, mask_id=MASK, eos_id=EOS,
                            is_cancelled=lambda r: r == 1 and calls["n"] >= 5)
    finally:
        del m.forward
    assert outs[1].cancelled and outs[1].nfe == 5 and outs[1].blocks_decoded == 1
    assert outs[1].response_length == 0  # nothing of the unfinished block counts as committed
    for i in (0, 2):
        alone = decode(m, prompts[i], cfg, mask_id=MASK, eos_id=EOS)
        assert outs[i].generated == alone.generated and outs[i].nfe == alone.nfe and not outs[i].cancelled
    # cancelled before anything ran: no forward at all
    out = decode(m, prompts[0], cfg, mask_id=MASK, eos_id=EOS)
    none = decode_batch(m, [prompts[0]], cfg, mask_id=MASK, eos_id=EOS, is_cancelled=lambda r: True)[0]
    assert none.nfe == 0 and none.cancelled and out.nfe > 0
