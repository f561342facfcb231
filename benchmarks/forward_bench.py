"""Time ONE model forward: the full view vs the DPad view, on a random-weight LLaDA-shaped model.

Full view: prompt + the whole masked generation (what vanilla decoding feeds at every step).
DPad view: prompt + one block + the Gaussian-kept suffix (W=256, k=4, a=2.0, drawn with
``GaussianDecay`` seeded 1234, i.e. ~64 of the suffix tokens after the first block).
Both forwards return logits for the block rows only (``logits_range``), as the decode loop does.

The measurements are interleaved: each round times full and dpad back to back (order flipped
every round) for every gen length, so load on a shared machine hits all cells alike; medians are
reported.

    python benchmarks/forward_bench.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from dpad.engine.suffix import GaussianDecay
from dpad.eval.env import git_revision
from dpad.models import ModelArgs, Transformer, init_weights

ROOT = Path(__file__).resolve().parent.parent
MODEL_LABEL = "random llada-shaped d512 L8"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (recorded)")
    ap.add_argument("--gen-lengths", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--repeats", type=int, nargs="+", default=None,
                    help="interleaved repeats per gen length (one value, or one per gen length; "
                         "default 9 up to 512, 7 up to 1024, 5 beyond)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed full+dpad pairs per gen length")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--scale", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--note", default=None, help="a remark stored with the results (e.g. machine load)")
    args = ap.parse_args(argv)
    if args.repeats is None:
        args.repeats = [9 if g <= 512 else 7 if g <= 1024 else 5 for g in args.gen_lengths]
    if len(args.repeats) == 1:
        args.repeats = args.repeats * len(args.gen_lengths)
    if len(args.repeats) != len(args.gen_lengths):
        ap.error("--repeats takes one value or one per --gen-lengths value")
    return args


def build_model(vocab: int) -> Transformer:
    margs = ModelArgs(arch="llada", vocab_size=vocab, dim=512, n_layers=8, n_heads=8, n_kv_heads=8,
                      hidden_dim=1376, rope_theta=500000.0, norm_eps=1e-5, max_seq_len=8192,
                      mask_token_id=vocab - 2, eos_token_id=vocab - 1)
    model = Transformer(margs)
    init_weights(model, seed=0)
    return model.to(torch.float32).eval().requires_grad_(False)


def views(args: argparse.Namespace, gen_length: int, vocab: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(ids [1, T], positions [1, T]) of the full and the DPad view for the first block."""
    g = torch.Generator().manual_seed(0)
    P, B = args.prompt, args.block
    L = P + gen_length
    canvas = torch.full((L,), vocab - 2, dtype=torch.long)
    canvas[:P] = torch.randint(0, vocab - 2, (P,), generator=g)
    policy = GaussianDecay(args.window, args.sigma, args.scale)
    policy.reset(args.seed)
    kept = policy.kept(P + B, L)
    full_pos = torch.arange(L)
    dpad_pos = torch.cat([torch.arange(P + B), kept])
    return {"full": (canvas[full_pos][None], full_pos[None]), "dpad": (canvas[dpad_pos][None], dpad_pos[None])}


def time_forward(model: Transformer, ids: torch.Tensor, pos: torch.Tensor, rows: tuple[int, int]) -> float:
    t0 = time.perf_counter()
    out = model(ids, pos, logits_range=rows)
    dt = time.perf_counter() - t0
    assert out.shape[1] == rows[1] - rows[0]
    return dt


def cpu_name() -> str:
    name = platform.processor()
    if name and name not in ("x86_64", "aarch64", "arm64", "i386"):
        return name
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name or platform.machine()




def write_markdown(path: Path, result: dict) -> None:
    env = result["env"]
    lines = [
        f"One forward of a {result['model']} model ({env['dtype']}, {env['device']}, {env['threads']} thread(s), "
        f"{env['cpu']}): full view vs DPad view (prompt + block + Gaussian-kept suffix, W=256 k=4 a=2.0), "
        "block logits only, interleaved repeats, medians.",
        "",
        "| gen_length | method | view tokens | latency (ms) | n | speedup vs full |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['gen_length']} | {r['method']} | {r['view_tokens']} | {1e3 * r['latency_s']:.1f} | "
                     f"{r['n']} | {r['speedup_vs_full']:.2f}x |")
    lines += ["", f"Command: `{result['command']}` (git {env['git']}, torch {env['torch']})."]
    if result.get("note"):
        lines += ["", f"Note: {result['note']}"]
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = sorted({r["gen_length"] for r in result["rows"]})
    by = {(r["method"], r["gen_length"]): r for r in result["rows"]}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    width = 0.38
    xs = range(len(gens))
    for off, method, color in ((-width / 2, "full", "#7f7f7f"), (width / 2, "dpad", "#1f77b4")):
        vals = [1e3 * by[(method, g)]["latency_s"] for g in gens]
        bars = ax.bar([x + off for x in xs], vals, width, label=method, color=color)
        for bar, g in zip(bars, gens, strict=True):
            label = f"{bar.get_height():.0f} ms"
            if method == "dpad":
                label += f"\n{by[('dpad', g)]['speedup_vs_full']:.1f}x faster"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(list(xs), [str(g) for g in gens])
    ax.set_xlabel("gen_length (prompt 64, block 32)")
    ax.set_ylabel("median forward latency (ms)")
    env = result["env"]
    ax.set_title(f"One forward, {result['model']}, {env['dtype']} CPU, {env['threads']} thread(s)", fontsize=10)
    ax.margins(y=0.15)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.vocab)
    rows_range = (args.prompt, args.prompt + args.block)
    rows = []
    gens = list(zip(args.gen_lengths, args.repeats, strict=True))
    all_views = {g: views(args, g, args.vocab) for g, _ in gens}
    times: dict[tuple[str, int], list[float]] = {(m, g): [] for g, _ in gens for m in ("full", "dpad")}
    with torch.inference_mode():
        for g, _ in gens:
            for _ in range(args.warmup):
                for m in ("full", "dpad"):
                    time_forward(model, *all_views[g][m], rows_range)
        # Round-robin: every round measures every gen length still short of its repeats, full and
        # dpad back to back (order flipped every round), so load changes hit all cells alike.
        for r in range(max(n for _, n in gens)):
            todo = [g for g, n in gens if r < n]
            for g in todo if r % 2 == 0 else reversed(todo):
                for m in ("full", "dpad") if r % 2 == 0 else ("dpad", "full"):
                    times[(m, g)].append(time_forward(model, *all_views[g][m], rows_range))
            print(f"round {r + 1}: " + ", ".join(f"{g}: {times[('full', g)][-1]:.3f}s/{times[('dpad', g)][-1]:.3f}s"
                                                  for g in todo), flush=True)
    for g, n in gens:
        med = {m: statistics.median(times[(m, g)]) for m in ("full", "dpad")}
        for m in ("full", "dpad"):
            rows.append({"method": m, "gen_length": g, "view_tokens": int(all_views[g][m][0].shape[1]),
                         "latency_s": med[m], "n": n, "speedup_vs_full": med["full"] / med[m],
                         "all_s": [round(t, 6) for t in times[(m, g)]]})
        print(f"gen_length {g:5d}: full {all_views[g]['full'][0].shape[1]:5d} tok {1e3 * med['full']:9.1f} ms | "
              f"dpad {all_views[g]['dpad'][0].shape[1]:4d} tok {1e3 * med['dpad']:8.1f} ms | "
              f"ratio full/dpad {med['full'] / med['dpad']:.2f}x  (n={n})", flush=True)

    import transformers

    cmd_args = sys.argv[1:] if argv is None else argv
    result = {
        "kind": "forward",
        "env": {
            "device": "cpu",
            "dtype": "float32",
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "git": git_revision(),
            "cpu": cpu_name(),
            "os_cpu_count": os.cpu_count(),
        },
        "model": MODEL_LABEL,
        "task": None,
        "command": " ".join(["python", "benchmarks/forward_bench.py", *map(shlex.quote, cmd_args)]),
        "settings": {"prompt": args.prompt, "block": args.block, "window": args.window, "sigma": args.sigma,
                     "scale": args.scale, "seed": args.seed, "vocab": args.vocab, "warmup": args.warmup,
                     "params": model.num_parameters()},
        "rows": rows,
        "note": args.note,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "forward.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(args.out_dir / "forward.md", result)
    write_plot(args.out_dir / "forward.png", result)
    print(f"wrote {args.out_dir / 'forward.json'}, forward.md, forward.png")
    return result


if __name__ == "__main__":
    main()
