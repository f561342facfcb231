"""GPU measurement of the compiled fast path (one command; nothing downloads).

1. ``forward``: an LLaDA-8B-shaped model (the official LLaDA-8B config dimensions: d_model 4096,
   32 layers, 32 heads, MLP 12288, vocab 126464; random weights made on the device, bf16):
   per-forward latency of the full canvas (prompt + gen, what vanilla runs) and of the DPad view
   (prompt + block + ~32 kept suffix tokens: the block-start refresh, and the cached step over
   block + suffix) at gen 256 / 1024 / 2048, eager vs compiled (torch.compile inductor,
   ``mode="reduce-overhead"`` = CUDA graphs, 64-token buckets, static KV buffers).
2. ``throughput``: the embedded model, parallel+prefix+dpad at gen 256, batch 1 / 16 / 64,
   eager vs compiled: response tokens per second of one batched decode (after a warm-up decode),
   and whether compiled decodes the same tokens as eager.

Writes ``$OUT/forward_gpu.{json,md}`` and ``$OUT/throughput_gpu_compiled.{json,md}`` (``--out``,
default ``$OUT`` or ``benchmarks/results``). A time budget (``--budget-s``, default 480) stops
adding measurements and writes what it has.

    python benchmarks/gpu_bench.py --out "$OUT"

``--smoke`` runs the same code on the CPU at toy sizes (a 2-layer model, gen 64/128, batches 1/2,
float64, the bucketed static-KV path traced by dynamo with the ``eager`` backend instead of
inductor + CUDA graphs), so the script is tested before a GPU is lent (``tests/test_gpu_bench.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

LLADA_8B = {"d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288,
            "vocab_size": 126464, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_sequence_length": 4096}
PROMPT, BLOCK, KEPT = 128, 32, 32
T0 = time.perf_counter()


class Plan:
    """What one run measures (the GPU plan; :meth:`smoke` shrinks it for a CPU check of the script)."""

    shape: dict[str, Any] = LLADA_8B
    gen_lengths: tuple[int, ...] = (256, 1024, 2048)
    batches: tuple[int, ...] = (1, 16, 64)
    throughput_gen: int = 256
    dtype: torch.dtype = torch.bfloat16
    compile: dict[str, Any] = {"mode": "reduce-overhead", "bucket": 64}

    @classmethod
    def smoke(cls) -> None:
        cls.shape = {**LLADA_8B, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4,
                     "mlp_hidden_size": 128, "vocab_size": 2000}
        cls.gen_lengths, cls.batches, cls.throughput_gen = (64, 128), (1, 2), 64
        cls.dtype = torch.float64
        cls.compile = {"mode": "reduce-overhead", "bucket": 16, "backend": "eager"}


def left(budget: float) -> float:
    return budget - (time.perf_counter() - T0)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Any, reps: int) -> float:
    """Median seconds of ``reps`` calls (after two untimed ones)."""
    fn()
    fn()
    sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def big_model(dev: torch.device, dtype: torch.dtype) -> Any:
    from dpad.models.layers import ModelArgs, Transformer

    c = Plan.shape
    args = ModelArgs(arch="llada", vocab_size=c["vocab_size"], dim=c["d_model"], n_layers=c["n_layers"],
                     n_heads=c["n_heads"], n_kv_heads=c["n_kv_heads"], hidden_dim=c["mlp_hidden_size"],
                     rope_theta=c["rope_theta"], norm_eps=c["rms_norm_eps"], max_seq_len=c["max_sequence_length"],
                     mask_token_id=c["vocab_size"] - 128, eos_token_id=c["vocab_size"] - 383)
    with torch.device("meta"):
        m = Transformer(args)
    m = m.to_empty(device=dev)
    g = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    m = m.to(dtype)
    m.rotary = type(m.rotary)(args.head_dim, args.rope_theta, True, args.max_seq_len).to(dev)
    m.eval().requires_grad_(False)
    m.fuse_projections()
    return m


def forward_bench(dev: torch.device, budget: float, reps: int) -> dict[str, Any]:
    from dpad.models.compiled import CompiledForward

    model = big_model(dev, Plan.dtype)
    rows: list[dict[str, Any]] = []
    view = PROMPT + BLOCK + KEPT

    def shapes(G: int) -> list[tuple[str, Any]]:
        full_ids = torch.randint(0, Plan.shape["vocab_size"] - 500, (1, PROMPT + G), device=dev)
        v_ids = torch.randint(0, Plan.shape["vocab_size"] - 500, (1, view), device=dev)

        def full() -> Any:
            return model(full_ids, logits_range=(PROMPT, PROMPT + BLOCK))

        def refresh() -> Any:
            c = model.new_cache(1, view)
            return model(v_ids, cache=c, cache_start=0, logits_range=(PROMPT, PROMPT + BLOCK))

        cache = model.new_cache(1, view)
        model(v_ids, cache=cache, cache_start=0, logits_range=(PROMPT, PROMPT + BLOCK))

        def step() -> Any:
            return model(v_ids[:, PROMPT:], cache=cache, cache_start=PROMPT, logits_range=(0, BLOCK))

        return [("full canvas (vanilla)", full, PROMPT + G), ("dpad view refresh", refresh, view),
                ("dpad cached step", step, view - PROMPT)]

    with torch.no_grad():
        for mode in ("eager", "compiled"):
            if mode == "compiled":
                model.compiled = CompiledForward(model, **Plan.compile)
            for G in Plan.gen_lengths:
                for kind, fn, T in shapes(G):
                    if left(budget) < 30:
                        break
                    t_first = time.perf_counter()
                    fn()
                    sync()
                    first = time.perf_counter() - t_first
                    lat = timed(fn, reps)
                    rows.append({"mode": mode, "gen_length": G, "forward": kind, "tokens": T,
                                 "latency_ms": lat * 1e3, "first_call_s": first})
                    print(f"[gpu_bench] forward {mode} gen {G} {kind} T={T}: {lat * 1e3:.2f} ms "
                          f"(first call {first:.1f} s)", file=sys.stderr, flush=True)
        stats = model.compiled.stats() if model.compiled is not None else None
    eager = {(r["gen_length"], r["forward"]): r["latency_ms"] for r in rows if r["mode"] == "eager"}
    for r in rows:
        if r["mode"] == "compiled" and (r["gen_length"], r["forward"]) in eager:
            r["compiled_vs_eager"] = r["latency_ms"] / eager[(r["gen_length"], r["forward"])]
    return {"rows": rows, "compile": stats, "config": Plan.shape, "prompt": PROMPT, "block": BLOCK, "kept": KEPT}


def throughput_bench(dev: torch.device, budget: float) -> dict[str, Any]:
    import dpad
    from dpad.engine import decode_batch
    from dpad.eval.methods import resolve_config
    from dpad.eval.tasks import get_task

    task = get_task("arith")
    _, cfg = resolve_config("parallel+prefix+dpad-threshold0.9", family="embedded", task="arith",
                            overrides={"gen_length": Plan.throughput_gen})
    dtype = str(Plan.dtype).removeprefix("torch.")
    eager = dpad.load(None, device=dev, dtype=dtype)
    samples = task.samples(max(Plan.batches))
    from dpad.api import encode_prompt

    ids = [encode_prompt(eager, s.prompt, task.chat) for s in samples]
    rows: list[dict[str, Any]] = []
    outs: dict[tuple[str, int], list[list[int]]] = {}
    comp = None
    for mode in ("eager", "compiled"):
        if mode == "compiled":
            if left(budget) < 60:
                break
            t = time.perf_counter()
            comp = dpad.load(None, device=dev, dtype=dtype, compile=Plan.compile if dev.type == "cpu" else True)
            load_s = time.perf_counter() - t
        lm = eager if mode == "eager" else comp
        for B in Plan.batches:
            if left(budget) < 20:
                break
            batch = ids[:B]
            decode_batch(lm.model, batch, cfg, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id)  # warm-up
            sync()
            t = time.perf_counter()
            res = decode_batch(lm.model, batch, cfg, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id)
            sync()
            dt = time.perf_counter() - t
            toks = sum(r.response_length for r in res)
            outs[(mode, B)] = [r.generated for r in res]
            rows.append({"mode": mode, "batch": B, "latency_s": dt, "response_tokens": toks, "tok_s": toks / dt,
                         "nfe": res[0].batch_forwards})
            print(f"[gpu_bench] throughput {mode} batch {B}: {toks / dt:.0f} tok/s ({dt:.3f} s)",
                  file=sys.stderr, flush=True)
    base = {r["mode"]: r["tok_s"] for r in rows if r["batch"] == 1}
    for r in rows:
        r["vs_batch1"] = r["tok_s"] / base[r["mode"]] if r["mode"] in base else None
        if r["mode"] == "compiled" and ("eager", r["batch"]) in outs:
            r["same_tokens_as_eager"] = outs[("compiled", r["batch"])] == outs[("eager", r["batch"])]
    return {"rows": rows, "compile": comp.model.compiled.stats() if comp is not None else None,
            "compiled_load_s": load_s if comp is not None else None, "method": "parallel+prefix+dpad-threshold0.9",
            "gen_length": Plan.throughput_gen}


def _describe(opts: dict[str, Any]) -> str:
    backend = opts.get("backend", "inductor")
    graphs = " (CUDA graphs)" if opts.get("mode") == "reduce-overhead" and backend == "inductor" else ""
    return f"{backend}, mode {opts.get('mode')}{graphs}, {opts.get('bucket')}-token buckets"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--budget-s", type=float, default=480.0)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--skip", nargs="*", default=[], choices=["forward", "throughput"])
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks the script, measures nothing")
    ns = ap.parse_args()
    if ns.smoke:
        Plan.smoke()
    elif not torch.cuda.is_available():
        print("gpu_bench: no CUDA device (--smoke checks the script on the CPU)", file=sys.stderr)
        return 2
    from dpad.eval.env import collect_env, command_line

    dev = torch.device("cpu" if ns.smoke else "cuda")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    env = collect_env(dev, Plan.dtype)
    if ns.smoke:
        env["smoke"] = "toy sizes on the CPU: a check of the script, not a measurement"
    cmd = "python " + command_line()
    if "forward" not in ns.skip:
        try:
            f = forward_bench(dev, ns.budget_s * 0.6, ns.reps)
        except Exception as e:  # noqa: BLE001 - keep going, record the failure
            f = {"rows": [], "error": f"{type(e).__name__}: {e}"}
        dname = str(Plan.dtype).removeprefix("torch.")
        res = {"kind": "forward_gpu", "env": env, "model": f"llada-8b-shaped (random {dname} weights)"
               + (" (smoke: toy sizes)" if ns.smoke else ""),
               "command": cmd, **f}
        (out / "forward_gpu.json").write_text(json.dumps(res, indent=1) + "\n")
        md = [f"### Per-forward latency, LLaDA-8B-shaped model ({dname}, random weights)", "",
              f"{env.get('gpu') or env.get('cpu')}, torch {env['torch']}. Compiled: torch.compile "
              f"{_describe(Plan.compile)}. Prompt {PROMPT}, block {BLOCK}, ~{KEPT} kept suffix tokens."
              + (f" **{env['smoke']}.**" if ns.smoke else ""), "",
              "| gen | forward | tokens | eager (ms) | compiled (ms) | compiled / eager |", "|---:|---|---:|---:|---:|---:|"]
        by = {(r["gen_length"], r["forward"], r["mode"]): r for r in f["rows"]}
        for (G, kind, mode), r in by.items():
            if mode != "eager":
                continue
            c = by.get((G, kind, "compiled"))
            md.append(f"| {G} | {kind} | {r['tokens']} | {r['latency_ms']:.2f} | "
                      f"{c['latency_ms'] if c else float('nan'):.2f} | "
                      f"{c['compiled_vs_eager'] if c else float('nan'):.2f} |")
        md += ["", f"Compile: {json.dumps(f.get('compile'))}", "", f"Command: `{cmd}`", ""]
        (out / "forward_gpu.md").write_text("\n".join(md))
    if "throughput" not in ns.skip:
        try:
            torch.cuda.empty_cache()
            t = throughput_bench(dev, ns.budget_s)
        except Exception as e:  # noqa: BLE001
            t = {"rows": [], "error": f"{type(e).__name__}: {e}"}
        res = {"kind": "throughput_gpu_compiled", "env": env, "model": "embedded", "task": "arith",
               "command": cmd, **t}
        (out / "throughput_gpu_compiled.json").write_text(json.dumps(res, indent=1) + "\n")
        md = [f"### Embedded model batched throughput, eager vs compiled ({str(Plan.dtype).removeprefix('torch.')})", "",
              f"{env.get('gpu') or env.get('cpu')}, torch {env['torch']}; parallel+prefix+dpad-threshold0.9 at gen "
              f"{Plan.throughput_gen}; compiled: " + ("dpad.load(compile=True)" if not ns.smoke else
                                                    f"torch.compile {_describe(Plan.compile)}")
              + (f". **{env['smoke']}.**" if ns.smoke else "."), "",
              "| mode | batch | latency (s) | tok/s | vs batch 1 | same tokens as eager |",
              "|---|---:|---:|---:|---:|---|"]
        for r in t["rows"]:
            md.append(f"| {r['mode']} | {r['batch']} | {r['latency_s']:.3f} | {r['tok_s']:.0f} | "
                      f"{(r['vs_batch1'] or float('nan')):.2f} | {r.get('same_tokens_as_eager', '-')} |")
        md += ["", f"Compile: {json.dumps(t.get('compile'))}", "", f"Command: `{cmd}`", ""]
        (out / "throughput_gpu_compiled.md").write_text("\n".join(md))
    print(f"gpu_bench: wrote {out} in {time.perf_counter() - T0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
