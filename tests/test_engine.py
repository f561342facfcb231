"""The step-wise engine on the golden tiny models (float64, CPU): one batch mixes settings (rule and
its knob, DPad or none, cache mode, gen and block lengths, temperature, seed, CFG), prompt lengths
and blocks, and every row decodes exactly what it decodes alone; a request that joins a running
batch, or leaves it, changes nothing for the others; a step runs at most one forward per kind and
one host sync.
"""

from __future__ import annotations

import pytest
import torch

from dpad.config import DecodeConfig
from dpad.engine import BlockEvent, Engine, Finished, decode, decode_batch

MASK, EOS = 250, 251
LENGTHS = [5, 12, 20, 8, 31, 17, 3, 26, 0]
DPAD = dict(suffix="gaussian", scale=2.0, window=32, sigma=4.0)

MIXED = [  # one batch, every row its own config
    dict(gen_length=64, block_length=16),
    dict(gen_length=32, block_length=16, threshold=0.9, cache="prefix", **DPAD),
    dict(gen_length=96, block_length=32, factor=1.0, cache="dual", early_termination=True, **DPAD),
    dict(gen_length=48, block_length=8, entropy_bound=0.5, cache="prefix"),
    dict(gen_length=64, block_length=16, threshold=0.7, cache="dual", seed=7, suffix="window", window=20),
    dict(gen_length=64, block_length=16, steps=16, cache="prefix", confidence="topk_margin"),
    dict(gen_length=32, block_length=32, temperature=0.8, threshold=0.9, seed=3, **DPAD),
    dict(gen_length=64, block_length=16, threshold=0.9, dependency_distance=1, confidence="entropy"),
    dict(gen_length=32, block_length=16, cfg_scale=1.0, steps=16),
]
DREAM_MIXED = [
    dict(gen_length=64, block_length=16),
    dict(gen_length=32, block_length=16, threshold=0.9, cache="prefix", **DPAD),
    dict(gen_length=64, block_length=32, confidence="entropy", schedule="dream", steps=32, cache="dual"),
    dict(gen_length=48, block_length=16, confidence="origin", schedule="dream", temperature=0.7, top_p=0.9, steps=24),
    dict(gen_length=64, block_length=16, threshold=0.9, cache="prefix", compat="dpad-dream",
         confidence="maskgit_plus", schedule="dream", early_termination=True, **DPAD),
    dict(gen_length=32, block_length=16, confidence="entropy", schedule="dream", temperature=0.5, top_k=40,
         alg_temp=0.3, steps=16),
    dict(gen_length=64, block_length=16, factor=0.5, cache="dual", compat="fast-dllm"),
    dict(gen_length=32, block_length=16, confidence="topk_margin", schedule="dream", steps=32, **DPAD),
    dict(gen_length=32, block_length=8, threshold=0.8, early_termination=True),
]


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 250, (n,), generator=g).tolist() for n in LENGTHS]


def same(a, b) -> None:  # noqa: ANN001
    assert a.generated == b.generated
    assert (a.nfe, a.forwards_per_block, a.kept_per_block) == (b.nfe, b.forwards_per_block, b.kept_per_block)
    assert (a.response_length, a.stopped_early, a.cancelled) == (b.response_length, b.stopped_early, b.cancelled)


@pytest.mark.parametrize(("model", "table"), [("llada-tiny", MIXED), ("dream-tiny", DREAM_MIXED)])
def test_mixed_configs_in_one_batch_equal_singles(tiny_models: dict, prompts: list, model: str, table: list) -> None:
    m = tiny_models[model].model
    cfgs = [DecodeConfig(**kw) for kw in table]
    ps = prompts[: len(cfgs)]
    singles = [decode(m, p, c, mask_id=MASK, eos_id=EOS) for p, c in zip(ps, cfgs, strict=True)]
    batch = decode_batch(m, ps, cfgs, mask_id=MASK, eos_id=EOS)
    for s, b in zip(singles, batch, strict=True):
        same(s, b)
    assert batch[0].batch_forwards < sum(s.nfe for s in singles)  # rows really shared forwards


def test_a_request_joining_mid_run_decodes_as_alone(tiny_models: dict, prompts: list) -> None:
    """Rows join an engine that is already running (other rows mid-block) and leave when done."""
    m = tiny_models["llada-tiny"].model
    cfgs = [DecodeConfig(**kw) for kw in MIXED[:6]]
    ps = prompts[: len(cfgs)]
    alone = [decode(m, p, c, mask_id=MASK, eos_id=EOS) for p, c in zip(ps, cfgs, strict=True)]
    eng = Engine(m, mask_id=MASK, eos_id=EOS)
    outs: dict = {}
    order: list = []
    for i, (p, c) in enumerate(zip(ps, cfgs, strict=True)):
        eng.add(p, c, tag=i)
        for _ in range(3):  # the others take 3 steps before the next one joins
            for ev in eng.step():
                if isinstance(ev, Finished):
                    outs[ev.row] = ev.output
                    order.append(ev.row)
    for ev in eng.run():
        if isinstance(ev, Finished):
            outs[ev.row] = ev.output
            order.append(ev.row)
    for i in range(len(cfgs)):
        same(alone[i], outs[i])
    assert order != sorted(order)  # a later, shorter request finished before an earlier, longer one


def test_abort_and_block_events(tiny_models: dict, prompts: list) -> None:
    m = tiny_models["llada-tiny"].model
    cfg = DecodeConfig(gen_length=64, block_length=16, threshold=0.9, cache="prefix")
    eng = Engine(m, mask_id=MASK, eos_id=EOS)
    a = eng.add(prompts[0], cfg, tag="a", on_block=lambda ev: None)
    b = eng.add(prompts[1], cfg, tag="b", on_block=lambda ev: None)
    seen: list[BlockEvent] = []
    while not seen:
        seen += [e for e in eng.step() if isinstance(e, BlockEvent)]
    eng.abort(a)
    evs = eng.run()
    fin = {e.row: e.output for e in evs if isinstance(e, Finished)}
    assert fin["a"].cancelled and not fin["b"].cancelled
    assert not any(isinstance(e, BlockEvent) and e.row == "a" for e in evs)
    same(decode(m, prompts[1], cfg, mask_id=MASK, eos_id=EOS), fin["b"])
    assert not eng.running and b.done


def test_one_sync_per_step(tiny_models: dict, prompts: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step of batchable rows reads the device once (``.tolist()`` of the block ids), whatever the
    number of rows, and runs at most two forwards (full, cached)."""
    m = tiny_models["llada-tiny"].model
    eng = Engine(m, mask_id=MASK, eos_id=EOS)
    for i, p in enumerate(prompts[:8]):
        eng.add(p, DecodeConfig(gen_length=64, block_length=16, threshold=0.9, cache="prefix", seed=i, **DPAD))
    calls = {"tolist": 0, "item": 0}
    real_tolist, real_item = torch.Tensor.tolist, torch.Tensor.item

    def tolist(t):  # noqa: ANN001, ANN202
        calls["tolist"] += t.device.type == "cpu" and t.dtype == torch.long and t.dim() == 2
        return real_tolist(t)

    def item(t):  # noqa: ANN001, ANN202
        calls["item"] += 1
        return real_item(t)

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(torch.Tensor, "item", item)
    steps = 0
    f0 = eng.forwards
    while eng.running:
        eng.step()
        steps += 1
    assert calls["tolist"] == steps and calls["item"] == 0
    assert eng.forwards - f0 <= 2 * steps


def test_recycled_pool_decodes_like_a_fresh_one(tiny_models: dict, prompts: list,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU a decode's K/V pool starts from the tables an earlier decode left (a larger one,
    full of its K/V): it decodes the same tokens as with a fresh pool, and really took them over."""
    from dpad.engine import runner

    m = tiny_models["llada-tiny"].model
    cfgs = [DecodeConfig(**c) for c in MIXED if c.get("cache", "none") != "none"]
    big = DecodeConfig(gen_length=128, block_length=32, threshold=0.9, cache="prefix")
    run = lambda ps, c: decode_batch(m, ps, c, mask_id=MASK, eos_id=EOS)  # noqa: E731
    monkeypatch.setattr(runner, "_recyclable", lambda model: False)
    fresh = run(prompts[: len(cfgs)], cfgs)
    monkeypatch.undo()
    run(prompts, big)  # leaves its pool behind
    spare = runner._SPARE[m][0][0]
    taken = []
    real_ensure = runner.KVPool.ensure

    def ensure(pool, rows: int, slots: int) -> None:  # noqa: ANN001
        real_ensure(pool, rows, slots)
        taken.append(pool.k[0] is spare)

    monkeypatch.setattr(runner.KVPool, "ensure", ensure)
    for a, b in zip(fresh, run(prompts[: len(cfgs)], cfgs), strict=True):
        same(a, b)
    assert taken and all(taken)
