"""Batched decoding throughput on the embedded model: tok/s at batch 1, 4, 8, 16, with and without DPad.

Methods (gen_length 256, block 32, threshold 0.9, prefix cache):
  ``parallel+prefix``       Fast-dLLM threshold decoding + prefix cache, full masked suffix;
  ``parallel+prefix+dpad``  the same + DPad (Gaussian suffix dropout W=256 k=4 a=2, early termination).

The same ``--n`` test prompts (synthetic word problems, chat template) run through
``dpad.engine.decode_batch`` in chunks of each batch size. tok/s counts response tokens (up to the
first EOS; the EOS padding after it is excluded) over the wall time of all chunks. The
configurations are interleaved (every round visits every batch size x method, the method order
flipping every round) so that load on a shared machine hits them alike.

    python benchmarks/throughput_bench.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import dpad
from dpad.api import encode_prompt
from dpad.config import DecodeConfig, preset
from dpad.engine import decode_batch
from dpad.eval.env import command_args, git_revision
from dpad.synthetic import arith

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (recorded)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--n", type=int, default=16, help="prompts per (method, batch size) measurement")
    ap.add_argument("--rounds", type=int, default=2,
                    help="interleaved rounds; the best round is reported (load only slows a run down)")
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="seed of the test prompts")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput")
    ap.add_argument("--note", default=None, help="a remark stored with the results (e.g. machine load)")
    return ap.parse_args(argv)


def configs(gen_length: int, block: int) -> dict[str, DecodeConfig]:
    base = DecodeConfig(gen_length=gen_length, block_length=block, threshold=0.9, cache="prefix")
    dp = preset("llada-instruct-gsm8k-parallel", gen_length=gen_length, block_length=block, cache="prefix")
    return {c.method_name(): c for c in (base, dp)}






def answer_of(text: str) -> int | None:
    tail = text.rsplit("####", 1)
    try:
        return int(tail[1].strip()) if len(tail) == 2 else None
    except ValueError:
        return None


def measure(lm: dpad.models.LoadedModel, prompts: list[list[int]], answers: list[int], cfg: DecodeConfig,
            batch_size: int) -> dict[str, Any]:
    """Decode all prompts in chunks of ``batch_size``; wall time, tokens, NFE, accuracy."""
    tok = lm.tokenizer
    t0 = time.perf_counter()
    outs = []
    batch_forwards = []
    for i in range(0, len(prompts), batch_size):
        chunk = decode_batch(lm.model, prompts[i:i + batch_size], cfg, mask_id=lm.mask_token_id,
                             eos_id=lm.eos_token_id)
        outs += chunk
        batch_forwards.append(chunk[0].batch_forwards)
    wall = time.perf_counter() - t0
    tokens = sum(o.response_length for o in outs)
    correct = sum(answer_of(tok.decode(o.generated[:o.response_length], skip_special_tokens=True)) == a
                  for o, a in zip(outs, answers, strict=True))
    return {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall,
            "latency_s": statistics.mean(o.total_time_s for o in outs),
            "nfe": statistics.mean(o.nfe for o in outs), "batch_forwards": statistics.mean(batch_forwards),
            "accuracy": correct / len(outs)}


def markdown(result: dict[str, Any]) -> str:
    env = result["env"]
    rows = result["rows"]
    lines = [
        f"Batched decoding throughput of the {result['model']} model on {result['task']} "
        f"({env['dtype']}, {env['device']}, {env['threads']} threads, {env['cpu']}): gen_length "
        f"{rows[0]['gen_length']}, block {result['settings']['block_length']}, n={rows[0]['n']} prompts per cell, "
        f"best of {result['settings']['rounds']} interleaved rounds (all in the JSON's tok_s_rounds). tok/s = response tokens (EOS padding "
        "excluded) / wall time. `dpad` implies early termination. latency = mean time from a batch's start to "
        "its row's completion; nfe = mean forwards per row; batch fwd = forwards per batch.",
        "",
        "| method | batch | tok/s | speedup vs batch 1 | latency (s) | nfe/row | batch fwd | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['batch_size']} | {r['tok_s']:.1f} | {r['speedup_vs_batch1']:.2f}x | "
                     f"{r['latency_s']:.2f} | {r['nfe']:.1f} | {r['batch_forwards']:.1f} | {r['accuracy']:.2f} |")
    lines += ["", f"Command: `{result['command']}` (git {env['git']}, torch {env['torch']})."]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r["method"] for r in result["rows"]):
        rs = [r for r in result["rows"] if r["method"] == method]
        ax.plot([r["batch_size"] for r in rs], [r["tok_s"] for r in rs], marker="o", label=method)
    ax.set_xscale("log", base=2)
    ax.set_xticks(result["settings"]["batch_sizes"], [str(b) for b in result["settings"]["batch_sizes"]])
    ax.set_xlabel("batch size")
    ax.set_ylabel("response tokens / s")
    env = result["env"]
    ax.set_title(f"Embedded model, gen {result['rows'][0]['gen_length']}, {env['device']} {env['threads']} threads")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    lm = dpad.load(device=args.device, dtype=args.dtype)
    problems = arith.generate("test", args.n, args.seed)
    prompts = [encode_prompt(lm, p.question) for p in problems]
    answers = [p.answer for p in problems]
    cfgs = configs(args.gen_length, args.block_length)
    # warm-up (untimed)
    for cfg in cfgs.values():
        decode_batch(lm.model, prompts[:2], cfg.replace(gen_length=args.block_length * 2),
                     mask_id=lm.mask_token_id, eos_id=lm.eos_token_id)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    t_start = time.perf_counter()
    for rnd in range(args.rounds):
        order = list(cfgs) if rnd % 2 == 0 else list(reversed(cfgs))
        for bs in args.batch_sizes:
            for method in order:
                m = measure(lm, prompts, answers, cfgs[method], bs)
                runs.setdefault((method, bs), []).append(m)
                print(f"round {rnd} {method:>22} batch {bs:>2}: {m['tok_s']:7.1f} tok/s  wall {m['wall_s']:6.2f}s  "
                      f"nfe/row {m['nfe']:.1f}  acc {m['accuracy']:.2f}", flush=True)
    rows = []
    for method in cfgs:
        base = None
        for bs in args.batch_sizes:
            med = max(runs[(method, bs)], key=lambda m: m["tok_s"])
            base = base or med["tok_s"]
            rows.append({"method": method, "batch_size": bs, "gen_length": args.gen_length, "n": args.n,
                         "latency_s": med["latency_s"], "tok_s": med["tok_s"], "nfe": med["nfe"],
                         "batch_forwards": med["batch_forwards"], "accuracy": med["accuracy"],
                         "wall_s": med["wall_s"], "response_tokens": med["tokens"],
                         "speedup_vs_batch1": med["tok_s"] / base,
                         "tok_s_rounds": [m["tok_s"] for m in runs[(method, bs)]]})
    import transformers

    result = {
        "kind": "throughput",
        "env": {"device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
                "dtype": args.dtype, "threads": args.threads, "torch": torch.__version__,
                "transformers": transformers.__version__, "git": git_revision(), "cpu": platform.processor() or
                platform.machine(), "cpu_count": os.cpu_count()},
        "model": "embedded", "task": "arith test (synthetic GSM8K-format word problems)",
        "command": ("python benchmarks/throughput_bench.py " + command_args(sys.argv[1:] if argv is None else argv)).strip(),
        "settings": {"batch_sizes": args.batch_sizes, "rounds": args.rounds, "block_length": args.block_length,
                     "configs": {k: v.to_dict() for k, v in cfgs.items()}, "total_time_s": time.perf_counter() - t_start},
        "note": args.note,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    png = plot(result, args.out.with_suffix(".png"))
    print(markdown(result))
    print(f"wrote {json_path}, {args.out.with_suffix('.md')}" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
