"""benchmarks/gpu_bench.py runs end to end before a GPU is lent: ``--smoke`` (toy sizes on the CPU,
the bucketed static-KV path traced by dynamo with the eager backend) writes both results, every
row measured, and the compiled decode gives eager's tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_bench.py"


def test_gpu_bench_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--reps", "1", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    fwd = json.loads((tmp_path / "forward_gpu.json").read_text())
    assert "error" not in fwd, fwd.get("error")
    kinds = {(row["mode"], row["gen_length"], row["forward"]) for row in fwd["rows"]}
    assert len(kinds) == 2 * 2 * 3  # eager and compiled, gen 64 and 128, full / refresh / step
    assert all(row["latency_ms"] > 0 for row in fwd["rows"])
    assert all("compiled_vs_eager" in row for row in fwd["rows"] if row["mode"] == "compiled")
    thr = json.loads((tmp_path / "throughput_gpu_compiled.json").read_text())
    assert "error" not in thr, thr.get("error")
    assert [(row["mode"], row["batch"]) for row in thr["rows"]] == [
        ("eager", 1), ("eager", 2), ("compiled", 1), ("compiled", 2)]
    assert all(row["same_tokens_as_eager"] is True for row in thr["rows"] if row["mode"] == "compiled")
    assert thr["env"]["smoke"] and "smoke" in (tmp_path / "forward_gpu.md").read_text()
