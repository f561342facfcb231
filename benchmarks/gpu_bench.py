"""GPU measurement of the compiled fast path (nothing downloads), in two parts that together fit one
H100 in under 8 minutes.

On one H100, two invocations (at most 230 + 25 s and 160 + 25 s, counted from process start):

    python benchmarks/gpu_bench.py --part forward --out "$OUT"
    python benchmarks/gpu_bench.py --part throughput --out "$OUT"

(``--part all``, the default, runs both in one process with the sum of the two budgets.) Writes
``forward_gpu.{json,md}`` and ``throughput_gpu_compiled.{json,md}`` under ``--out`` (default ``$OUT``
or ``benchmarks/results``).

``--part forward`` (budget 230 s): per-forward latency of an LLaDA-8B-shaped model (the official
LLaDA-8B config dimensions: d_model 4096, 32 layers, 32 heads, MLP 12288, vocab 126464; random
weights allocated once, directly in bf16 on the device: 16 GB, no float32 copy), eager vs compiled
(``dpad.models.compiled.compile_model`` with dpad's CUDA defaults: torch.compile inductor,
``mode="reduce-overhead"`` = CUDA graphs, 64-token buckets), on the shapes a decode runs, with a
150-token prompt (not a bucket multiple), block 32 and 27 kept suffix tokens, at gen 256 / 1024 / 2048:

- full canvas (vanilla): prompt + gen;
- DPad refresh of the view half-way through the decode: prefix (prompt + gen/2) + block + kept;
- cached steps over that view: prefix cache (block + kept = 59 tokens), dual cache (block = 32) and
  Dream's dual-cache step (block + 1 = 33: its logits are shifted by one position), at batch 1, and
  the first two at batch 16;

so compiled rows pay their padding (59, 32 and 33 tokens all run as 64; keys as a multiple of 64
plus 64 scratch slots) and the table shows what it costs. Every call is timed after two untimed ones
(CUDA graphs recorded by then). Eager runs every shape first; compiled then runs them gen length by
gen length, DPad's batch-1 steps first (one shared graph), then its refresh, the batch-16 steps and
vanilla's canvas, so that what the budget cuts is the least needed. Also recorded: the SDPA kernel
torch picks on this machine for these attention shapes with and without a key mask
(docs/performance.md), and CUDA-graph skips (inductor's counter).

``--part throughput`` (budget 160 s): the embedded model through the engine,
parallel+prefix+dpad-threshold0.9 at gen 256, batch 1 / 16 / 64, eager vs compiled (bf16): response
tokens per second of one batched decode timed after two warm-up decodes (so every graph is compiled
and recorded before it; each row says how many graphs the timed decode still compiled: 0 expected),
and how many of compiled's tokens equal eager's in bf16 (a mismatch can be legitimate there: padding
and batching change the rounding). The token check that must hold is in float32, at batch 16: eager
vs two compiled decodes (the second replays recorded graphs only); it runs right after the compiled
batch-1 row.

Budget (``--budget-s``, counted from the start of the process): a measurement starts only while
budget is left, and every compile only if at least as long as the last compile took (before any:
``--compile-guess-s``, 90 s for the 8B model, 30 s for the embedded one) is left: a dynamo
compile-start hook refuses the others, including those a decode triggers on its own, and their rows
are recorded as skipped. Results are written after every row; an exception in a row or a part is
recorded next to the rows already measured (exit status 1); a watchdog writes what was measured and
exits (status 3) at budget + ``--grace-s`` (25 s). ``--gen-lengths`` picks the forward part's gen
lengths (e.g. a second forward invocation for the shapes the first one had to skip).

``--smoke`` runs the same code on the CPU at toy sizes (a 2-layer model, gen 128/192, batches 1/2,
float64, the bucketed path traced by dynamo with the ``eager`` backend instead of inductor + CUDA
graphs, 16-token buckets), so the script is tested before a GPU is lent (``tests/test_gpu_bench.py``).
"""

# ruff: noqa: E402 (the clock starts before the imports)
from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget counts the whole process, imports and model set-up included

import argparse
import json
import math
import os
import statistics
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dpad.models.compiled import compile_model, default_options, round_up

LLADA_8B = {"d_model": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "mlp_hidden_size": 12288,
            "vocab_size": 126464, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_sequence_length": 4096}
PROMPT, BLOCK, KEPT = 150, 32, 27
METHOD = "parallel+prefix+dpad-threshold0.9"
PARTS = ("forward", "throughput")


class Plan:
    """What one run measures (the GPU plan; :meth:`smoke` shrinks it for a CPU check of the script)."""

    shape: dict[str, Any] = LLADA_8B
    gen_lengths: tuple[int, ...] = (256, 1024, 2048)
    step_batch: int = 16
    batches: tuple[int, ...] = (1, 16, 64)
    check_batch: int = 16
    throughput_gen: int = 256
    dtype: torch.dtype = torch.bfloat16
    check_dtype: torch.dtype = torch.float32
    compile: dict[str, Any] | None = None  # None: dpad's defaults for the device (default_options)
    compile_guess_s: dict[str, float] = {"forward": 90.0, "throughput": 30.0}  # before a compile was seen
    budgets: dict[str, float] = {"forward": 230.0, "throughput": 160.0}
    min_left_s: float = 10.0

    @classmethod
    def smoke(cls) -> None:
        cls.shape = {**LLADA_8B, "d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4,
                     "mlp_hidden_size": 128, "vocab_size": 2000}
        cls.gen_lengths, cls.step_batch, cls.batches, cls.check_batch = (128, 192), 2, (1, 2), 2
        cls.throughput_gen = 64
        cls.dtype = cls.check_dtype = torch.float64
        cls.compile = {"mode": "reduce-overhead", "bucket": 16, "backend": "eager"}
        cls.compile_guess_s = {"forward": 0.0, "throughput": 0.0}
        cls.budgets = {"forward": 300.0, "throughput": 300.0}
        cls.min_left_s = 1.0


def dname(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cudagraph_skips() -> int:
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["cudagraph_skips"])


def error_text(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}"[:600] + " | " + "".join(tb[-3:])[-1200:]


# ---------------------------------------------------------------------------------- budget
class Clock:
    """The deadline of the part running now (seconds since the process started)."""

    def __init__(self) -> None:
        self.deadline = math.inf

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - T0)


class CompileRefused(RuntimeError):
    pass


class CompileGuard:
    """A dynamo compile-start hook: a compile starts only if as long as the last compile took
    (before any: ``expected``, the guess) is left of the budget; otherwise it raises (inside dynamo,
    before tracing) and is counted. Its end hook records every compile's duration."""

    def __init__(self, clock: Clock, guess: float) -> None:
        self.clock, self.expected = clock, guess
        self.refused = 0
        self.compiles: list[float] = []
        self.installed = False
        self._t: float | None = None

    def install(self) -> None:
        """(Again after ``torch._dynamo.reset()``, which drops the hooks.)"""
        handler = getattr(torch._dynamo, "callback_handler", None)
        if handler is None:  # an older torch: the per-measurement budget checks still apply
            return
        self.uninstall()
        handler.register_start_callback(self._start)
        handler.register_end_callback(self._end)
        self.installed = True

    def uninstall(self) -> None:
        handler = getattr(torch._dynamo, "callback_handler", None)
        if handler is not None:
            for cbs, fn in ((getattr(handler, "start_callbacks", []), self._start),
                            (getattr(handler, "end_callbacks", []), self._end)):
                while fn in cbs:
                    cbs.remove(fn)

    @staticmethod
    def _dynamo(args: tuple) -> bool:
        trig = getattr(args[0], "callback_trigger", None) if args else None
        return trig is None or getattr(trig, "name", "DYNAMO") == "DYNAMO"  # not CUDA-graph recording

    def _start(self, *args: Any, **_: Any) -> None:
        if not self._dynamo(args):
            return
        left = self.clock.left()
        if left < self.expected:
            self.refused += 1
            raise CompileRefused(f"a compile would not end within the budget (expected {self.expected:.0f} s, "
                                 f"{left:.0f} s left)")
        self._t = time.perf_counter()

    def _end(self, *args: Any, **_: Any) -> None:
        if self._t is None or not self._dynamo(args):
            return
        dt, self._t = time.perf_counter() - self._t, None
        self.compiles.append(round(dt, 3))
        self.expected = dt

    def reset(self, expected: float) -> None:
        self.expected, self.refused, self.compiles = expected, 0, []

    def summary(self) -> dict[str, Any]:
        return {"installed": self.installed, "compiles_s": self.compiles, "refused": self.refused,
                "expected_s": round(self.expected, 3)}


def budget_skip(clock: Clock) -> dict[str, Any] | None:
    left = clock.left()
    return {"skipped": f"budget: {left:.0f} s left"} if left < Plan.min_left_s else None


# ---------------------------------------------------------------------------------- results
class Results:
    """One result file pair (JSON + Markdown), rewritten after every row."""

    def __init__(self, out: Path, stem: str, data: dict[str, Any], render: Callable[[dict], list[str]]) -> None:
        self.json_path, self.md_path = out / f"{stem}.json", out / f"{stem}.md"
        self.data, self.render = data, render
        self.lock = threading.RLock()

    def add(self, key: str, row: dict[str, Any]) -> None:
        with self.lock:
            self.data.setdefault(key, []).append(row)
            self.write()

    def set(self, **kw: Any) -> None:
        with self.lock:
            self.data.update(kw)
            self.write()

    def error(self, msg: str) -> None:
        with self.lock:
            self.data["error"] = (self.data["error"] + " || " if self.data.get("error") else "") + msg
            self.write()

    def write(self) -> None:
        with self.lock:
            self.data["elapsed_s"] = round(time.perf_counter() - T0, 1)
            snap = json.loads(json.dumps(self.data, default=str))
            self.json_path.write_text(json.dumps(snap, indent=1) + "\n")
            self.md_path.write_text("\n".join(self.render(snap)) + "\n")


ACTIVE: list[Results] = []


def start_watchdog(at: float) -> threading.Timer:
    def fire() -> None:
        for r in ACTIVE:
            r.error(f"watchdog: stopped at {time.perf_counter() - T0:.0f} s (budget + grace {at:.0f} s); "
                    "the rows above were measured, the others were not reached")
        print(f"gpu_bench: watchdog stopped the run at {at:.0f} s; partial results written", file=sys.stderr, flush=True)
        os._exit(3)

    t = threading.Timer(max(0.0, at - (time.perf_counter() - T0)), fire)
    t.daemon = True
    t.start()
    return t


def log(msg: str) -> None:
    print(f"[gpu_bench {time.perf_counter() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- part 1: forward
def big_model(dev: torch.device, dtype: torch.dtype) -> Any:
    """The LLaDA-8B-shaped model with random weights, allocated once, directly in ``dtype``."""
    from dpad.models.layers import ModelArgs, Rotary, Transformer

    c = Plan.shape
    args = ModelArgs(arch="llada", vocab_size=c["vocab_size"], dim=c["d_model"], n_layers=c["n_layers"],
                     n_heads=c["n_heads"], n_kv_heads=c["n_kv_heads"], hidden_dim=c["mlp_hidden_size"],
                     rope_theta=c["rope_theta"], norm_eps=c["rms_norm_eps"], max_seq_len=c["max_sequence_length"],
                     mask_token_id=c["vocab_size"] - 128, eos_token_id=c["vocab_size"] - 383)
    with torch.device("meta"):
        m = Transformer(args)
    m = m.to(dtype).to_empty(device=dev)  # the cast is on meta tensors: nothing is allocated before this
    g = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    # the float32 rotary tables, built for real (to_empty left them uninitialised)
    m.rotary = Rotary(args.head_dim, args.rope_theta, args.rope_full_precision, args.max_seq_len).to(dev)
    m.eval().requires_grad_(False)
    m.fuse_projections()
    return m


SHAPES = ("full canvas (vanilla)", "dpad refresh (view at half-way)", "prefix-cache step (block + kept)",
          "dual-cache step (block)", "dream dual-cache step (block + 1)")
COMPILED_ORDER = ((2, 1), (3, 1), (4, 1), (1, 1), (2, "B"), (3, "B"), (0, 1))
"""The compiled pass's priority within a gen length (shape index, batch): DPad's cached steps at
batch 1 first (they share one padded graph), then its refresh, the steps at batch 16, vanilla."""


def forward_shapes(model: Any, dev: torch.device, G: int) -> list[dict[str, Any]]:
    """The forwards of a decode at gen ``G``: each a dict with its name, batch, fed tokens, keys and
    ``make()`` (allocates its inputs and KV cache, returns the call)."""
    V_ = Plan.shape["vocab_size"] - 500
    gen = torch.Generator().manual_seed(G)
    full_ids = torch.randint(0, V_, (1, PROMPT + G), generator=gen).to(dev)
    prefix = PROMPT + (G // BLOCK // 2) * BLOCK
    suffix = torch.arange(prefix + BLOCK, PROMPT + G)
    kept = min(KEPT, len(suffix))
    kpos = suffix[: 2 * kept: 2] if len(suffix) >= 2 * kept else suffix[:kept]  # DPad keeps positions near the block
    vpos1 = torch.cat([torch.arange(prefix + BLOCK), kpos])[None].to(dev)
    vids1 = torch.randint(0, V_, vpos1.shape, generator=gen).to(dev)
    V = vpos1.shape[1]

    def call(B: int, start: int, end: int | None, rows: tuple[int, int]) -> Callable[[], Callable[[], Any]]:
        def make() -> Callable[[], Any]:
            ids, pos = vids1.expand(B, -1)[:, start:end].contiguous(), vpos1.expand(B, -1)[:, start:end].contiguous()
            cache = model.new_cache(B, V)  # zeros: the step's cost does not depend on the K/V values
            return lambda: model(ids, pos, cache=cache, cache_start=start, logits_range=rows)
        return make

    def full() -> Callable[[], Any]:
        return lambda: model(full_ids, logits_range=(PROMPT, PROMPT + BLOCK))

    B = Plan.step_batch
    out = [
        (0, 1, PROMPT + G, PROMPT + G, full),
        (1, 1, V, V, call(1, 0, None, (prefix, prefix + BLOCK))),
        (2, 1, V - prefix, V, call(1, prefix, None, (0, BLOCK))),
        (3, 1, BLOCK, V, call(1, prefix, prefix + BLOCK, (0, BLOCK))),
        (4, 1, BLOCK + 1, V, call(1, prefix - 1, prefix + BLOCK, (0, BLOCK))),
        (2, B, V - prefix, V, call(B, prefix, None, (0, BLOCK))),
        (3, B, BLOCK, V, call(B, prefix, prefix + BLOCK, (0, BLOCK))),
    ]
    return [{"shape": i, "forward": SHAPES[i], "batch": b, "tokens": t, "keys": k, "make": mk} for i, b, t, k, mk in out]


def timed(fn: Callable[[], Any], reps: int, dev: torch.device) -> float:
    """Median seconds of ``reps`` calls, after two untimed ones (CUDA graphs: recorded by then)."""
    fn()
    fn()
    sync(dev)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def sdpa_choices(dev: torch.device, dtype: torch.dtype) -> list[dict[str, Any]]:
    """The kernel SDPA dispatches to on this device for the compiled path's attention shapes, with
    and without a key mask, for LLaDA-8B's heads and Dream-7B's grouped K/V heads."""
    from torch.nn.attention import SDPBackend

    names = {int(getattr(SDPBackend, n)): n.lower() for n in dir(SDPBackend) if n.isupper()}
    hd = Plan.shape["d_model"] // Plan.shape["n_heads"]
    out = []
    for model_heads, H, Hk in (("LLaDA-8B: 32 heads, 32 K/V heads", 32, 32), ("Dream-7B: 28 heads, 4 K/V heads", 28, 4)):
        for what, T, S in (("cached step", 64, 448), ("refresh / full", 448, 448)):
            for masked in (False, True):
                q = torch.zeros((1, H, T, hd), dtype=dtype, device=dev)
                k = torch.zeros((1, Hk, S, hd), dtype=dtype, device=dev)
                m = torch.ones((1, 1, 1, S), dtype=torch.bool, device=dev) if masked else None
                try:
                    c = torch._fused_sdp_choice(q, k, k, attn_mask=m, enable_gqa=H != Hk)
                    kernel = names.get(int(c), str(c))
                except Exception as e:  # noqa: BLE001 - an older torch: record why
                    kernel = f"unknown ({type(e).__name__}: {e})"[:200]
                out.append({"heads": model_heads, "shape": f"{what}: {T} queries x {S} keys", "key_mask": masked,
                            "kernel": kernel})
    return out


def forward_part(dev: torch.device, res: Results, clock: Clock, guard: CompileGuard, reps: int) -> Any:
    try:
        res.set(sdpa=sdpa_choices(dev, Plan.dtype))
    except Exception as e:  # noqa: BLE001
        res.error(f"sdpa probe: {error_text(e)}")
    model = big_model(dev, Plan.dtype)
    log(f"8B-shaped model ready ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    opts = Plan.compile or default_options(dev)
    res.set(compile_options=opts)
    bucket = opts.get("bucket")
    with torch.no_grad():
        for G in Plan.gen_lengths:  # eager: every shape
            for s in forward_shapes(model, dev, G):
                row = {"mode": "eager", "gen_length": G, "forward": s["forward"], "batch": s["batch"],
                       "tokens": s["tokens"], "keys": s["keys"]}
                skip = budget_skip(clock)
                if skip:
                    res.add("rows", {**row, **skip})
                    continue
                try:
                    fn = s["make"]()
                    t = time.perf_counter()
                    fn()
                    sync(dev)
                    first = time.perf_counter() - t
                    lat = timed(fn, reps, dev)
                    res.add("rows", {**row, "latency_ms": lat * 1e3, "first_call_s": first})
                    log(f"forward eager gen {G} {s['forward']} x{s['batch']}: {lat * 1e3:.2f} ms")
                except Exception as e:  # noqa: BLE001
                    res.add("rows", {**row, "error": error_text(e)})
                    log(f"forward eager gen {G} {s['forward']} x{s['batch']}: {type(e).__name__}: {e}")
                finally:
                    fn = None
        compile_model(model, **opts, verbose=False)
        comp = model.compiled
        for G in Plan.gen_lengths:  # compiled, in priority order (see COMPILED_ORDER)
            shapes = {(s["shape"], s["batch"]): s for s in forward_shapes(model, dev, G)}
            for i, b in COMPILED_ORDER:
                s = shapes[(i, Plan.step_batch if b == "B" else b)]
                row = {"mode": "compiled", "gen_length": G, "forward": s["forward"], "batch": s["batch"],
                       "tokens": s["tokens"], "keys": s["keys"], "padded_tokens": round_up(s["tokens"], bucket) if bucket else None,
                       "padded_keys": round_up(s["keys"], bucket) + (0 if i == 0 else bucket) if bucket else None}
                skip = budget_skip(clock)
                if skip:
                    res.add("rows", {**row, **skip})
                    continue
                g0, c0, r0, k0 = comp.graphs, comp.compile_time_s, guard.refused, cudagraph_skips()
                try:
                    fn = s["make"]()
                    t = time.perf_counter()
                    fn()
                    sync(dev)
                    first = time.perf_counter() - t
                    lat = timed(fn, reps, dev)
                    res.add("rows", {**row, "latency_ms": lat * 1e3, "first_call_s": first, "graphs": comp.graphs - g0,
                                     "compile_s": round(comp.compile_time_s - c0, 3), "cudagraph_skips": cudagraph_skips() - k0})
                    log(f"forward compiled gen {G} {s['forward']} x{s['batch']}: {lat * 1e3:.2f} ms "
                        f"(first call {first:.1f} s, {comp.graphs - g0} new graphs)")
                except Exception as e:  # noqa: BLE001
                    why = {"skipped": str(guard_reason(e))} if guard.refused > r0 else {"error": error_text(e)}
                    res.add("rows", {**row, **why})
                    log(f"forward compiled gen {G} {s['forward']} x{s['batch']}: {next(iter(why.values()))[:200]}")
                finally:
                    fn = None
                res.set(compile=comp.stats(), compile_guard=guard.summary())
    return model


def guard_reason(e: BaseException) -> str:
    """The refusal's own message (dynamo wraps the hook's exception)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, CompileRefused):
            return f"compile refused: {e}"
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return "compile refused: it would not end within the budget"


def render_forward(d: dict[str, Any]) -> list[str]:
    env = d["env"]
    dt = d["dtype"]
    md = [f"### Per-forward latency, LLaDA-8B-shaped model ({dt}, random weights)", "",
          f"{env.get('gpu') or env.get('cpu')}, torch {env['torch']}. Compiled: "
          f"`compile_model(model, **{json.dumps(d.get('compile_options'))})`. Prompt {PROMPT}, block {BLOCK}, "
          f"{KEPT} kept suffix tokens; the DPad view is the one half-way through the decode (prefix = prompt + gen/2). "
          "Tokens / keys: what eager runs (compiled: padded to)."
          + (f" **{env['smoke']}.**" if env.get("smoke") else ""), "",
          "| gen | forward | batch | tokens | keys | eager (ms) | compiled (ms) | compiled / eager | compiled: first call (s), graphs |",
          "|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    rows = d.get("rows", [])
    comp = {(r["gen_length"], r["forward"], r["batch"]): r for r in rows if r["mode"] == "compiled"}
    order = {name: i for i, name in enumerate(SHAPES)}

    def cell(r: dict[str, Any] | None) -> str:
        if r is None:
            return "not reached"
        if "latency_ms" in r:
            return f"{r['latency_ms']:.2f}"
        return "skipped" if "skipped" in r else "error"

    for r in sorted((r for r in rows if r["mode"] == "eager"),
                    key=lambda r: (r["gen_length"], r["batch"] != 1, order.get(r["forward"], 9))):
        c = comp.get((r["gen_length"], r["forward"], r["batch"]))
        tok = f"{r['tokens']}" + (f" ({c['padded_tokens']})" if c and c.get("padded_tokens") else "")
        keys = f"{r['keys']}" + (f" ({c['padded_keys']})" if c and c.get("padded_keys") else "")
        ratio = (f"{c['latency_ms'] / r['latency_ms']:.2f}" if c and "latency_ms" in c and "latency_ms" in r else "-")
        note = (f"{c['first_call_s']:.1f}, {c['graphs']}" if c and "latency_ms" in c
                else (c.get("skipped") or c.get("error", ""))[:160] if c else "")
        md.append(f"| {r['gen_length']} | {r['forward']} | {r['batch']} | {tok} | {keys} | {cell(r)} | {cell(c)} | "
                  f"{ratio} | {note} |")
    if d.get("sdpa"):
        md += ["", "SDPA kernel torch picks on this machine (`torch._fused_sdp_choice`, "
               f"{dt}; the engine passes a key mask whenever rows are ragged or the model is compiled):", "",
               "| heads | shape | key mask | kernel |", "|---|---|---|---|"]
        md += [f"| {s['heads']} | {s['shape']} | {'yes' if s['key_mask'] else 'no'} | {s['kernel']} |" for s in d["sdpa"]]
    md += ["", f"Compile: {json.dumps(d.get('compile'))}", "",
           f"Compile budget guard: {json.dumps(d.get('compile_guard'))}; budget {d.get('budget_s')} s, "
           f"elapsed {d.get('elapsed_s')} s."]
    if d.get("error"):
        md += ["", f"**Error:** {d['error'][:2000]}"]
    md += ["", f"Command: `{d.get('command')}`"]
    return md


# ---------------------------------------------------------------------------------- part 2: throughput
def throughput_part(dev: torch.device, res: Results, clock: Clock, guard: CompileGuard) -> None:
    import dpad
    from dpad.api import encode_prompt
    from dpad.engine import decode_batch
    from dpad.eval.methods import resolve_config
    from dpad.eval.tasks import get_task

    task = get_task("arith")
    _, cfg = resolve_config(METHOD, family="embedded", task="arith", overrides={"gen_length": Plan.throughput_gen})
    lm = dpad.load(None, device=dev, dtype=dname(Plan.dtype))
    samples = task.samples(max(max(Plan.batches), Plan.check_batch))
    ids = [encode_prompt(lm, s.prompt, task.chat) for s in samples]
    opts = Plan.compile or default_options(dev)
    res.set(compile_options=opts)

    def decode(model: Any, B: int) -> list[Any]:
        out = decode_batch(model, ids[:B], cfg, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id)
        sync(dev)
        return out

    outs: dict[tuple[str, int], list[list[int]]] = {}

    def measure(mode: str, B: int, comp: Any) -> None:
        row: dict[str, Any] = {"mode": mode, "batch": B}
        skip = budget_skip(clock)
        if skip:
            res.add("rows", {**row, **skip})
            return
        lm.model.compiled = comp
        g0 = comp.graphs if comp else 0
        r0, k0 = guard.refused, cudagraph_skips()
        try:
            warm = []
            for _ in range(2):  # compile, then record the CUDA graphs: nothing of that in the timed decode
                t = time.perf_counter()
                decode(lm.model, B)
                warm.append(round(time.perf_counter() - t, 3))
            g1 = comp.graphs if comp else 0
            t = time.perf_counter()
            out = decode(lm.model, B)
            dt = time.perf_counter() - t
        except Exception as e:  # noqa: BLE001
            why = {"skipped": guard_reason(e)} if guard.refused > r0 else {"error": error_text(e)}
            res.add("rows", {**row, **why})
            log(f"throughput {mode} batch {B}: {next(iter(why.values()))[:200]}")
            return
        finally:
            lm.model.compiled = None
        toks = sum(o.response_length for o in out)
        outs[(mode, B)] = [o.generated for o in out]
        row.update({"latency_s": dt, "response_tokens": toks, "tok_s": toks / dt, "nfe": out[0].batch_forwards,
                    "warmup_s": warm})
        if comp is not None:
            row.update({"graphs_in_warmups": g1 - g0, "graphs_in_timed": comp.graphs - g1,
                        "cudagraph_skips": cudagraph_skips() - k0})
            if ("eager", B) in outs:
                row.update(agreement(outs[("eager", B)], outs[(mode, B)], "bf16" if Plan.dtype == torch.bfloat16 else dname(Plan.dtype)))
        res.add("rows", row)
        log(f"throughput {mode} batch {B}: {toks / dt:.0f} tok/s ({dt:.3f} s)")

    with torch.no_grad():
        for B in Plan.batches:
            measure("eager", B, None)
        try:
            compile_model(lm.model, **opts, verbose=False)
            comp, lm.model.compiled = lm.model.compiled, None
        except Exception as e:  # noqa: BLE001 - the eager rows stay
            res.error(f"compile_model: {error_text(e)}")
            comp = None
        if comp is not None:
            for i, B in enumerate(Plan.batches):
                measure("compiled", B, comp)
                if i == 0:  # the float32 token check right after the first compiled row (priority)
                    float32_check(dev, res, clock, guard, ids, cfg, opts)
                res.set(compile=comp.stats(), compile_guard=guard.summary())
        else:
            float32_check(dev, res, clock, guard, ids, cfg, opts)


def same_fraction(want: list[list[int]], got: list[list[int]]) -> float:
    n = sum(len(w) for w in want)
    return sum(a == b for w, g in zip(want, got, strict=True) for a, b in zip(w, g, strict=True)) / max(1, n)


def agreement(want: list[list[int]], got: list[list[int]], tag: str) -> dict[str, Any]:
    return {f"same_tokens_as_eager_{tag}": got == want, f"token_agreement_{tag}": same_fraction(want, got)}


def float32_check(dev: torch.device, res: Results, clock: Clock, guard: CompileGuard, ids: list[list[int]],
                  cfg: Any, opts: dict[str, Any]) -> None:
    """Eager vs two compiled decodes of the same batch in ``Plan.check_dtype`` (float32 on the GPU)."""
    import dpad
    from dpad.engine import decode_batch

    B = Plan.check_batch
    row: dict[str, Any] = {"dtype": dname(Plan.check_dtype), "batch": B}
    skip = budget_skip(clock)
    if skip:
        res.add("check", {**row, **skip})
        return
    r0 = guard.refused
    try:
        lm = dpad.load(None, device=dev, dtype=dname(Plan.check_dtype))

        def decode() -> list[Any]:
            out = decode_batch(lm.model, ids[:B], cfg, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id)
            sync(dev)
            return out

        with torch.no_grad():
            want = decode()
            compile_model(lm.model, **opts, verbose=False)
            got = [decode(), decode()]  # the second one replays recorded CUDA graphs
        row.update({"same_tokens": [[o.generated for o in g] == [o.generated for o in want] for g in got],
                    "same_nfe": [[o.nfe for o in g] == [o.nfe for o in want] for g in got],
                    "token_agreement": [same_fraction([o.generated for o in want], [o.generated for o in g]) for g in got],
                    "graphs": lm.model.compiled.stats()["graphs"]})
        lm.model.compiled = None
        res.add("check", row)
        log(f"{row['dtype']} check batch {B}: same tokens {row['same_tokens']}, same NFE {row['same_nfe']}")
    except Exception as e:  # noqa: BLE001
        why = {"skipped": guard_reason(e)} if guard.refused > r0 else {"error": error_text(e)}
        res.add("check", {**row, **why})
        log(f"{row['dtype']} check batch {B}: {next(iter(why.values()))[:200]}")


def render_throughput(d: dict[str, Any]) -> list[str]:
    env = d["env"]
    tag = "bf16" if d["dtype"] == "bfloat16" else d["dtype"]
    rows = d.get("rows", [])
    base = {r["mode"]: r["tok_s"] for r in rows if r["batch"] == 1 and "tok_s" in r}
    md = [f"### Embedded model batched throughput, eager vs compiled ({d['dtype']})", "",
          f"{env.get('gpu') or env.get('cpu')}, torch {env['torch']}; {METHOD} at gen {d['gen_length']}; "
          f"compiled: `compile_model(model, **{json.dumps(d.get('compile_options'))})`; each row: one decode timed "
          "after two warm-up decodes." + (f" **{env['smoke']}.**" if env.get("smoke") else ""), "",
          f"| mode | batch | latency (s) | tok/s | vs batch 1 | NFE | graphs: warm-ups / timed | same tokens as eager ({tag}) | note |",
          "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        if "tok_s" not in r:
            md.append(f"| {r['mode']} | {r['batch']} | - | - | - | - | - | - | {(r.get('skipped') or r.get('error', ''))[:200]} |")
            continue
        vs = f"{r['tok_s'] / base[r['mode']]:.2f}" if r["mode"] in base else "-"
        graphs = f"{r['graphs_in_warmups']} / {r['graphs_in_timed']}" if "graphs_in_warmups" in r else "-"
        same = "-"
        if f"same_tokens_as_eager_{tag}" in r:
            same = f"{r[f'same_tokens_as_eager_{tag}']} ({100 * r[f'token_agreement_{tag}']:.1f} % of positions)"
        note = f"CUDA-graph skips: {r['cudagraph_skips']}" if r.get("cudagraph_skips") else ""
        md.append(f"| {r['mode']} | {r['batch']} | {r['latency_s']:.3f} | {r['tok_s']:.0f} | {vs} | {r['nfe']} | {graphs} | "
                  f"{same} | {note} |")
    for c in d.get("check", []):
        if "same_tokens" in c:
            md += ["", f"{c['dtype']} check at batch {c['batch']} (eager vs two compiled decodes, the second replaying "
                   f"recorded graphs): same tokens {c['same_tokens']}, same NFE {c['same_nfe']}, token agreement "
                   f"{[round(a, 4) for a in c['token_agreement']]}."]
        else:
            md += ["", f"{c['dtype']} check at batch {c['batch']}: {(c.get('skipped') or c.get('error', ''))[:400]}"]
    md += ["", f"Compile: {json.dumps(d.get('compile'))}", "",
           f"Compile budget guard: {json.dumps(d.get('compile_guard'))}; budget {d.get('budget_s')} s, "
           f"elapsed {d.get('elapsed_s')} s."]
    if d.get("error"):
        md += ["", f"**Error:** {d['error'][:2000]}"]
    md += ["", f"Command: `{d.get('command')}`"]
    return md


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=[*PARTS, "all"], default="all")
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--budget-s", type=float, default=None,
                    help="seconds for this invocation (default: forward 230, throughput 160, all: their sum)")
    ap.add_argument("--grace-s", type=float, default=25.0, help="the watchdog stops the run at budget + this")
    ap.add_argument("--compile-guess-s", type=float, default=None,
                    help="seconds a compile is expected to take before one was seen (default: forward 90, "
                         "throughput 30)")
    ap.add_argument("--gen-lengths", type=int, nargs="+", default=None, help="forward part (default 256 1024 2048)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="toy sizes on the CPU: checks the script, measures nothing")
    ns = ap.parse_args(argv)
    if ns.smoke:
        Plan.smoke()
    elif not torch.cuda.is_available():
        print("gpu_bench: no CUDA device (--smoke checks the script on the CPU)", file=sys.stderr)
        return 2
    if ns.gen_lengths:
        Plan.gen_lengths = tuple(ns.gen_lengths)
    parts = PARTS if ns.part == "all" else (ns.part,)
    default_total = sum(Plan.budgets[p] for p in parts)
    total = default_total if ns.budget_s is None else ns.budget_s
    budgets = {p: total * Plan.budgets[p] / default_total for p in parts}
    from dpad.eval.env import collect_env, command_line

    dev = torch.device("cpu" if ns.smoke else "cuda")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    env = collect_env(dev, Plan.dtype)
    if ns.smoke:
        env["smoke"] = "toy sizes on the CPU: a check of the script, not a measurement"
    cmd = "python " + command_line(None if argv is None else ["benchmarks/gpu_bench.py", *argv])
    clock = Clock()
    guard = CompileGuard(clock, 0.0)
    guard.install()
    watchdog = start_watchdog(total + ns.grace_s)
    failed = False
    deadline = 0.0
    try:
        for part in parts:
            deadline += budgets[part]
            clock.deadline = deadline
            guard.reset(Plan.compile_guess_s[part] if ns.compile_guess_s is None else ns.compile_guess_s)
            common = {"env": env, "command": cmd, "part": part, "budget_s": round(budgets[part], 1),
                      "dtype": dname(Plan.dtype), "rows": []}
            if part == "forward":
                res = Results(out, "forward_gpu", {
                    "kind": "forward_gpu", **common,
                    "model": f"llada-8b-shaped (random {dname(Plan.dtype)} weights)" + (" (smoke: toy sizes)" if ns.smoke else ""),
                    "config": Plan.shape, "prompt": PROMPT, "block": BLOCK, "kept": KEPT,
                    "gen_lengths": list(Plan.gen_lengths), "step_batch": Plan.step_batch}, render_forward)
            else:
                res = Results(out, "throughput_gpu_compiled", {
                    "kind": "throughput_gpu_compiled", **common, "model": "embedded", "task": "arith",
                    "method": METHOD, "gen_length": Plan.throughput_gen, "check": []}, render_throughput)
            ACTIVE[:] = [res]
            res.write()
            model = None
            try:
                if part == "forward":
                    model = forward_part(dev, res, clock, guard, ns.reps)
                else:
                    throughput_part(dev, res, clock, guard)
            except Exception as e:  # noqa: BLE001 - keep what was measured, record the failure
                res.error(error_text(e))
                log(f"{part}: {type(e).__name__}: {e}")
            res.set(compile_guard=guard.summary(), recompile_limit=torch._dynamo.config.recompile_limit)
            failed |= bool(res.data.get("error")) or any("error" in r for k in ("rows", "check") for r in res.data.get(k, []))
            del model
            torch._dynamo.reset()  # the next part starts from no graphs (and the hooks go with it)
            guard.install()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        watchdog.cancel()
        guard.uninstall()
    print(f"gpu_bench: wrote {out} in {time.perf_counter() - T0:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
