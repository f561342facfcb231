"""The compiled path's known hazards, shown gone on the CPU: rotary tables exist before any forward;
a compiled decode never reads a forward's output after the next forward (CUDA graphs overwrite it);
a decode at batch 1/4/16 stays within a few graphs; grouped K/V heads attend exactly as repeated
ones; the engine's KV pool stays within the peak of what its rows need."""

from __future__ import annotations

import math

import pytest
import torch

import dpad
import dpad.models
from dpad.api import encode_prompt
from dpad.config import DecodeConfig
from dpad.engine import Engine, Finished, decode_batch, runner
from dpad.eval.methods import resolve_config
from dpad.models.compiled import compile_model
from dpad.models.layers import Attention, ModelArgs, Rotary
from dpad.synthetic import arith


@pytest.fixture(scope="module")
def setup() -> tuple:
    torch.set_num_threads(1)
    eager = dpad.load(dtype="float64")
    _, cfg = resolve_config("parallel+prefix+dpad", family="embedded", task="arith")
    prompts = [encode_prompt(eager, p.question) for p in arith.generate("test", 16, 0)]
    return eager, cfg, prompts


def test_rotary_tables_exist_before_any_forward() -> None:
    lm = dpad.load()
    rot = lm.model.rotary
    assert rot.cos_table is not None and rot.cos_table.shape == (lm.args.max_seq_len, lm.args.head_dim)
    assert rot.cos_table.dtype == torch.float32 and "rotary.cos_table" in dict(lm.model.named_buffers())
    fresh = Rotary(lm.args.head_dim, lm.args.rope_theta, True, 64)
    cos, sin = fresh.table()
    assert cos.data_ptr() == fresh.cos_table.data_ptr()  # no table is made by a forward


def test_compiled_decode_reads_no_stale_output_and_stays_within_few_graphs(setup: tuple) -> None:
    """Every compiled output is poisoned (NaN) when the next compiled call starts, as a CUDA graph
    replay would overwrite it: the decode must still equal eager's, token for token."""
    eager, cfg, prompts = setup
    comp = dpad.load(dtype="float64")
    compile_model(comp.model, backend="eager", bucket=16, verbose=False)
    fn = comp.model.compiled.fn
    last: list[torch.Tensor] = []

    def poisoning(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        for t in last:
            t.fill_(math.nan)
        last.clear()
        out = fn(*a, **kw)
        last.append(out)
        return out

    comp.model.compiled.fn = poisoning
    for b in (1, 4, 16):
        g0 = comp.model.compiled.graphs
        got = decode_batch(comp.model, prompts[:b], cfg, mask_id=comp.mask_token_id, eos_id=comp.eos_token_id)
        want = decode_batch(eager.model, prompts[:b], cfg, mask_id=eager.mask_token_id, eos_id=eager.eos_token_id)
        assert [o.generated for o in got] == [o.generated for o in want]
        assert [o.nfe for o in got] == [o.nfe for o in want]
        assert comp.model.compiled.graphs - g0 <= 12, f"batch {b}: {comp.model.compiled.graphs - g0} graphs"


def test_grouped_kv_heads_equal_repeated_heads() -> None:
    torch.manual_seed(0)
    args = ModelArgs(arch="t", vocab_size=16, dim=56, n_layers=1, n_heads=7, n_kv_heads=1, hidden_dim=32,
                     rope_theta=10000.0, norm_eps=1e-6, max_seq_len=64)
    att = Attention(args).double()
    rot = Rotary(args.head_dim, args.rope_theta, True, 64)
    x = torch.randn(2, 10, 56, dtype=torch.float64)
    pos = torch.arange(10).expand(2, 10)
    cos, sin = rot.cos_sin(pos)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    out = att(x, rot, cos, sin, 0, None, 0, mask)
    q, k, v = att._project(x, rot, cos, sin, None)
    k, v = k.repeat_interleave(7, dim=1), v.repeat_interleave(7, dim=1)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    ref = att.o_proj(ref.transpose(1, 2).reshape(2, 10, -1))
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)


def test_kv_pool_stays_within_what_its_rows_need(setup: tuple) -> None:
    """Requests of many shapes come and go on one engine: the pool never holds more rows than twice
    the most rows that ran at once, nor more slots than 1.5 x the longest view + 64."""
    eager, cfg, prompts = setup
    eng = Engine(eager.model, mask_id=eager.mask_token_id, eos_id=eager.eos_token_id)
    peak_rows = peak_view = 0
    for i, p in enumerate(prompts):
        eng.add(p, cfg.replace(gen_length=64 * (1 + i % 4), cache=("prefix", "dual")[i % 2]))
        for _ in range(2):
            eng.step()
            peak_rows = max(peak_rows, len(eng.running))
            peak_view = max([peak_view] + [r.view_size for r in eng.running])
    while eng.running:
        assert not [e for e in eng.step() if isinstance(e, Finished) and e.output.nfe == 0]
    pool = eng.runner.pool
    assert pool.rows <= 2 * peak_rows and pool.slots <= 1.5 * (peak_view + 1) + 64
    # the tables held: what the rows use, or tables recycled from an earlier decode (CPU, capped)
    held = sum(t.numel() * t.element_size() for t in pool.k + pool.v)
    used = 2 * len(pool.k) * pool.rows * pool.slots * pool.k[0].shape[1] * pool.k[0].shape[3] * pool.k[0].element_size()
    assert held <= max(used, runner.RECYCLE_MAX_BYTES)


def test_compiled_mixed_batch_equals_eager() -> None:
    """A batch mixing configs, prompt and gen lengths through the bucketed compiled path (rows padded
    to a power of two, lengths to buckets): the same tokens and NFE as eager, row by row."""
    from pathlib import Path

    from test_engine import MASK, MIXED

    golden = Path(__file__).resolve().parent / "fixtures" / "golden" / "llada-tiny"
    eager = dpad.models.load(golden, dtype="float64")
    comp = dpad.models.load(golden, dtype="float64")
    compile_model(comp.model, backend="eager", bucket=16, verbose=False)
    g = torch.Generator().manual_seed(0)
    cfgs = [DecodeConfig(**kw) for kw in MIXED]
    prompts = [torch.randint(0, 250, (n,), generator=g).tolist() for n in (5, 12, 20, 8, 31, 17, 3, 26, 0)]
    got = decode_batch(comp.model, prompts, cfgs, mask_id=MASK, eos_id=251)
    want = decode_batch(eager.model, prompts, cfgs, mask_id=MASK, eos_id=251)
    assert [(o.generated, o.nfe) for o in got] == [(o.generated, o.nfe) for o in want]
