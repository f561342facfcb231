"""Throughput of this tree's engine against an earlier revision's, side by side in one run.

Both sides decode the same prompts with the same settings as ``throughput_bench.py``
(``parallel+prefix``: threshold 0.9 + prefix cache; ``parallel+prefix+dpad``: the
``llada-instruct-gsm8k-parallel`` preset with the prefix cache) through ``dpad.engine.decode_batch``,
in chunks of each batch size, on the embedded model. Every measurement is a fresh worker process
(load, one untimed warm-up chunk, then the timed decode of all prompts) running one side's source
tree; the sides alternate within every (method, batch size) cell and the order flips every round,
so the machine's load hits both alike. Reported: the best round per side (load only slows a run),
and the ratio new / baseline. Tokens must be identical on both sides (checked).

    python benchmarks/engine_ab.py --baseline fbc9629 --threads 1 --batch-sizes 1 16 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, sys, time, hashlib
import torch
threads, gen, block, n, batch, method = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                         int(sys.argv[5]), sys.argv[6])
torch.set_num_threads(threads)
import dpad
from dpad.api import encode_prompt
from dpad.config import DecodeConfig, preset
from dpad.engine import decode_batch
from dpad.synthetic import arith
lm = dpad.load(device="cpu", dtype="float32")
prompts = [encode_prompt(lm, p.question) for p in arith.generate("test", n, 0)]
if method == "parallel+prefix":
    cfg = DecodeConfig(gen_length=gen, block_length=block, threshold=0.9, cache="prefix")
else:
    cfg = preset("llada-instruct-gsm8k-parallel", gen_length=gen, block_length=block, cache="prefix")
run = lambda ps: decode_batch(lm.model, ps, cfg, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id)
run(prompts[:batch])  # warm-up
t0 = time.perf_counter()
outs = []
for i in range(0, n, batch):
    outs += run(prompts[i:i + batch])
wall = time.perf_counter() - t0
tokens = sum(o.response_length for o in outs)
digest = hashlib.sha256(json.dumps([o.generated for o in outs]).encode()).hexdigest()
print(json.dumps({"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall, "digest": digest,
                  "nfe": sum(o.nfe for o in outs) / n}))
"""


def run_worker(src: Path, args: argparse.Namespace, batch: int, method: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-c", WORKER, str(args.threads), str(args.gen_length), str(args.block_length),
           str(args.n), str(batch), method]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"worker ({src}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="git revision of the baseline engine (required unless --render)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--methods", nargs="+", default=["parallel+prefix", "parallel+prefix+dpad"])
    ap.add_argument("--n", type=int, default=64, help="prompts per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "engine_ab")
    ap.add_argument("--render", type=Path, default=None, help="only rewrite the Markdown of this result JSON")
    args = ap.parse_args(argv)
    if args.render is not None:
        md = markdown(json.loads(args.render.read_text()))
        args.render.with_suffix(".md").write_text(md)
        print(md)
        return 0
    if args.baseline is None:
        ap.error("--baseline is required (a git revision), unless --render")
    rev = subprocess.run(["git", "rev-parse", args.baseline], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip())
    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            sides = {"baseline": base / "src", "new": ROOT / "src"}
            t0 = time.perf_counter()
            for rnd in range(args.rounds):
                for bs in args.batch_sizes:
                    for method in args.methods:
                        order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
                        for side in order:
                            m = run_worker(sides[side], args, bs, method)
                            runs.setdefault((method, bs, side), []).append(m)
                            print(f"round {rnd} {method:>22} batch {bs:>3} {side:>8}: {m['tok_s']:8.1f} tok/s "
                                  f"({m['wall_s']:.2f} s)", flush=True)
            total = time.perf_counter() - t0
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False,
                           capture_output=True)
    rows = []
    for method in args.methods:
        for bs in args.batch_sizes:
            best = {s: max(runs[(method, bs, s)], key=lambda m: m["tok_s"]) for s in ("baseline", "new")}
            same = len({m["digest"] for s in ("baseline", "new") for m in runs[(method, bs, s)]}) == 1
            rows.append({"method": method, "batch_size": bs, "gen_length": args.gen_length, "n": args.n,
                         "baseline_tok_s": best["baseline"]["tok_s"], "new_tok_s": best["new"]["tok_s"],
                         "new_vs_baseline": best["new"]["tok_s"] / best["baseline"]["tok_s"],
                         "nfe": best["new"]["nfe"], "same_tokens": same,
                         "rounds": {s: [m["tok_s"] for m in runs[(method, bs, s)]] for s in ("baseline", "new")}})
    import torch

    result = {"kind": "engine_ab", "env": {"device": "cpu", "dtype": "float32", "threads": args.threads,
                                          "torch": torch.__version__, "git": head + (" (dirty)" if dirty else ""),
                                          "baseline_git": rev, "cpu": platform.processor() or platform.machine()},
              "model": "embedded", "task": "arith",
              "command": "python benchmarks/engine_ab.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {"rounds": args.rounds, "total_time_s": total, "gen_length": args.gen_length,
                           "block_length": args.block_length, "n": args.n}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0 if all(r["same_tokens"] for r in rows) else 1


def paired_median(row: dict[str, Any]) -> float:
    """The median over rounds of new / baseline within the round (the two ran back to back)."""
    r = row["rounds"]
    return statistics.median(n / b for n, b in zip(r["new"], r["baseline"], strict=True))


def markdown(result: dict[str, Any]) -> str:
    st, env = result["settings"], result["env"]
    md = [f"### Engine throughput: this tree vs {env['baseline_git'][:10]}, embedded model, CPU, {env['threads']} thread(s)",
          "", f"gen {st.get('gen_length', 256)}, block {st.get('block_length', 32)}, {st.get('n', 64)} prompts per cell, "
          f"{st['rounds']} interleaved rounds per side (every round in the JSON). tok/s = response tokens (EOS padding "
          "excluded) / wall time of all chunks. Best: the best round of each side; paired: the median over rounds of "
          "the ratio of the two back-to-back runs of a round.", "",
          "| method | batch | baseline tok/s (best) | new tok/s (best) | new / baseline (best) | new / baseline (paired median) "
          "| same tokens |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        md.append(f"| {r['method']} | {r['batch_size']} | {r['baseline_tok_s']:.1f} | {r['new_tok_s']:.1f} | "
                  f"{r['new_vs_baseline']:.2f}x | {paired_median(r):.2f}x | {'yes' if r['same_tokens'] else 'NO'} |")
    md += ["", f"Command: `{result['command']}` (git {env['git']}, torch {env['torch']}).", ""]
    return "\n".join(md)


if __name__ == "__main__":
    raise SystemExit(main())
