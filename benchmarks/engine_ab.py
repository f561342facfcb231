"""Throughput of this tree's engine against an earlier revision's, side by side in one run, paired.

Both sides decode the same prompts with the same settings as ``throughput_bench.py``
(``parallel+prefix``: threshold 0.9 + prefix cache; ``parallel+prefix+dpad``: the
``llada-instruct-gsm8k-parallel`` preset with the prefix cache) through ``dpad.engine.decode_batch``,
in chunks of each batch size, on the embedded model.

How it is measured, so that a shared, drifting machine cannot pick the winner:

- one long-lived worker process per side (its source tree on ``PYTHONPATH``), loaded once and warmed
  up once per (method, batch size); only one side runs at a time, the other waits on its pipe;
- the prompts are cut into *units* (``--unit`` prompts, at least one batch); every unit is decoded by
  both sides back to back, a *pair*, in alternating order (ABBA), so a slow patch of the machine
  hits a pair's two halves alike;
- per cell: the ratio of the two sides' summed unit times (tokens are identical, checked per pair,
  so this is new tok/s / baseline tok/s), the median of the per-pair ratios, and a 95 % bootstrap
  interval of the summed ratio over pairs.

    python benchmarks/engine_ab.py --baseline fbc9629 --threads 1 --batch-sizes 1 16 64 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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
threads, gen, block, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
import dpad
from dpad.api import encode_prompt
from dpad.config import DecodeConfig, preset
from dpad.engine import decode_batch
from dpad.synthetic import arith
lm = dpad.load(device="cpu", dtype="float32")
prompts = [encode_prompt(lm, p.question) for p in arith.generate("test", n, 0)]
cfgs = {"parallel+prefix": DecodeConfig(gen_length=gen, block_length=block, threshold=0.9, cache="prefix"),
        "parallel+prefix+dpad": preset("llada-instruct-gsm8k-parallel", gen_length=gen, block_length=block,
                                       cache="prefix")}
warm = set()
def run(cfg, ps):
    return decode_batch(lm.model, ps, cfg, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    cfg, batch, a, b = cfgs[cmd["method"]], cmd["batch"], cmd["start"], cmd["end"]
    if (cmd["method"], batch) not in warm:  # untimed: first-use allocations and caches
        run(cfg, prompts[:batch])
        warm.add((cmd["method"], batch))
    t0 = time.perf_counter()
    outs = []
    for i in range(a, b, batch):
        outs += run(cfg, prompts[i:min(i + batch, b)])
    wall = time.perf_counter() - t0
    digest = hashlib.sha256(json.dumps([o.generated for o in outs]).encode()).hexdigest()
    print(json.dumps({"wall_s": wall, "tokens": sum(o.response_length for o in outs), "digest": digest,
                      "nfe": sum(o.nfe for o in outs)}), flush=True)
"""


class Worker:
    """One side's worker process: decode a unit of prompts on request, report its wall time."""

    def __init__(self, src: Path, args: argparse.Namespace) -> None:
        env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
        cmd = [sys.executable, "-c", WORKER, str(args.threads), str(args.gen_length), str(args.block_length),
               str(args.n)]
        self.src = src
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker ({self.src}) exited with {self.proc.wait()}")
        return json.loads(line)

    def run(self, method: str, batch: int, start: int, end: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"method": method, "batch": batch, "start": start, "end": end}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def bootstrap(pairs: list[tuple[float, float]], reps: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of sum(baseline) / sum(new) (= new / baseline throughput) over resampled pairs."""
    rng = random.Random(seed)
    n = len(pairs)
    stats = []
    for _ in range(reps):
        s = [pairs[rng.randrange(n)] for _ in range(n)]
        stats.append(sum(b for b, _ in s) / sum(x for _, x in s))
    stats.sort()
    return stats[int(0.025 * reps)], stats[int(0.975 * reps) - 1]


def summarize(method: str, bs: int, pairs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    times = [(p["baseline"]["wall_s"], p["new"]["wall_s"]) for p in pairs]
    base_t, new_t = sum(b for b, _ in times), sum(x for _, x in times)
    tokens = sum(p["new"]["tokens"] for p in pairs)
    lo, hi = bootstrap(times)
    return {"method": method, "batch_size": bs, "gen_length": args.gen_length, "n": args.n, "unit": pairs[0]["size"],
            "pairs": len(pairs), "baseline_tok_s": tokens / base_t, "new_tok_s": tokens / new_t,
            "new_vs_baseline": base_t / new_t, "ci95": [lo, hi],
            "paired_median": statistics.median(b / x for b, x in times),
            "nfe": sum(p["new"]["nfe"] for p in pairs) / sum(p["size"] for p in pairs),
            "same_tokens": all(p["baseline"]["digest"] == p["new"]["digest"] for p in pairs),
            "pair_times": [[round(b, 4), round(x, 4)] for b, x in times]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="git revision of the baseline engine (required unless --render)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--methods", nargs="+", default=["parallel+prefix", "parallel+prefix+dpad"])
    ap.add_argument("--n", type=int, default=64, help="prompts (each round decodes all of them on both sides)")
    ap.add_argument("--unit", type=int, default=16, help="prompts per pair (raised to the batch size)")
    ap.add_argument("--rounds", type=int, default=4)
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
    bad = [b for b in args.batch_sizes if b < 1 or args.n % max(b, args.unit)]
    if args.unit < 1 or bad:
        ap.error(f"--n {args.n} must be a multiple of every unit (max(--unit, batch size)); not for batch sizes {bad}")
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()  # noqa: E731
    rev, head = git("rev-parse", args.baseline), git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "src"))
    pairs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        git("worktree", "add", "--detach", str(base), rev)
        workers: dict[str, Worker] = {}
        try:
            workers = {"baseline": Worker(base / "src", args), "new": Worker(ROOT / "src", args)}
            t0 = time.perf_counter()
            k = 0
            for rnd in range(args.rounds):
                for bs in args.batch_sizes:
                    for method in args.methods:
                        unit = max(bs, args.unit)
                        for start in range(0, args.n, unit):
                            order = ["baseline", "new"] if k % 2 == 0 else ["new", "baseline"]
                            k += 1
                            p: dict[str, Any] = {"round": rnd, "start": start, "size": unit, "first": order[0]}
                            for side in order:
                                p[side] = workers[side].run(method, bs, start, start + unit)
                            pairs.setdefault((method, bs), []).append(p)
                            print(f"round {rnd} {method:>22} batch {bs:>3} prompts {start:>3}+{unit}: baseline "
                                  f"{p['baseline']['wall_s']:6.2f} s  new {p['new']['wall_s']:6.2f} s  ratio "
                                  f"{p['baseline']['wall_s'] / p['new']['wall_s']:.3f}"
                                  f"{'' if p['baseline']['digest'] == p['new']['digest'] else '  TOKENS DIFFER'}",
                                  flush=True)
            total = time.perf_counter() - t0
        finally:
            for w in workers.values():
                w.close()
            git("worktree", "remove", "--force", str(base))
    rows = [summarize(m, bs, pairs[(m, bs)], args) for m in args.methods for bs in args.batch_sizes]
    import torch

    result = {"kind": "engine_ab", "env": {"device": "cpu", "dtype": "float32", "threads": args.threads,
                                          "torch": torch.__version__, "git": head + (" (dirty)" if dirty else ""),
                                          "baseline_git": rev, "cpu": platform.processor() or platform.machine(),
                                          "python": platform.python_version()},
              "model": "embedded", "task": "arith",
              "command": "python benchmarks/engine_ab.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {"rounds": args.rounds, "total_time_s": total, "gen_length": args.gen_length,
                           "block_length": args.block_length, "n": args.n, "unit": args.unit,
                           "design": "paired units, ABBA order, persistent workers"}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0 if all(r["same_tokens"] for r in rows) else 1


def markdown(result: dict[str, Any]) -> str:
    st, env = result["settings"], result["env"]
    md = [f"### Engine throughput: this tree vs {env['baseline_git'][:10]}, embedded model, CPU, {env['threads']} thread(s)",
          "", f"gen {st['gen_length']}, block {st['block_length']}, {st['n']} prompts decoded {st['rounds']} times per "
          f"side and cell, in units of max({st['unit']}, batch) prompts; each unit runs on both sides back to back "
          "(a pair, alternating which goes first) in two long-lived worker processes. tok/s = response tokens "
          "(EOS padding excluded) / summed unit wall time. new / baseline: the ratio of the summed times, with its "
          "95 % bootstrap interval over pairs and the median of the per-pair ratios.", "",
          "| method | batch | pairs | baseline tok/s | new tok/s | new / baseline | 95 % interval | paired median "
          "| same tokens |", "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for r in result["rows"]:
        lo, hi = r["ci95"]
        md.append(f"| {r['method']} | {r['batch_size']} | {r['pairs']} | {r['baseline_tok_s']:.1f} | {r['new_tok_s']:.1f} | "
                  f"**{r['new_vs_baseline']:.3f}x** | {lo:.3f}-{hi:.3f} | {r['paired_median']:.3f}x | "
                  f"{'yes' if r['same_tokens'] else 'NO'} |")
    md += ["", f"Command: `{result['command']}` (git {env['git']}, torch {env['torch']}, "
           f"{st['total_time_s'] / 60:.0f} min).", ""]
    return "\n".join(md)


if __name__ == "__main__":
    raise SystemExit(main())
