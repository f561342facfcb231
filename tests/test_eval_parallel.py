"""dpad eval under torchrun: 2 CPU processes (gloo) shard the samples; rank 0 writes one merged result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PLATFORM

from dpad.eval.parallel import DistContext, shard

ARGS = ["eval", "--task", "arith", "--method", "parallel+prefix+dpad", "--limit", "4", "--gen-length", "64",
        "--no-progress", "--threads", "1"]


def _torchrun_available() -> bool:
    try:
        import torch.distributed as dist
        import torch.distributed.run  # noqa: F401
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


def test_shard_covers_every_sample_once() -> None:
    items = list(range(7))
    parts = [shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(x for p in parts for x in p) == items
    ctx = DistContext()
    assert not ctx.enabled and ctx.gather({"a": 1}) == [{"a": 1}] and ctx.device_for("cpu") == "cpu"


@pytest.mark.skipif(not _torchrun_available(), reason=PLATFORM + "this torch build has no torch.distributed (gloo) / torchrun")
def test_two_process_eval_merges_into_one_result(tmp_path: Path) -> None:
    from dpad.cli import main as dpad_main

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    dp_out = tmp_path / "dp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dpad.cli", *ARGS, "--out", str(dp_out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    files = sorted(p.name for p in dp_out.iterdir())
    stem = "arith_parallel+prefix+dpad_gen64"
    assert files == [f"{stem}.json", f"{stem}.md", f"{stem}.samples.jsonl"]  # one merged result, no rank files
    merged = json.loads((dp_out / f"{stem}.json").read_text())
    assert merged["env"]["world_size"] == 2 and merged["summary"]["n"] == 4
    dp_recs = [json.loads(x) for x in (dp_out / f"{stem}.samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in dp_recs] == [0, 1, 2, 3]

    # the same run in one process gives the same outputs
    single_out = tmp_path / "single"
    assert dpad_main([*ARGS, "--out", str(single_out)]) == 0
    one = [json.loads(x) for x in (single_out / f"{stem}.samples.jsonl").read_text().splitlines()]
    assert [(r["output"], r["nfe"], r["correct"]) for r in one] == [(r["output"], r["nfe"], r["correct"])
                                                                     for r in dp_recs]
    single = json.loads((single_out / f"{stem}.json").read_text())
    assert single["summary"]["accuracy"] == merged["summary"]["accuracy"]
