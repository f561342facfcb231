"""dpad bench: a tiny ladder (gen 64, n=1, two methods) writes a valid results JSON; --resume."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dpad.bench.ladder import DEFAULT_METHODS, TARGETS, LadderSettings, build_result, run_ladder  # noqa: E402
from dpad.cli import main as dpad_main  # noqa: E402
from dpad.errors import ConfigError  # noqa: E402

# --steps 16 keeps vanilla's 64-token decode cheap (16 forwards) on a shared CPU
TINY = ["bench", "--methods", "vanilla", "parallel+prefix+dpad", "--gen-lengths", "64", "--n", "1",
        "--accuracy-n", "1", "--accuracy-baseline-gen", "64", "--steps", "16", "--threads", "1", "--no-progress"]


def _strict_json(path: Path) -> dict:
    def no_nan(x: str) -> float:
        raise AssertionError(f"non-finite number {x} in {path}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_tiny_ladder_writes_results_and_resumes(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "ladder"
    assert dpad_main([*TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "parallel+prefix+dpad" in printed and "dpad implies early termination" in printed

    res = _strict_json(out.with_suffix(".json"))
    assert res["kind"] == "ladder" and res["complete"] is True and res["model"] == "embedded"
    for key in ("device", "dtype", "threads", "torch", "transformers", "git"):
        assert key in res["env"]
    assert res["env"]["threads"] == 1
    assert res["command"].startswith("dpad bench")
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"vanilla", "parallel+prefix+dpad"}
    for r in rows.values():
        assert r["gen_length"] == 64 and r["n"] == 1
        for key in ("latency_s", "tok_s", "nfe", "accuracy", "speedup_vs_vanilla"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), key
    assert rows["vanilla"]["speedup_vs_vanilla"] == 1.0 and rows["vanilla"]["nfe"] == 16
    assert rows["parallel+prefix+dpad"]["nfe"] < 16
    assert "accuracy_delta_points" in rows["parallel+prefix+dpad"]
    assert res["accuracy_baseline"]["n"] == 1 and res["accuracy_baseline"]["gen_length"] == 64
    assert [t["name"] for t in res["targets"]] == [t["name"] for t in TARGETS]
    assert res["targets"][0]["value"] is None and res["targets"][0]["met"] is None  # gen 1024 not run
    assert res["configs"]["parallel+prefix+dpad@64"]["suffix"] == "gaussian"

    md = out.with_suffix(".md").read_text()
    assert "| 64 | parallel+prefix+dpad |" in md and "dpad implies early termination" in md
    records = out.with_name("ladder.records.jsonl").read_text().splitlines()
    assert len(records) == 2 + 2  # speed: 2 methods x 1 problem; accuracy: baseline + 1 method
    if out.with_suffix(".png").exists():
        assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"

    # an existing run is never overwritten by accident
    assert dpad_main([*TINY, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume with everything done decodes nothing new and keeps the numbers
    settings = LadderSettings(methods=["vanilla", "parallel+prefix+dpad"], gen_lengths=[64], n=1, accuracy_n=1,
                              accuracy_baseline_gen=64, threads=1, device="cpu", overrides={"steps": 16})
    again = run_ladder(settings, out, resume=True, progress=False, plot=False, log=lambda *a: None)
    assert len(out.with_name("ladder.records.jsonl").read_text().splitlines()) == 4
    assert again["rows"] == res["rows"]
    # resuming with different parameters is refused
    settings.overrides = {"steps": 32}
    with pytest.raises(ConfigError, match="overrides"):
        run_ladder(settings, out, resume=True, progress=False, plot=False)


def test_partial_records_aggregate() -> None:
    """Rows and targets are computed from whatever records exist (an interrupted run)."""
    s = LadderSettings(methods=["vanilla", "et+parallel+prefix", "parallel+prefix+dpad"], gen_lengths=[1024], n=2)
    recs = []
    for i, lat in enumerate((100.0, 120.0)):
        recs.append({"phase": "speed", "gen_length": 1024, "method": "vanilla", "index": i, "latency_s": lat,
                     "response_tokens": 50, "nfe": 1024, "correct": True})
        recs.append({"phase": "speed", "gen_length": 1024, "method": "et+parallel+prefix", "index": i,
                     "latency_s": 10.0, "response_tokens": 50, "nfe": 4, "correct": True})
    recs.append({"phase": "speed", "gen_length": 1024, "method": "parallel+prefix+dpad", "index": 0,
                 "latency_s": 1.0, "response_tokens": 50, "nfe": 4, "correct": False})
    res = build_result(s, recs, env={}, command="x", configs={}, complete=False)
    rows = {r["method"]: r for r in res["rows"]}
    assert rows["vanilla"]["n"] == 2 and rows["parallel+prefix+dpad"]["n"] == 1
    # speed-up on the problems both finished: problem 0 only
    assert rows["parallel+prefix+dpad"]["speedup_vs_vanilla"] == pytest.approx(100.0)
    assert rows["et+parallel+prefix"]["speedup_vs_vanilla"] == pytest.approx(11.0)
    t = {x["name"]: x for x in res["targets"]}
    assert t[TARGETS[0]["name"]]["met"] is True
    assert t[TARGETS[2]["name"]]["value"] == pytest.approx(10.0) and t[TARGETS[2]["name"]]["met"] is True
    assert t[TARGETS[1]["name"]]["met"] is None


def test_default_ladder_and_validation() -> None:
    assert DEFAULT_METHODS[:6] == ("vanilla", "et", "dpad", "parallel", "parallel+dpad", "parallel+prefix")
    assert "et+parallel+prefix" in DEFAULT_METHODS and DEFAULT_METHODS[-1] == "parallel+dual+dpad"
    with pytest.raises(ConfigError):
        LadderSettings(methods=["warp"]).validate()
    with pytest.raises(ConfigError, match="--gen-lengths"):
        LadderSettings(overrides={"gen_length": 64}).validate()
    s = LadderSettings(methods=["parallel+prefix+et", "et+parallel+prefix"])
    s.validate()
    assert s.methods == ["et+parallel+prefix"]


def test_plot_draws_every_gen_length_and_marks_partial_groups(tmp_path: Path) -> None:
    """An unfinished ladder: gen 256 whole, gen 512 with vanilla on 1 of 2 problems, gen 1024 with one
    method on one problem and no vanilla yet. Every gen length is drawn; the partial ones say why."""
    from dpad.bench.plot import ladder_groups, plot_ladder, redraw

    s = LadderSettings(methods=["vanilla", "et", "parallel+prefix+dpad"], gen_lengths=[256, 512, 1024], n=2)

    def rec(L: int, m: str, i: int, lat: float) -> dict:
        return {"phase": "speed", "gen_length": L, "method": m, "index": i, "latency_s": lat, "response_tokens": 9,
                "nfe": 4, "correct": True}

    recs = [rec(L, m, i, lat) for L in (256, 512) for i in (0, 1)
            for m, lat in (("vanilla", 8.0), ("et", 2.0), ("parallel+prefix+dpad", 0.5))
            if not (L == 512 and m == "vanilla" and i == 1)] + [rec(1024, "et", 0, 3.0)]
    res = build_result(s, recs, env={}, command="x", configs={}, complete=False)
    groups = {g.gen_length: g for g in ladder_groups(res)}
    assert list(groups) == [256, 512, 1024]
    assert groups[256].note == "" and [b.method for b in groups[256].bars] == s.methods
    assert not any(b.partial for b in groups[256].bars) and groups[256].bars[2].speedup == pytest.approx(16.0)
    assert groups[512].note == "speed-ups on 1 of 2 problems"
    assert all(b.partial and b.n == 1 for b in groups[512].bars) and len(groups[512].bars) == 3
    assert groups[1024].bars == [] and groups[1024].note == "no vanilla yet: no speed-up; 2 methods not run yet"

    pytest.importorskip("matplotlib")
    assert plot_ladder(res, tmp_path / "l.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert redraw(tmp_path / "r.json") == tmp_path / "r.png" and (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
