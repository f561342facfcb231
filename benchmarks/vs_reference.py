"""dpad side by side with the public DPad reference implementation (LLaDA code) on the embedded model.

Nothing of the reference is copied here: a worker process started with ``--ref-python`` imports
the reference's LLaDA model and samplers from ``--ref-dir`` (a checkout of
https://github.com/Crys-Chen/DPad) at run time. The embedded model loads unchanged in the
reference's ``LLaDAModelLM`` (config.json + safetensors).

How it measures: two long-lived worker processes (ours in this Python, the reference's in
``--ref-python``), each with ``--threads`` torch threads, loaded once and warmed up per setting.
For every setting and problem the two sides run one after the other (never at the same time), the
side going first alternating with the problem, ``--repeats`` times; the per-problem latency is the
median of the repeats (wall time of one generate call inside the worker). A row reports the mean
of the per-problem medians of each side, their ratio (dpad / reference), the median of the
per-problem ratios, the mean NFE of each side and on how many problems the generated tokens
(the whole generated canvas) and NFE are identical. The machine's load average is recorded at
the start and the end.

Settings (the embedded model's parameters: block 32; DPad W 128, k 4, a 2; seed 1234):
``dpad256`` / ``dpad1024``: threshold 0.9 + prefix cache + DPad + early termination (reference
``generate_dropout.generate_with_prefix_cache``); ``vanilla256``: one token per step, full suffix
(reference ``generate_baseline.generate``). The DPad settings run in ``eager`` and ``compiled`` mode
(vanilla256 eager only unless ``--compiled-vanilla``): compiled is ``dpad.load(compile=True)``
against the same reference (eager; the reference has no compiled path).

    python benchmarks/vs_reference.py --ref-dir /path/to/DPad --ref-python /path/to/refenv/bin/python \\
        --threads 2 --n 10 --out benchmarks/results/vs_reference
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SETTINGS = {
    "dpad256": {"gen_length": 256, "method": "parallel+prefix+dpad-threshold0.9"},
    "dpad1024": {"gen_length": 1024, "method": "parallel+prefix+dpad-threshold0.9"},
    "vanilla256": {"gen_length": 256, "method": "vanilla"},
}
BLOCK, WINDOW, SIGMA, SCALE, THRESHOLD, SEED = 32, 128, 4.0, 2.0, 0.9, 1234


# ----------------------------------------------------------------------------- workers
def _serve(handler: Any) -> None:
    """Line protocol on stdin/stdout: one JSON request per line, one JSON reply per line."""
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the libraries print goes to stderr
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("op") == "quit":
            break
        try:
            rep = handler(req)
        except Exception as e:  # noqa: BLE001 - reported to the driver
            rep = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(rep) + "\n")
        out.flush()


def dpad_worker(threads: int) -> None:
    import torch

    import dpad
    from dpad.eval.methods import resolve_config

    torch.set_num_threads(threads)
    models: dict[bool, Any] = {}

    def model(compiled: bool) -> Any:
        if compiled not in models:
            t0 = time.perf_counter()
            models[compiled] = dpad.load(None, device="cpu", dtype="float32", compile=compiled)
            models[compiled].load_s = time.perf_counter() - t0
        return models[compiled]

    def handle(req: dict) -> dict:
        if req["op"] == "info":
            return {"torch": torch.__version__, "dpad": dpad.__file__, "threads": torch.get_num_threads()}
        if req["op"] == "encode":
            from dpad.api import encode_prompt

            return {"ids": [encode_prompt(model(False), t, req.get("chat")) for t in req["texts"]]}
        lm = model(bool(req.get("compiled")))
        _, cfg = resolve_config(req["method"], family="embedded", task="arith",
                                overrides={"gen_length": req["gen_length"], "seed": SEED})
        t0 = time.perf_counter()
        g = dpad.generate(lm, req["ids"], cfg)
        lat = time.perf_counter() - t0
        return {"latency_s": lat, "nfe": g.stats["nfe"], "tokens": g.generated_ids,
                "model_time_s": g.stats["model_time_s"], "compile": g.stats.get("compile"),
                "load_s": getattr(lm, "load_s", None)}

    _serve(handle)


def ref_worker(threads: int, ref_dir: str, model_dir: str) -> None:
    import types

    import torch

    try:
        import einops  # noqa: F401  (imported by the reference's modelling file, unused on this path)
    except ImportError:
        stub = types.ModuleType("einops")

        def _unavailable(*a: Any, **k: Any) -> Any:
            raise NotImplementedError("einops is not installed")

        stub.rearrange = _unavailable
        sys.modules["einops"] = stub
    sys.path.insert(0, str(Path(ref_dir) / "llada"))
    import generate_baseline
    import generate_dropout
    from model.modeling_llada import LLaDAModelLM
    from torch.overrides import TorchFunctionMode

    class _CudaToCpu(TorchFunctionMode):
        """The reference's Gaussian keep-probability curve is built on a hard-coded CUDA device:
        build those tensors on the CPU instead (nothing else changes)."""

        def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            kwargs = dict(kwargs or {})
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return func(*args, **kwargs)

    original_pdf = generate_dropout.GaussianSampler.pdf

    def pdf_on_cpu(self: Any) -> Any:
        with _CudaToCpu():
            return original_pdf(self)

    generate_dropout.GaussianSampler.pdf = pdf_on_cpu
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = LLaDAModelLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    mask_id, eos_id = int(cfg["mask_token_id"]), int(cfg["eos_token_id"])

    def handle(req: dict) -> dict:
        if req["op"] == "info":
            import transformers

            return {"torch": torch.__version__, "transformers": transformers.__version__,
                    "threads": torch.get_num_threads()}
        L = int(req["gen_length"])
        prompt = torch.tensor([req["ids"]], dtype=torch.long)
        torch.manual_seed(SEED)  # the reference's suffix dropout draws from the global generator
        t0 = time.perf_counter()
        with torch.no_grad():
            if req["method"] == "vanilla":
                x, nfe = generate_baseline.generate(
                    model, prompt, steps=L, gen_length=L, block_length=BLOCK, temperature=0.0,
                    remasking="low_confidence", mask_id=mask_id, eos_id=eos_id, threshold=None,
                    early_termination=False)
            else:
                x, nfe = generate_dropout.generate_with_prefix_cache(
                    model, prompt, steps=L, gen_length=L, block_length=BLOCK, temperature=0.0,
                    remasking="low_confidence", mask_id=mask_id, eos_id=eos_id, threshold=THRESHOLD,
                    dropout="gaussian", sigma=SIGMA, scale=SCALE, window=WINDOW, early_termination=True)
        lat = time.perf_counter() - t0
        return {"latency_s": lat, "nfe": int(nfe), "tokens": x[0, prompt.shape[1]:].tolist(), "load_s": load_s}

    _serve(handle)


class Worker:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **req: Any) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"vs_reference: the {self.name} worker exited (status {self.proc.wait()})")
        rep = json.loads(line)
        if "error" in rep:
            raise SystemExit(f"vs_reference: the {self.name} worker failed: {rep['error']}")
        return rep

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, AssertionError):
            pass
        self.proc.wait(timeout=60)


# ----------------------------------------------------------------------------- driver
def _row_markdown(r: dict) -> str:
    return (f"| {r['setting']} | {r['mode']} | {r['gen_length']} | {r['n']} | {r['dpad_latency_s']:.3f} | "
            f"{r['ref_latency_s']:.3f} | **{r['ratio']:.2f}** | {r['median_ratio']:.2f} | {r['dpad_nfe']:.1f} | "
            f"{r['ref_nfe']:.1f} | {r['tokens_identical']}/{r['n']} | {r['nfe_identical']}/{r['n']} |")


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [
        "### dpad vs the DPad reference implementation (embedded model, CPU)", "",
        f"{env['cpu']}, {env['threads']} threads per side, float32; dpad: torch {env['dpad']['torch']}; "
        f"reference: torch {env['reference']['torch']}, transformers {env['reference']['transformers']}; "
        f"git {env['git']}. {result['n']} arith eval prompts (vanilla: {result['vanilla_n']}), seed {SEED}, {result['repeats']} repeats per "
        f"problem (vanilla: {result['vanilla_repeats']}), sides interleaved per problem with alternating "
        f"order. Load average (1/5/15 min) at start {env['loadavg_start']}, at end {env['loadavg_end']} "
        f"on {env['cpus']} CPUs.", "",
        "| setting | mode | gen | n | dpad latency (s) | reference latency (s) | ratio | median ratio | "
        "dpad NFE | ref NFE | tokens identical | NFE identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row_markdown(r) for r in result["rows"]]
    lines += ["", "Latency: mean over problems of the per-problem median wall time of one generate call. "
              "ratio = dpad / reference (lower is faster). dpad256/dpad1024: threshold 0.9 + prefix cache + "
              "DPad (W 128, k 4, a 2) + early termination; vanilla256: one token per step, block 32. "
              "compiled: dpad.load(compile=True) (torch.compile, inductor, dynamic shapes) against the same "
              "reference run eagerly; its one-time compile (excluded, done in the warm-up) took "
              f"{result.get('compile', {}).get('first_compile_s', '-')} s for the first graph and "
              f"{result.get('compile', {}).get('compile_time_s', '-')} s in all "
              f"({result.get('compile', {}).get('graphs', '-')} graphs).", ""]
    lines += [f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-dir", help="checkout of the DPad reference repository (Crys-Chen/DPad)")
    ap.add_argument("--ref-python", help="python of an environment where the reference runs "
                    "(torch 2.x + transformers 4.49; see benchmarks/README.md)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of each side (default 2)")
    ap.add_argument("--n", type=int, default=10, help="arith eval prompts (default 10)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per problem and side (default 3)")
    ap.add_argument("--vanilla-repeats", type=int, default=1, help="repeats for vanilla256 (default 1)")
    ap.add_argument("--vanilla-n", type=int, default=None, help="prompts for vanilla256 (default: --n)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--compiled-vanilla", action="store_true", help="also run vanilla256 in compiled mode")
    ap.add_argument("--out", default="benchmarks/results/vs_reference", help="output prefix (.json, .md)")
    ap.add_argument("--worker", choices=["dpad", "ref"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ns = ap.parse_args(argv)

    if ns.worker == "dpad":
        dpad_worker(ns.threads)
        return 0
    if ns.worker == "ref":
        ref_worker(ns.threads, ns.ref_dir, ns.model_dir)
        return 0
    if not ns.ref_dir or not (Path(ns.ref_dir) / "llada" / "generate_dropout.py").is_file():
        ap.error("--ref-dir must be a checkout of the DPad reference (it needs llada/generate_dropout.py)")
    if not ns.ref_python or not Path(ns.ref_python).is_file():
        ap.error("--ref-python must be the python executable of an environment where the reference runs")
    if ns.n < 1 or ns.repeats < 1 or ns.vanilla_repeats < 1 or ns.threads < 1:
        ap.error("--n, --repeats, --vanilla-repeats and --threads must be >= 1")

    from dpad.api import embedded_model_path
    from dpad.eval.tasks import get_task

    task = get_task("arith")
    samples = task.samples(ns.n)
    env_vars = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "OMP_NUM_THREADS": str(ns.threads), "MKL_NUM_THREADS": str(ns.threads)}
    me = str(Path(__file__).resolve())
    ours = Worker("dpad", [sys.executable, me, "--worker", "dpad", "--threads", str(ns.threads)], env_vars)
    ref_env = {k: v for k, v in env_vars.items() if k != "PYTHONPATH"}
    ref = Worker("reference", [ns.ref_python, me, "--worker", "ref", "--threads", str(ns.threads),
                               "--ref-dir", ns.ref_dir, "--model-dir", str(embedded_model_path())], ref_env)
    load_start = [round(x, 2) for x in os.getloadavg()]
    info: dict[str, Any] = {}

    def save(rows: list, problems: list, compile_stats: dict, complete: bool) -> None:
        _save(ns, info, load_start, rows, problems, compile_stats, complete)

    try:
        info.update({"dpad": ours.ask(op="info"), "reference": ref.ask(op="info")})
        prompts = ours.ask(op="encode", texts=[s.prompt for s in samples], chat=task.chat)["ids"]
        rows: list[dict[str, Any]] = []
        problems: list[dict[str, Any]] = []
        compile_stats: dict[str, Any] = {}
        # the DPad settings first, vanilla (the long one) last
        plan = sorted(((m, n) for m in ns.modes for n in ns.settings),
                      key=lambda mn: SETTINGS[mn[1]]["method"] == "vanilla")
        for mode, name in plan:
            compiled = mode == "compiled"
            st = SETTINGS[name]
            if compiled and st["method"] == "vanilla" and not ns.compiled_vanilla:
                continue
            req = {"op": "run", "method": st["method"], "gen_length": st["gen_length"], "compiled": compiled}
            # untimed warm-up of both sides (compiles the dpad side in compiled mode)
            ours.ask(**req, ids=prompts[0])
            ref.ask(**req, ids=prompts[0])
            vanilla = st["method"] == "vanilla"
            reps = ns.vanilla_repeats if vanilla else ns.repeats
            todo = prompts[: ns.vanilla_n] if vanilla and ns.vanilla_n else prompts
            per = []
            for i, ids in enumerate(todo):
                lat: dict[str, list[float]] = {"dpad": [], "ref": []}
                last: dict[str, dict] = {}
                order = [("dpad", ours), ("ref", ref)] if i % 2 == 0 else [("ref", ref), ("dpad", ours)]
                for _ in range(reps):
                    for side, w in order:
                        rep = w.ask(**req, ids=ids)
                        lat[side].append(rep["latency_s"])
                        last[side] = rep
                if compiled and last["dpad"].get("compile"):
                    compile_stats = last["dpad"]["compile"]
                d, r = statistics.median(lat["dpad"]), statistics.median(lat["ref"])
                per.append({"setting": name, "mode": mode, "index": i, "dpad_latency_s": d, "ref_latency_s": r,
                            "ratio": d / r, "dpad_runs_s": lat["dpad"], "ref_runs_s": lat["ref"],
                            "dpad_nfe": last["dpad"]["nfe"], "ref_nfe": last["ref"]["nfe"],
                            "tokens_identical": last["dpad"]["tokens"] == last["ref"]["tokens"],
                            "dpad_model_time_s": last["dpad"].get("model_time_s")})
                print(f"[vs_reference] {mode} {name} problem {i}: dpad {d:.3f}s ref {r:.3f}s ratio {d / r:.2f} "
                      f"nfe {per[-1]['dpad_nfe']}/{per[-1]['ref_nfe']} same={per[-1]['tokens_identical']}",
                      file=sys.stderr, flush=True)
            problems += per
            md = statistics.mean(p["dpad_latency_s"] for p in per)
            mr = statistics.mean(p["ref_latency_s"] for p in per)
            rows.append({"setting": name, "mode": mode, "method": st["method"], "gen_length": st["gen_length"],
                         "n": len(per), "repeats": reps, "dpad_latency_s": md, "ref_latency_s": mr,
                         "ratio": md / mr, "median_ratio": statistics.median(p["ratio"] for p in per),
                         "dpad_nfe": statistics.mean(p["dpad_nfe"] for p in per),
                         "ref_nfe": statistics.mean(p["ref_nfe"] for p in per),
                         "tokens_identical": sum(p["tokens_identical"] for p in per),
                         "nfe_identical": sum(p["dpad_nfe"] == p["ref_nfe"] for p in per),
                         "dpad_model_time_share": sum(p["dpad_model_time_s"] or 0 for p in per)
                         / sum(p["dpad_latency_s"] for p in per)})
            save(rows, problems, compile_stats, complete=False)
        save(rows, problems, compile_stats, complete=True)
    finally:
        ours.close()
        ref.close()
    return 0


def _save(ns: argparse.Namespace, info: dict, load_start: list[float], rows: list, problems: list,
          compile_stats: dict, complete: bool) -> None:
    import torch

    from dpad.eval.env import collect_env, command_line, git_revision

    env = collect_env(torch.device("cpu"), torch.float32)
    env.update({"threads": ns.threads, "dpad": info["dpad"], "reference": info["reference"],
                "reference_dir": str(ns.ref_dir), "git": git_revision(),
                "loadavg_start": load_start, "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                "cpus": os.cpu_count()})
    env.setdefault("cpu", env.get("cpu_model", "cpu"))
    result = {"kind": "vs_reference", "complete": complete, "env": env, "model": "embedded", "task": "arith",
              "n": ns.n, "vanilla_n": ns.vanilla_n or ns.n, "repeats": ns.repeats,
              "vanilla_repeats": ns.vanilla_repeats, "seed": SEED,
              "command": "python " + command_line(), "compile": compile_stats, "rows": rows, "problems": problems}
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    if complete:
        print(markdown(result))


if __name__ == "__main__":
    raise SystemExit(main())
