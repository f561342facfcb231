"""Serving under open-loop load: ``dpad serve`` with the closed and the continuous scheduler, side by side.

A server process (``dpad serve``, the embedded model, 1 torch thread by default, the fast settings:
threshold 0.99, prefix cache, DPad W=128 k=4 a=2, early termination) receives requests at Poisson
arrival times (open loop: a request is sent at its time whatever the others are doing) for
``--duration`` seconds. Requests come in classes:

- ``fast``: the server's settings, ``max_tokens`` drawn from {64, 128, 192, 256};
- ``slow`` (``--slow-share`` of the requests): one token per step, the reference's way
  (``threshold: null, suffix: "full", early_termination: false, cache: "none"``, ``max_tokens`` 256).

Half of the requests stream (``--stream-share``), the others wait for the whole body. Per phase and
class: p50/p99 latency (send -> last byte), p50/p99 time to the first streamed block, completed
requests/s, response tokens/s (completion tokens, EOS padding excluded) and errors; per phase, the
mean rows per forward (the server's summed NFE / its batch forwards). Phases:

1. ``fast only`` at ``--rate`` (the baseline of the 2x bar);
2. ``mixed`` (with the slow class) at each ``--rates`` value (the latency-vs-load curve; ``--rate``
   is the scenario of the bar);
3. ``saturation``: fast only at ``--saturation-rate`` (more than the server completes): completed
   requests/s and tokens/s.

Each phase runs on both schedulers, one after the other, in alternating order; a fresh server per
phase and scheduler. Results: ``benchmarks/results/serve_load.{json,md,png}``.

    python benchmarks/serve_load.py --duration 60 --rates 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from load_test import pct  # the same percentile as the other load benchmark

ROOT = Path(__file__).resolve().parent.parent
MODEL = "dpad-embedded"
SERVER_FLAGS = ["--threshold", "0.99", "--suffix", "gaussian", "-W", "128", "-k", "4", "-a", "2",
                "--early-termination", "--cache", "prefix", "--block-length", "32"]
CLASSES: dict[str, dict[str, Any]] = {
    "fast": {"body": {}, "max_tokens": [64, 128, 192, 256]},
    "slow": {"body": {"threshold": None, "suffix": "full", "early_termination": False, "cache": "none"},
             "max_tokens": [256]},
}


class Server:
    """``dpad serve`` in a subprocess on a free port; ``url`` once it listens."""

    def __init__(self, scheduler: str, args: argparse.Namespace) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
        cmd = [sys.executable, "-m", "dpad.cli", "serve", "--port", "0", "--threads", str(args.threads),
               "--device", "cpu", "--scheduler", scheduler, "--max-batch-size", str(args.max_batch_size),
               "--max-queue", "100000", "--log-level", "warning", *SERVER_FLAGS]
        if scheduler == "continuous" and args.max_batch_tokens is not None:
            cmd += ["--max-batch-tokens", str(args.max_batch_tokens)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        m = re.search(r"on (http://[\d.]+:\d+)/v1", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.url = m.group(1)
        self.startup = line.strip()

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=30).text
        return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.split(" ")[0] == name)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_request(url: str, body: dict, stream: bool, timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    rec: dict[str, Any] = {"stream": stream, "ttfb": None}
    try:
        if stream:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
            tokens = 0
            with httpx.stream("POST", url + "/v1/completions", json=body, timeout=timeout) as r:
                rec["status"] = r.status_code
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    obj = json.loads(line[6:])
                    if "error" in obj:
                        rec["status"] = 500
                        continue
                    if obj.get("choices") and obj["choices"][0].get("text") and rec["ttfb"] is None:
                        rec["ttfb"] = time.monotonic() - t0
                    if obj.get("usage"):
                        tokens = obj["usage"]["completion_tokens"]
            rec["tokens"] = tokens
        else:
            r = httpx.post(url + "/v1/completions", json=body, timeout=timeout)
            rec["status"] = r.status_code
            rec["tokens"] = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0
    except httpx.HTTPError as e:
        rec["status"], rec["tokens"], rec["exc"] = -1, 0, type(e).__name__
    rec["latency"] = time.monotonic() - t0
    return rec


def run_phase(url: str, *, rate: float, duration: float, slow_share: float, stream_share: float, seed: int,
              prompts: list[str], timeout: float) -> tuple[list[dict[str, Any]], float]:
    """Poisson arrivals at ``rate`` for ``duration`` s; returns the records and the wall time until
    the last response."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        cls = "slow" if rng.random() < slow_share else "fast"
        spec = CLASSES[cls]
        body = {"model": MODEL, "prompt": rng.choice(prompts), "max_tokens": rng.choice(spec["max_tokens"]),
                "seed": rng.randrange(1 << 30), **spec["body"]}
        arrivals.append((t, cls, body, rng.random() < stream_share))
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def go(cls: str, body: dict, stream: bool, at: float) -> None:
        rec = one_request(url, body, stream, timeout)
        rec.update(cls=cls, sent=at, max_tokens=body["max_tokens"])
        with lock:
            records.append(rec)

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=512) as pool:
        for at, cls, body, stream in arrivals:
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(go, cls, body, stream, at)
    return records, time.monotonic() - start


def summarize(records: list[dict[str, Any]], wall: float, duration: float) -> dict[str, dict[str, Any]]:
    out = {}
    for cls in sorted({r["cls"] for r in records}):
        rs = [r for r in records if r["cls"] == cls]
        ok = [r for r in rs if r["status"] == 200]
        lat = [r["latency"] for r in ok]
        ttfb = [r["ttfb"] for r in ok if r["ttfb"] is not None]
        out[cls] = {"requests": len(rs), "completed": len(ok), "errors": len(rs) - len(ok),
                    "p50_s": pct(lat, 0.5), "p99_s": pct(lat, 0.99), "mean_s": sum(lat) / len(lat) if lat else None,
                    "ttfb_p50_s": pct(ttfb, 0.5), "ttfb_p99_s": pct(ttfb, 0.99),
                    "completed_per_s": len(ok) / wall, "tok_s": sum(r["tokens"] for r in ok) / wall}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=2.0, help="requests/s of the bar's scenario (default 2)")
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 2.0, 3.0],
                    help="request rates of the mixed latency-vs-load curve")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per phase (default 60)")
    ap.add_argument("--slow-share", type=float, default=0.1, help="share of one-token-per-step requests (0.1)")
    ap.add_argument("--stream-share", type=float, default=0.5, help="share of streaming requests (0.5)")
    ap.add_argument("--saturation-rate", type=float, default=20.0, help="fast-only arrival rate beyond capacity")
    ap.add_argument("--saturation-duration", type=float, default=30.0)
    ap.add_argument("--schedulers", nargs="+", default=["closed", "continuous"])
    ap.add_argument("--phases", nargs="+", default=["fast", "mixed", "saturation"],
                    choices=["fast", "mixed", "saturation"], help="phases to run (default: all three)")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--max-batch-tokens", type=int, default=None,
                    help="the continuous server's per-step token budget (default: dpad serve's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    from dpad.eval.env import git_revision
    from dpad.synthetic import arith

    prompts = [p.question for p in arith.generate("test", 200, args.seed)]
    phases = [("fast only", args.rate, 0.0, args.duration)] if "fast" in args.phases else []
    phases += [("mixed", r, args.slow_share, args.duration) for r in args.rates] if "mixed" in args.phases else []
    if "saturation" in args.phases:
        phases += [("saturation", args.saturation_rate, 0.0, args.saturation_duration)]
    rows = []
    t_all = time.perf_counter()
    for i, (name, rate, slow, duration) in enumerate(phases):
        order = args.schedulers if i % 2 == 0 else list(reversed(args.schedulers))
        for sched in order:
            srv = Server(sched, args)
            try:
                one_request(srv.url, {"model": MODEL, "prompt": prompts[0], "max_tokens": 64}, False, 120)  # warm-up
                nfe0, fw0 = srv.metric("dpad_nfe_total"), srv.metric("dpad_batch_forwards_total")
                recs, wall = run_phase(srv.url, rate=rate, duration=duration, slow_share=slow,
                                       stream_share=args.stream_share, seed=args.seed + i, prompts=prompts,
                                       timeout=args.timeout)
                nfe, fw = srv.metric("dpad_nfe_total") - nfe0, srv.metric("dpad_batch_forwards_total") - fw0
            finally:
                srv.stop()
            summary = summarize(recs, wall, duration)
            row = {"phase": name, "scheduler": sched, "rate": rate, "duration_s": duration, "slow_share": slow,
                   "wall_s": wall, "rows_per_forward": nfe / fw if fw else None, "classes": summary}
            rows.append(row)
            desc = "; ".join(f"{c}: n={s['completed']}/{s['requests']} p50 {s['p50_s'] or 0:.2f}s p99 {s['p99_s'] or 0:.2f}s "
                             f"{s['tok_s']:.0f} tok/s" for c, s in summary.items())
            print(f"{name:>10} {rate:5.1f}/s {sched:>10}: {desc}; rows/forward {row['rows_per_forward'] or 0:.2f}",
                  flush=True)
    import torch

    result = {"kind": "serve_load",
              "env": {"device": "cpu", "dtype": "float32", "threads": args.threads, "torch": torch.__version__,
                      "git": git_revision(ROOT), "cpu": platform.processor() or platform.machine(),
                      "cpu_count": os.cpu_count()},
              "model": "embedded", "task": "arith prompts",
              "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "settings": {"server_flags": SERVER_FLAGS, "max_batch_size": args.max_batch_size, "classes": CLASSES,
                           "stream_share": args.stream_share, "total_time_s": time.perf_counter() - t_all},
              "rows": rows}
    result["bars"] = bars(rows, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    plot(result, args.out.with_suffix(".png"))
    print(markdown(result))
    return 0


def bars(rows: list[dict], args: argparse.Namespace) -> list[dict[str, Any]]:
    def get(phase: str, sched: str, rate: float) -> dict | None:
        return next((r for r in rows if r["phase"] == phase and r["scheduler"] == sched and r["rate"] == rate), None)

    out = []
    for sched in args.schedulers:
        base, mixed = get("fast only", sched, args.rate), get("mixed", sched, args.rate)
        if base and mixed and "fast" in mixed["classes"]:
            ratio = mixed["classes"]["fast"]["p99_s"] / base["classes"]["fast"]["p99_s"]
            slow = mixed["classes"].get("slow", {}).get("p99_s")
            errors = sum(c["errors"] for r in rows if r["scheduler"] == sched for c in r["classes"].values())
            out.append({"scheduler": sched, "fast_p99_with_slow_vs_without": ratio, "slow_p99_s": slow,
                        "errors": errors, "met": ratio <= 2.0 and (slow is None or slow <= 18.0) and errors == 0})
    sat = {r["scheduler"]: r["classes"]["fast"] for r in rows if r["phase"] == "saturation"}
    if "closed" in sat and "continuous" in sat:
        out.append({"saturation_completed_per_s": {k: v["completed_per_s"] for k, v in sat.items()},
                    "saturation_tok_s": {k: v["tok_s"] for k, v in sat.items()},
                    "continuous_vs_closed_tok_s": sat["continuous"]["tok_s"] / sat["closed"]["tok_s"]})
    return out


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [f"### Serving under open-loop Poisson load: closed vs continuous batching ({env['cpu']}, "
             f"{env['threads']} torch thread(s), embedded model)", "",
             "Server: `dpad serve " + " ".join(result["settings"]["server_flags"]) +
             f" --max-batch-size {result['settings']['max_batch_size']}`. Classes: fast (the server's settings, max_tokens "
             "64-256) and slow (one token per step: threshold null, suffix full, no early termination, no cache, "
             f"max_tokens 256). {int(100 * result['settings']['stream_share'])} % of requests stream. Latency = send -> "
             "last byte; first block = first streamed text; rows/forward = summed NFE / batch forwards.", "",
             "| phase | rate (req/s) | scheduler | class | done/sent | p50 (s) | p99 (s) | first block p50 (s) | "
             "req/s | tok/s | errors | rows/forward |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    for r in result["rows"]:
        for c, s in r["classes"].items():
            lines.append(f"| {r['phase']} | {r['rate']:g} | {r['scheduler']} | {c} | {s['completed']}/{s['requests']} | "
                         f"{f(s['p50_s'])} | {f(s['p99_s'])} | {f(s['ttfb_p50_s'])} | {s['completed_per_s']:.2f} | "
                         f"{s['tok_s']:.0f} | {s['errors']} | {f(r['rows_per_forward'])} |")
    lines += ["", "Bars (the mixed scenario at the bar's rate):", ""]
    for b in result.get("bars", []):
        if "scheduler" in b:
            lines.append(f"- {b['scheduler']}: fast p99 with the slow class / without: "
                         f"{b['fast_p99_with_slow_vs_without']:.2f}x (bar <= 2x); slow p99 {f(b['slow_p99_s'])} s "
                         f"(bar <= 18 s); errors {b['errors']} -> {'met' if b['met'] else 'NOT met'}")
        else:
            lines.append(f"- saturation (fast only): tok/s continuous / closed = {b['continuous_vs_closed_tok_s']:.2f}x "
                         f"(completed/s {', '.join(f'{k} {v:.2f}' for k, v in b['saturation_completed_per_s'].items())})")
    lines += ["", f"Command: `{result['command']}` (git {env['git']}, torch {env['torch']}).", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = {"closed": "tab:red", "continuous": "tab:blue"}
    for sched in dict.fromkeys(r["scheduler"] for r in result["rows"]):
        rs = sorted((r for r in result["rows"] if r["phase"] == "mixed" and r["scheduler"] == sched),
                    key=lambda r: r["rate"])
        for cls, style in (("fast", "-o"), ("slow", "--s")):
            pts = [(r["rate"], r["classes"][cls]["p99_s"]) for r in rs if r["classes"].get(cls, {}).get("p99_s")]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, color=colors.get(sched), label=f"{sched}: {cls} p99")
    ax.set_yscale("log")
    ax.set_xlabel("offered load (requests / s, Poisson; 10 % slow)")
    ax.set_ylabel("p99 latency (s, log)")
    ax.set_title("dpad serve, embedded model: latency vs load")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
