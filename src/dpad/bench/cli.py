"""``dpad bench``: the speed-up ladder (vanilla ... parallel+dual+dpad over gen lengths)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli import add_decode_args, add_model_args
from ..eval.methods import EMBEDDED_DEFAULTS
from .ladder import DEFAULT_GEN_LENGTHS, DEFAULT_METHODS


def cmd_bench(ns: argparse.Namespace) -> int:
    from ..eval.cli import decode_overrides
    from .ladder import LadderSettings, run_ladder, text_table

    task_options: dict[str, Any] = {k: v for k, v in {
        "data": ns.data, "train_data": ns.train_data, "num_fewshot": ns.num_fewshot, "chat": ns.chat}.items()
        if v is not None}
    settings = LadderSettings(
        methods=list(ns.methods), gen_lengths=list(ns.gen_lengths), n=ns.n, accuracy_n=ns.accuracy_n,
        accuracy_baseline_gen=ns.accuracy_baseline_gen,
        accuracy_methods=list(ns.accuracy_methods) if ns.accuracy_methods else None,
        accuracy_batch_size=ns.accuracy_batch_size, task=ns.task, task_options=task_options, model=ns.model,
        revision=ns.revision, device=ns.device, dtype=ns.dtype, threads=ns.threads, preset=ns.preset, overrides=decode_overrides(ns))
    from ..eval.env import command_from_namespace

    result = run_ladder(settings, ns.out, resume=ns.resume, overwrite=ns.overwrite, progress=not ns.no_progress,
                        plot=not ns.no_plot, command=command_from_namespace(ns._parser, ns, "dpad bench"))
    print(text_table(result))
    for t in result["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        val = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"target: {t['name']}: >= {t['target']:g}, measured {val} ({mark})")
    print("files: " + ", ".join(v for v in result["files"].values() if Path(v).exists()))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="the speed-up ladder: every method at every gen length (latency, tok/s, NFE, accuracy)",
        description=(
            "Speed-up ladder on the same problems for every method: batch 1, one run, methods interleaved per "
            "problem; optional accuracy runs vs vanilla at --accuracy-baseline-gen. Writes OUT.json "
            "(results format, kind 'ladder'), OUT.md, OUT.png and OUT.records.jsonl (one line per finished "
            "run; --resume continues from it). Embedded-model parameters: "
            f"{EMBEDDED_DEFAULTS}, threshold 0.9 for parallel methods."),
    )
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="M",
                   help=f"methods (default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--gen-lengths", nargs="+", type=int, default=list(DEFAULT_GEN_LENGTHS), metavar="L",
                   help="gen lengths (default: 256 512 1024 2048)")
    p.add_argument("--n", type=int, default=10, help="problems timed per gen length (default 10)")
    p.add_argument("--accuracy-n", type=int, default=0,
                   help="problems for the accuracy runs (default 0: accuracy from the speed problems only)")
    p.add_argument("--accuracy-baseline-gen", type=int, default=256,
                   help="gen length of the vanilla accuracy baseline (default 256)")
    p.add_argument("--accuracy-methods", nargs="+", default=None, metavar="M",
                   help="methods for the accuracy runs (default: every non-vanilla method)")
    p.add_argument("--accuracy-batch-size", type=int, default=8,
                   help="prompts per generate call in the (untimed) accuracy runs (default 8)")
    p.add_argument("--task", default="arith", help="task of the problems (default: arith, the embedded model's)")
    p.add_argument("--data", default=None, help="local dataset file for the task")
    p.add_argument("--train-data", default=None, help="local train split for few-shot examples")
    p.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples (task default)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the chat template (default: when the tokenizer has one)")
    p.add_argument("--out", default="benchmarks/results/ladder",
                   help="output prefix: OUT.json, OUT.md, OUT.png, OUT.records.jsonl "
                        "(default: benchmarks/results/ladder)")
    p.add_argument("--resume", action="store_true", help="continue the run recorded in OUT.records.jsonl")
    p.add_argument("--overwrite", action="store_true", help="discard an existing OUT.records.jsonl")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_args(p)
    p.set_defaults(threads=2)  # recorded in the JSON; --threads N changes it
    add_decode_args(p)
    p.set_defaults(func=cmd_bench, _parser=p)
