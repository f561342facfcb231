"""dpad bench --frontier: a tiny frontier (gen 32, 2 problems) writes the results JSON/MD/PNG and
records, resumes, runs points in separate processes (--only), imports vanilla's records; the
selection rule; vanilla vs early termination decode the same responses."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dpad.bench.frontier import FrontierSettings, build_result, parse_sweep, run_frontier  # noqa: E402
from dpad.cli import main as dpad_main  # noqa: E402
from dpad.errors import ConfigError  # noqa: E402

TINY = ["bench", "--frontier", "--n", "2", "--batch-size", "2", "--gen-length", "32", "--vanilla-n", "1",
        "--sweep", "threshold=0.9", "eb=0.1", "--threads", "1", "--no-progress", "--problem-seed", "3"]


def test_tiny_frontier_writes_results_and_resumes(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "frontier"
    assert dpad_main([*TINY, "--out", str(out)]) == 0
    assert "selected:" in capsys.readouterr().out
    res = json.loads(out.with_suffix(".json").read_text(), parse_constant=lambda x: pytest.fail(x))
    assert res["kind"] == "frontier" and res["complete"] and res["command"].startswith("dpad bench")
    assert res["settings"]["task_options"] == {"problem_seed": 3}
    rows = {r["point"]: r for r in res["rows"]}
    assert set(rows) == {"vanilla", "threshold=0.9", "eb=0.1"}
    for r in rows.values():
        assert r["n"] == 2 and 0 <= r["accuracy"] <= 1 and math.isfinite(r["nfe"])
    v = rows["vanilla"]
    assert v["nfe"] == 32 and v["accuracy_measured_as"] == "et on 2" and v["direct_n"] == 1
    assert v["direct_nfe"] == 32 and v["direct_identical_to_et"] == 1 and v["latency_s"] > 0
    assert rows["threshold=0.9"]["method"] == "parallel+prefix+dpad" and rows["eb=0.1"]["nfe"] < 32
    assert res["configs"]["eb=0.1"]["entropy_bound"] == 0.1 and res["configs"]["eb=0.1"]["threshold"] is None
    assert res["configs"]["vanilla"]["early_termination"] and res["configs"]["vanilla-direct"]["suffix"] == "full"
    sel = res["selected"]
    if sel is not None:
        assert sel["accuracy_delta_points"] >= -1.0 and "nfe_vs_threshold0.9" in sel
    assert "| eb=0.1 |" in out.with_suffix(".md").read_text()
    if out.with_suffix(".png").exists():
        assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    recs = out.with_name("frontier.records.jsonl").read_text().splitlines()
    assert len(recs) == 3 * 2 + 1

    assert dpad_main([*TINY, "--out", str(out)]) == 2  # never overwritten by accident
    assert "--resume" in capsys.readouterr().err
    settings = FrontierSettings(sweep=parse_sweep(["threshold=0.9", "eb=0.1"]), n=2, batch_size=2,
                                vanilla_n=1, threads=1, device="cpu", task_options={"problem_seed": 3},
                                overrides={"gen_length": 32})
    again = run_frontier(settings, out, resume=True, progress=False, plot=False, log=lambda *a: None)
    assert len(out.with_name("frontier.records.jsonl").read_text().splitlines()) == 7
    assert again["rows"] == res["rows"]
    settings.batch_size = 1
    with pytest.raises(ConfigError, match="batch_size"):
        run_frontier(settings, out, resume=True, progress=False, plot=False)

    # a new point in its own process (--only), then vanilla imported from the first run's records
    out2 = tmp_path / "second"
    s2 = FrontierSettings(sweep=parse_sweep(["threshold=0.99"]), n=2, batch_size=2, vanilla_n=0, threads=1,
                          device="cpu", task_options={"problem_seed": 3}, overrides={"gen_length": 32},
                          vanilla_records=str(out.with_name("frontier.records.jsonl")))
    part = run_frontier(s2, out2, progress=False, plot=False, only=["threshold=0.99"], log=lambda *a: None)
    vrow = next(r for r in part["rows"] if r["rule"] == "vanilla")
    assert vrow["n"] == 1 and vrow["accuracy_measured_as"].startswith("vanilla itself (imported")
    assert not part["complete"]  # vanilla's second problem is not decoded yet
    with pytest.raises(ConfigError, match="not a point"):
        run_frontier(s2, out2, resume=True, progress=False, plot=False, only=["eb=0.5"])


def test_selection_and_sweep_parsing() -> None:
    s = FrontierSettings(sweep=parse_sweep(["threshold=0.9,0.99", "eb=0.01", "guard=0.99,never"]), n=2, vanilla_n=0)
    assert [p[0] for p in s.points()] == ["threshold=0.9", "threshold=0.99", "eb=0.01", "guard=0.99", "guard=never"]
    guard = dict(s.points()[4][3])
    assert (guard["threshold"], guard["dependency_distance"], guard["dependency_threshold"]) == (0.9, 1, None)

    def recs(point: str, nfe: int, correct: list[bool]) -> list[dict]:
        return [{"point": point, "method": "m", "index": i, "correct": c, "nfe": nfe, "latency_s": 0.1,
                 "response_tokens": 10} for i, c in enumerate(correct)]

    records = (recs("vanilla", 50, [True, True]) + recs("threshold=0.9", 3, [True, False])
               + recs("threshold=0.99", 5, [True, True]) + recs("eb=0.01", 6, [True, True]))
    res = build_result(s, records, env={}, command="x", configs={}, complete=True)
    assert res["selected"]["point"] == "threshold=0.99"  # fewest NFE within 1 point; 0.9 loses 50 points
    assert res["selected"]["nfe_vs_threshold0.9"] == pytest.approx(5 / 3)
    for bad in (["nope=1"], ["eb"], ["eb=x"], ["threshold="]):
        with pytest.raises(ConfigError, match="--sweep"):
            parse_sweep(bad)
    with pytest.raises(ConfigError, match="sweep"):
        FrontierSettings(overrides={"threshold": 0.9}).validate()


def test_early_termination_decodes_vanilla_responses_tiny() -> None:
    """et decodes vanilla's responses on the golden tiny Dream model (float64, rows that stop early)."""
    import torch

    from dpad.config import DecodeConfig
    from dpad.engine import decode
    from dpad.models import load

    lm = load(Path(__file__).resolve().parent / "fixtures" / "golden" / "dream-tiny", dtype="float64")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 250, (n,), generator=g).tolist() for n in (5, 12, 20, 8, 31, 17, 3, 26)]
    cfg = DecodeConfig(gen_length=64, block_length=16)
    stopped = 0
    for p in prompts:
        a = decode(lm.model, p, cfg, mask_id=250, eos_id=251)
        b = decode(lm.model, p, cfg.replace(early_termination=True), mask_id=250, eos_id=251)
        n = a.response_length
        assert b.response_length == n and b.generated[:n] == a.generated[:n]
        stopped += b.stopped_early
        assert b.nfe < a.nfe if b.stopped_early else b.nfe == a.nfe
    assert stopped >= 2  # the claim is exercised, not vacuous


@pytest.mark.slow
def test_early_termination_decodes_vanilla_responses() -> None:
    """The frontier measures vanilla's accuracy through et: on the embedded model, et's responses
    (up to the first EOS) are vanilla's, token for token, with fewer forwards (single rows, so the
    two runs compute the same shapes up to et's stop)."""
    import dpad
    from dpad.eval.methods import resolve_config
    from dpad.eval.tasks import get_task

    lm = dpad.load(device="cpu")
    prompts = [s.prompt for s in get_task("arith", problem_seed=5).samples(2)]
    _, vanilla = resolve_config("vanilla", overrides={"gen_length": 96})
    _, et = resolve_config("et", overrides={"gen_length": 96})
    a = [dpad.generate(lm, p, vanilla) for p in prompts]
    b = [dpad.generate(lm, p, et) for p in prompts]
    assert [x.response_ids for x in a] == [y.response_ids for y in b]
    assert [x.text for x in a] == [y.text for y in b]
    assert all(y.stats["nfe"] < x.stats["nfe"] == 96 for x, y in zip(a, b, strict=True))


class _Loaded(Exception):
    pass


@pytest.mark.parametrize("frontier", [False, True])
def test_ladder_and_frontier_load_the_model_as_the_flags_say(tmp_path: Path, monkeypatch, frontier: bool) -> None:  # noqa: ANN001
    """One runner: --revision, --compile and --dtype reach the model of both runs (the frontier used to
    drop --revision and --compile)."""
    import dpad.api

    seen: dict = {}

    def load(model, **kw):  # noqa: ANN001, ANN003, ANN202
        seen.update(kw, model=model)
        raise _Loaded

    monkeypatch.setattr(dpad.api, "load", load)
    argv = ["bench", "--out", str(tmp_path / "run"), "--n", "1", "--revision", "v2", "--compile", "--dtype", "float64",
            "--threads", "1", "--no-progress", "--preset", "fast-dllm-prefix", "--gen-length" if frontier else
            "--gen-lengths", "32", *(["--frontier", "--sweep", "threshold=0.9", "--vanilla-n", "0"] if frontier else [])]
    with pytest.raises(_Loaded):
        dpad_main(argv)
    assert seen == {"model": None, "device": "auto", "dtype": "float64", "revision": "v2", "compile": True}
    assert not (tmp_path / "run.records.jsonl").exists()  # nothing written before the model loads


def test_the_frontier_shares_the_runner_not_the_ladder() -> None:
    from test_imports import import_graph

    g = import_graph()
    assert "dpad.bench.ladder" not in g["dpad.bench.frontier"]
    assert "dpad.bench.runner" in g["dpad.bench.frontier"] and "dpad.bench.runner" in g["dpad.bench.ladder"]
