"""dpad.analysis: the recorded attention is the model's real attention; removal, keep maps, CLI.

Self-contained (loads the golden tiny checkpoints and the embedded model itself); single-threaded,
offline, matplotlib Agg.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from dpad.analysis.attention import (  # noqa: E402
    AttentionRecorder,
    block_position_attention,
    by_distance,
    recorded_decode,
)
from dpad.analysis.common import Prompt  # noqa: E402
from dpad.analysis.keep import (  # noqa: E402
    empirical_rate,
    expected_kept,
    keep_map,
    keep_prob,
    simulate_rate,
)
from dpad.analysis.migration import block_shift, choose_removals, removal_policy, spike_scores  # noqa: E402
from dpad.config import DecodeConfig  # noqa: E402
from dpad.engine.suffix import Explicit, GaussianDecay  # noqa: E402
from dpad.models import load  # noqa: E402

torch.set_num_threads(1)

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
PROMPT = [115, 142, 221, 36, 33, 97, 37, 29, 238, 11, 158, 131]


@pytest.fixture(scope="module")
def llada():  # noqa: ANN201
    return load(GOLDEN / "llada-tiny", dtype="float64")


@pytest.fixture(scope="module")
def dream():  # noqa: ANN201
    return load(GOLDEN / "dream-tiny", dtype="float64")


@pytest.fixture(scope="module")
def llada_moe():  # noqa: ANN201
    return load(GOLDEN / "llada-moe-tiny", dtype="float64")


def _decode_rows(lm, cfg: DecodeConfig, policy=None):  # noqa: ANN001, ANN202
    return recorded_decode(lm, Prompt(PROMPT, "ids"), cfg, policy=policy, keep_rows=True, head_blocks=-1)


# ---------------------------------------------------------------------------- real attention
@pytest.mark.parametrize("name", ["llada", "dream"])
def test_rows_are_probability_distributions(name: str, request: pytest.FixtureRequest) -> None:
    lm = request.getfixturevalue(name)
    cfg = DecodeConfig(gen_length=24, block_length=8)
    out, recs = _decode_rows(lm, cfg)
    assert len(recs) == out.nfe == 24  # one record per forward
    H = lm.args.n_heads
    for r in recs:
        assert r.block_end - r.block_start == 8
        assert len(r.rows) == lm.args.n_layers
        for layer, rows in enumerate(r.rows):
            assert rows.shape == (H, 8, len(r.key_positions))
            np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-12)
            np.testing.assert_allclose(r.attn[layer], rows.mean(axis=(0, 1)), atol=1e-14)
            np.testing.assert_allclose(r.heads[layer], rows.mean(axis=1), atol=1e-6)
        np.testing.assert_allclose(r.attn.sum(-1), 1.0, atol=1e-12)
        m = r.mass()
        np.testing.assert_allclose(m["prefix"] + m["block"] + m["suffix"], 1.0, atol=1e-12)


@pytest.mark.parametrize("name", ["llada", "dream", "llada_moe"])
def test_recorded_rows_reproduce_the_attention_output(name: str, request: pytest.FixtureRequest) -> None:
    """softmax rows x V through o_proj == the Attention module's own output (GQA + bias for Dream,
    per-head q/k norm for LLaDA-MoE)."""
    lm = request.getfixturevalue(name)
    model = lm.model
    P, B = len(PROMPT), 8
    ids = torch.tensor(PROMPT + [lm.mask_token_id] * 16)[None]
    s = model.args.logits_shift  # Dream reads block position p from row p - 1 (as the Runner asks)
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [blk.attn.register_forward_hook(
        lambda m, a, o, i=i: seen.__setitem__(i, (a[0].detach(), o.detach())))
        for i, blk in enumerate(model.layers)]
    try:
        with AttentionRecorder(model, block_length=B, keep_rows=True) as rec, torch.no_grad():
            model(ids, logits_range=(P - s, P + B - s))
    finally:
        for h in hooks:
            h.remove()
    (r,) = rec.records
    assert (r.block_start, r.block_end) == (P, P + B)
    for i, blk in enumerate(model.layers):
        x, out = seen[i]
        att = blk.attn
        v = att.v_proj(x).view(1, x.shape[1], att.n_kv_heads, att.head_dim).transpose(1, 2)
        v = v.repeat_interleave(att.n_heads // att.n_kv_heads, dim=1)
        probs = torch.from_numpy(r.rows[i]).to(v.dtype)[None]  # [1, H, Q, S]
        mine = att.o_proj((probs @ v).transpose(1, 2).reshape(1, B, -1))
        # the last layer computes only the rows whose logits are asked for: [P - s, P + B - s)
        r0 = P - s if i == len(model.layers) - 1 else 0
        lo, hi = max(P, r0), min(P + B, r0 + out.shape[1])
        assert hi - lo >= B - s
        torch.testing.assert_close(mine[:, lo - P:hi - P], out[:, lo - r0:hi - r0], atol=1e-10, rtol=1e-10)


def _rope_complex(t: np.ndarray, pos: np.ndarray, theta: float) -> np.ndarray:
    """Independent RoPE (complex rotation of the (i, i + hd/2) pairs), float64 numpy."""
    hd = t.shape[-1]
    half = hd // 2
    freq = 1.0 / theta ** (np.arange(half) * 2.0 / hd)
    z = (t[..., :half] + 1j * t[..., half:]) * np.exp(1j * pos[:, None] * freq)
    return np.concatenate([z.real, z.imag], axis=-1)


def test_equal_to_an_independent_computation(llada) -> None:  # noqa: ANN001
    """Layer 1 of the LLaDA tiny model, DPad-style view (gaps in the positions): numpy q k^T softmax
    with an independent RoPE equals the recorder."""
    model = llada.model
    P, B = len(PROMPT), 8
    kept = (0, 1, 3, 7, 12, 20, 23)  # suffix distances kept: a 24-token suffix with holes
    pos = list(range(P + B)) + [P + B + d for d in kept]
    ids = torch.tensor(PROMPT + [llada.mask_token_id] * (len(pos) - P))[None]
    layer = 1
    grabbed = {}
    h = model.layers[layer].attn.register_forward_hook(lambda m, a, o: [grabbed.setdefault("x", a[0].detach())] and None)
    try:
        with AttentionRecorder(model, block_length=B, keep_rows=True) as rec, torch.no_grad():
            model(ids, torch.tensor(pos)[None], logits_range=(P, P + B))
    finally:
        h.remove()
    (r,) = rec.records
    assert r.key_positions.tolist() == pos and r.block_end == P + B
    att = model.layers[layer].attn
    x = grabbed["x"][0].numpy()
    Wq, Wk = att.q_proj.weight.detach().numpy(), att.k_proj.weight.detach().numpy()
    H, hd = att.n_heads, att.head_dim
    q = (x @ Wq.T).reshape(len(pos), H, hd).transpose(1, 0, 2)
    k = (x @ Wk.T).reshape(len(pos), H, hd).transpose(1, 0, 2)
    p = np.array(pos, dtype=np.float64)
    q, k = _rope_complex(q, p, model.args.rope_theta), _rope_complex(k, p, model.args.rope_theta)
    s = q[:, P:P + B] @ k.transpose(0, 2, 1) / math.sqrt(hd)
    s = np.exp(s - s.max(-1, keepdims=True))
    expect = s / s.sum(-1, keepdims=True)
    # the model rotates q/k with float32 tables (reference numerics), so a float64 reference agrees to
    # float32 precision; the bit-level check is test_recorded_rows_reproduce_the_attention_output
    np.testing.assert_allclose(r.rows[layer], expect, atol=2e-6, rtol=0)
    assert np.abs(r.rows[layer] - expect).max() < 1e-3 * np.abs(expect).max()
    # the recorder saw the view with its holes: the kept suffix keys only, at their absolute positions
    assert r.suffix.tolist() == [False] * (P + B) + [True] * len(kept)
    assert (r.key_positions[r.suffix] - r.block_end).tolist() == list(kept)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_forwards_record_the_same_block_start(llada, cache: str) -> None:  # noqa: ANN001
    """The block-start forward of a cached decode sees the same view as the uncached first step."""
    cfg = DecodeConfig(gen_length=24, block_length=8, threshold=0.9)
    _, plain = _decode_rows(llada, cfg)
    _, cached = _decode_rows(llada, cfg.replace(cache=cache))
    # block 0 starts from the same canvas with and without a cache (later blocks may differ: the
    # cache approximates), so its block-start forward must record the same attention
    np.testing.assert_allclose(cached[0].attn, plain[0].attn, atol=1e-12)
    np.testing.assert_array_equal(cached[0].key_positions, plain[0].key_positions)
    assert len({r.block_end for r in cached}) == 3
    for r in cached:  # every cached step: rows over the whole view still sum to 1
        for rows in r.rows:
            np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-12)
        assert len(r.key_positions) == r.attn.shape[1]


def test_by_distance_profile(llada) -> None:  # noqa: ANN001
    cfg = DecodeConfig(gen_length=32, block_length=8)
    _, recs = _decode_rows(llada, cfg)
    prof = by_distance(recs)
    P = len(PROMPT)
    assert prof.max_distance == 24 and prof.n_layers == llada.args.n_layers
    assert prof.count[0] == 24 and prof.count[23] == 8  # blocks 0-2 reach d=0, only block 0 reaches d=23
    r0 = [r for r in recs if r.block_end == P + 8]
    np.testing.assert_allclose(prof.per_block[P + 8][:, 5], np.mean([r.attn[:, P + 8 + 5] for r in r0], axis=0))
    assert np.isnan(prof.per_block[P + 24][:, 8:]).all()


# ---------------------------------------------------------------------------- removal
def test_removing_positions_moves_the_mass(llada) -> None:  # noqa: ANN001
    cfg = DecodeConfig(gen_length=32, block_length=8)
    P = len(PROMPT)
    be0 = P + 8
    out_full, full = _decode_rows(llada, cfg)
    removed = choose_removals(full, min_distance=8, top=3, select="spike")
    assert removed[be0] and all(p >= be0 + 8 for p in removed[be0]) and len(removed[be0]) == 3
    assert choose_removals(full, 8, 3, remove_blocks=1).keys() == {be0}
    mean_sel = choose_removals(full, 8, 3, select="mean")[be0]
    kp, attn = block_position_attention(full, be0)
    far = kp >= be0 + 8
    assert set(mean_sel) == set(kp[far][np.argsort(-attn.mean(0)[far])[:3]].tolist())

    local = choose_removals(full, 8, 3, select="local")[be0]
    assert len(local) == 3 and min(local) >= be0 + 8

    policy = removal_policy(removed, P, cfg)
    assert isinstance(policy, Explicit)
    _, cut = _decode_rows(llada, cfg, policy=policy)
    for r in cut:  # the removed positions are physically absent: they get no mass
        assert not set(removed.get(r.block_end, [])) & set(r.key_positions.tolist())
        for rows in r.rows:
            np.testing.assert_allclose(rows.sum(-1), 1.0, atol=1e-12)
    # the first forward of block 0 sees the same tokens minus the removed ones: its distribution changes
    f0, c0 = full[0], cut[0]
    assert len(c0.key_positions) == len(f0.key_positions) - 3
    keep = np.isin(f0.key_positions, c0.key_positions)
    assert np.abs(c0.attn - f0.attn[:, keep]).max() > 1e-6
    assert (c0.attn.sum(-1) > f0.attn[:, keep].sum(-1) - 1e-12).all()  # renormalised over fewer keys
    prof = by_distance([r for r in cut if r.block_end == be0])
    grid = prof.per_block[be0]
    for p in removed[be0]:
        assert p - be0 >= grid.shape[1] or np.isnan(grid[:, p - be0]).all()

    sh = block_shift(full, cut, be0, 8, removed[be0], min_distance=8, radius=2)
    # each head's attention sums to 1 before and after: the regions' gains add up to the removed mass
    assert sum(sh.regions.values()) == pytest.approx(sh.removed_mass, rel=1e-5)  # per-head arrays are float32
    assert sh.removed_mass > 0 and set(sh.spike_heads) == set(removed[be0])
    assert sum(sh.layer_avg_regions.values()) == pytest.approx(0.0, abs=1e-6)


def test_spike_scores_find_isolated_peaks() -> None:
    """A decaying head with one isolated far spike: the far-median score ranks the near tokens first,
    the local score the spike; the peak is attributed to the head that holds it."""
    be, S = 10, 80
    kp = np.arange(be + S)
    heads = np.zeros((2, 2, be + S))
    d = np.arange(S)
    heads[:, :, be:] = np.exp(-d / 20.0)
    heads[1, 0, be + 60] *= 6.0  # layer 1, head 0: spike at d = 60
    far, far_arg = spike_scores(kp, heads, be, 16)
    loc, loc_arg = spike_scores(kp, heads, be, 16, local=8)
    cand = kp >= be + 16
    assert int(kp[cand][np.argmax(far[cand])]) == be + 16  # decay wins against the far median
    assert int(kp[cand][np.argmax(loc[cand])]) == be + 60 and loc_arg[be + 60] == 1 * 2 + 0
    assert loc[be + 60] == pytest.approx(6.0, rel=0.2)


# ---------------------------------------------------------------------------- keep
def _gaussian_p(window: int, sigma: float, scale: float) -> np.ndarray:
    """DPad's keep probability written out in float64: the window's distances d = 0..W-1 spread
    over [0, sigma], p(d) = scale * N(0, 1) density there."""
    x = sigma * np.arange(window) / max(window - 1, 1)
    return scale * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


@pytest.mark.parametrize("window,sigma,scale", [(256, 4.0, 2.0), (64, 1.0, 3.0), (1, 4.0, 2.0), (7, 2.5, 1e4)])
def test_keep_prob_matches_the_engine(window: int, sigma: float, scale: float) -> None:
    """The analysis' p(d) and the engine's table both equal the formula computed here (to float32
    precision: both are float32 tables), and so do the expected kept counts."""
    want = _gaussian_p(window, sigma, scale)
    np.testing.assert_allclose(keep_prob(window, sigma, scale), want, rtol=5e-6, atol=0)
    engine = GaussianDecay(window, sigma, scale)
    np.testing.assert_allclose(engine.prob.double().numpy(), want, rtol=5e-6, atol=0)
    kept = np.minimum(want, 1.0).sum()
    assert expected_kept(keep_prob(window, sigma, scale)) == pytest.approx(kept, rel=1e-5)
    assert engine.expected_kept() == pytest.approx(kept, rel=1e-5)
    assert engine.expected_kept(available=1) == pytest.approx(min(want[0], 1.0), rel=1e-5)


def test_keep_map_rate_tracks_p() -> None:
    """Keep maps from the engine's policy over many blocks: the per-distance keep rate stays within
    5 binomial standard errors (+0.5/n) of min(1, p(d)) at every distance (seeded, deterministic; a
    correct sampler fails this with probability < 1e-4 over the 96 distances)."""
    W, L, B = 96, 96 + 200, 8
    p = np.minimum(keep_prob(W, 3.0, 2.3), 1.0)
    pol = GaussianDecay(W, 3.0, 2.3)
    pol.reset(7)
    ends = [8 + B * (i % 10) for i in range(3000)]  # suffixes of 288..216 tokens: every d < W available
    kept = [pol.kept(be, L).tolist() for be in ends]
    kmap = keep_map(kept, ends, L, W)
    assert ((kmap == 1).sum(1) == np.array([len(k) for k in kept])).all()
    rate, _, n = empirical_rate(kmap, 1)
    tol = 5 * np.sqrt(p * (1 - p) / n) + 0.5 / n
    assert (np.abs(rate - p) <= tol).all(), np.abs(rate - p).max()
    sim = simulate_rate(W, 3.0, 2.3, draws=3000, seed=1)
    assert (np.abs(sim - p) <= 5 * np.sqrt(p * (1 - p) / 3000) + 0.5 / 3000).all()
    # bins aggregate counts
    rate8, k8, n8 = empirical_rate(kmap, 8)
    assert k8.sum() == (kmap == 1).sum() and len(rate8) == W // 8


def test_keep_map_marks_the_canvas_end() -> None:
    m = keep_map([[10, 12], [20]], [10, 20], 24, 8)
    assert m.tolist() == [[1, 0, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, -1, -1, -1, -1]]


# ---------------------------------------------------------------------------- CLI
def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_cli_attention_golden(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dpad.cli import main

    rc = main(["analyze", "attention", "--model", str(GOLDEN / "llada-tiny"), "--device", "cpu",
               "--prompt-ids", ",".join(map(str, PROMPT)), "--gen-length", "32", "--block-length", "8",
               "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    _png(tmp_path / "attention.png")
    rows = _csv(tmp_path / "attention.csv")
    assert {r["layer"] for r in rows} == {"0", "1", "avg"}
    assert {int(r["distance"]) for r in rows} == set(range(24))
    assert all(0 < float(r["mean_attention"]) < 1 for r in rows)
    assert _csv(tmp_path / "attention_blocks.csv") and _csv(tmp_path / "attention_heads.csv")
    s = json.loads((tmp_path / "attention.json").read_text())
    assert s["forwards_recorded"] == 32 and s["response"] is not None


def test_cli_keep(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dpad.cli import main

    assert main(["analyze", "keep", "-W", "64", "-k", "3", "-a", "2.3", "--draws", "200",
                 "--out", str(tmp_path / "plain")]) == 0
    _png(tmp_path / "plain" / "keep.png")
    rows = _csv(tmp_path / "plain" / "keep.csv")
    assert len(rows) == 64 and float(rows[0]["p"]) == pytest.approx(2.3 / math.sqrt(2 * math.pi), rel=1e-6)
    out = tmp_path / "run"
    assert main(["analyze", "keep", "--run", "-W", "16", "-k", "2", "-a", "1.5", "--model",
                 str(GOLDEN / "llada-tiny"), "--prompt-ids", ",".join(map(str, PROMPT)), "--gen-length", "32",
                 "--block-length", "8", "--bin", "4", "--out", str(out)]) == 0, capsys.readouterr().err
    _png(out / "keep.png")
    s = json.loads((out / "keep.json").read_text())
    kmap = _csv(out / "keep_map.csv")
    # the map is the engine's kept sets: replay them through the same seeded policy
    pol = GaussianDecay(16, 2.0, 1.5)
    pol.reset(s["config"]["seed"])
    P = len(PROMPT)
    for b in range(4):
        be = P + 8 * (b + 1)
        want = (pol.kept(be, P + 32) - be).tolist()
        got = [int(r["distance"]) for r in kmap if int(r["block"]) == b and r["kept"] == "1"]
        assert got == want
        assert s["blocks"][b]["kept"] == len(want)


def test_cli_migration_embedded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from dpad.cli import main

    rc = main(["analyze", "migration", "--n-problems", "2", "--gen-length", "64", "--min-distance", "8",
               "--top", "4", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    _png(tmp_path / "migration.png")
    rows = _csv(tmp_path / "migration.csv")
    assert len(rows) == 2 and all(r["correct_full"] in ("True", "False") for r in rows)
    assert all(len(r["removed_first_block"].split()) == 4 for r in rows)
    s = json.loads((tmp_path / "migration.json").read_text())
    assert s["method"] == "parallel" and 0 <= s["fraction_identical_responses"] <= 1
    att = _csv(tmp_path / "migration_attention.csv")
    removed = [r for r in att if r["removed"] == "1"]
    assert removed and all(float(r["attention_after"]) == 0.0 for r in removed)


def test_cli_errors(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    from dpad.cli import main

    assert main(["analyze", "migration", "--model", str(GOLDEN / "llada-tiny"), "--n-problems", "1",
                 "--out", str(tmp_path)]) == 2
    assert "tokenizer" in capsys.readouterr().err
    assert main(["analyze", "migration", "--suffix", "window", "-W", "8", "--out", str(tmp_path)]) == 2
    assert "--suffix full" in capsys.readouterr().err
    assert main(["analyze", "attention", "--prompt", "x", "--problem-index", "1", "--out", str(tmp_path)]) == 2
    assert "at most one" in capsys.readouterr().err
    assert main(["analyze", "keep", "-W", "0", "--out", str(tmp_path)]) == 2
