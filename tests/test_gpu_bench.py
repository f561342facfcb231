"""benchmarks/gpu_bench.py runs end to end before a GPU is lent: ``--smoke`` (toy sizes on the CPU,
the bucketed static-KV path traced by dynamo with the eager backend) writes both results, every
row measured, the compiled decodes give eager's tokens; a compile that would not end within the
budget is refused and its row recorded as skipped; a failure keeps the rows already measured."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict, dict]:
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--reps", "1", "--out", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=600, env=ENV)
    fwd = json.loads((tmp_path / "forward_gpu.json").read_text())
    thr = json.loads((tmp_path / "throughput_gpu_compiled.json").read_text())
    return r, fwd, thr


def test_gpu_bench_smoke(tmp_path: Path) -> None:
    r, fwd, thr = run(tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "error" not in fwd, fwd.get("error")
    kinds = {(row["mode"], row["gen_length"], row["forward"], row["batch"]) for row in fwd["rows"]}
    assert len(kinds) == len(fwd["rows"]) == 2 * 2 * 7  # eager and compiled, 2 gens, 5 shapes at batch 1 + 2 at batch 2
    assert all(row["latency_ms"] > 0 for row in fwd["rows"])
    # real decode shapes: fed lengths that are not bucket multiples, padded in the compiled rows
    comp = [row for row in fwd["rows"] if row["mode"] == "compiled"]
    assert {row["tokens"] for row in comp} >= {32, 33, 59} and any(row["padded_tokens"] > row["tokens"] for row in comp)
    assert all(row["padded_keys"] >= row["keys"] for row in comp)
    assert fwd["sdpa"] and all(s["kernel"] for s in fwd["sdpa"])
    assert fwd["compile_guard"]["installed"] and fwd["compile_guard"]["refused"] == 0
    thr_rows = [(row["mode"], row["batch"]) for row in thr["rows"]]
    assert thr_rows == [("eager", 1), ("eager", 2), ("compiled", 1), ("compiled", 2)]
    assert all(row["tok_s"] > 0 for row in thr["rows"])
    for row in thr["rows"]:
        if row["mode"] == "compiled":  # smoke is float64: exact; graphs all made in the two warm-ups
            assert row["same_tokens_as_eager_float64"] is True and row["graphs_in_timed"] == 0
    [check] = thr["check"]
    assert check["same_tokens"] == [True, True] and check["same_nfe"] == [True, True]
    assert thr["env"]["smoke"] and "smoke" in (tmp_path / "forward_gpu.md").read_text()
    assert "compiled / eager" in (tmp_path / "forward_gpu.md").read_text()


def test_compiles_that_would_overrun_the_budget_are_skipped(tmp_path: Path) -> None:
    """With a compile expected to take longer than the budget, no compile starts: every compiled row
    (and the float check) is recorded as skipped, every eager row is measured."""
    r, fwd, thr = run(tmp_path, "--compile-guess-s", "100000")
    assert r.returncode == 0, r.stderr[-2000:]
    for res in (fwd, thr):
        eager = [row for row in res["rows"] if row["mode"] == "eager"]
        comp = [row for row in res["rows"] if row["mode"] == "compiled"]
        assert eager and all("latency_ms" in row or "tok_s" in row for row in eager)
        assert comp and all("compile refused" in row["skipped"] for row in comp)
        assert res["compile_guard"]["refused"] >= len(comp) and res["compile_guard"]["compiles_s"] == []
    assert "compile refused" in thr["check"][0]["skipped"]
    assert "skipped" in (tmp_path / "forward_gpu.md").read_text()


@pytest.mark.parametrize("part", ["forward", "throughput"])
def test_a_failure_keeps_the_rows_already_measured(tmp_path: Path, part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location(f"gpu_bench_{part}", SCRIPT)
    gb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gb)

    def boom(*a: object, **kw: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(gb, "compile_model", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert gb.main(["--smoke", "--part", part, "--reps", "1", "--out", str(tmp_path)]) == 1
    name = "forward_gpu" if part == "forward" else "throughput_gpu_compiled"
    res = json.loads((tmp_path / f"{name}.json").read_text())
    assert "boom" in res["error"]
    eager = [row for row in res["rows"] if row["mode"] == "eager"]
    assert eager and all(row.get("latency_ms", row.get("tok_s", 0)) > 0 for row in eager)
    assert "boom" in (tmp_path / f"{name}.md").read_text()
    if part == "throughput":
        assert "boom" in res["check"][0]["error"]
