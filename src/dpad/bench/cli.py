"""``dpad bench``: the speed-up ladder (vanilla ... parallel+dual+dpad over gen lengths)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import MAX_LENGTH, MAX_SEED
from ..errors import ConfigError
from ..eval.methods import EMBEDDED_DEFAULTS, EMBEDDED_PARALLEL
from ..flags import add_decode_args, add_model_args, decode_overrides, float_in, int_in
from ..rules import RULES
from .ladder import DEFAULT_GEN_LENGTHS, DEFAULT_METHODS


def _run_settings(ns: argparse.Namespace) -> dict[str, Any]:
    """What the ladder and the frontier both take from the flags (:class:`~dpad.bench.runner.RunSettings`)."""
    if ns.problem_seed is not None and ns.task != "arith":
        raise ConfigError(f"--problem-seed is an arith option (the task is {ns.task!r})")
    task_options: dict[str, Any] = {k: v for k, v in {
        "data": ns.data, "train_data": ns.train_data, "num_fewshot": ns.num_fewshot, "chat": ns.chat,
        "problem_seed": ns.problem_seed}.items() if v is not None}
    return dict(task=ns.task, task_options=task_options, model=ns.model, revision=ns.revision, device=ns.device,
                dtype=ns.dtype, threads=ns.threads, compile=ns.compile, preset=ns.preset,
                overrides=decode_overrides(ns))


def cmd_frontier(ns: argparse.Namespace) -> int:
    from ..eval.env import command_from_namespace
    from .frontier import DEFAULT_SWEEP, FrontierSettings, parse_sweep, run_frontier, text_table

    sweep = parse_sweep(ns.sweep) if ns.sweep else {k: list(v) for k, v in DEFAULT_SWEEP.items()}
    settings = FrontierSettings(
        **_run_settings(ns), sweep=sweep, base_method=ns.base_method, n=300 if ns.n is None else ns.n,
        batch_size=ns.batch_size, vanilla=not ns.no_vanilla, vanilla_n=ns.vanilla_n,
        vanilla_records=ns.vanilla_records,
        guard_base={"threshold": ns.guard_threshold, "dependency_distance": ns.guard_distance})
    result = run_frontier(settings, ns.out or "benchmarks/results/frontier", resume=ns.resume,
                          overwrite=ns.overwrite, progress=not ns.no_progress, plot=not ns.no_plot,
                          only=ns.only, command=command_from_namespace(ns._parser, ns, "dpad bench"))
    print(text_table(result))
    print("files: " + ", ".join(v for v in result["files"].values() if Path(v).exists()))
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    from ..eval.env import command_from_namespace
    from .ladder import LadderSettings, run_ladder, text_table

    if ns.frontier:
        return cmd_frontier(ns)
    settings = LadderSettings(
        **_run_settings(ns), methods=list(ns.methods), gen_lengths=list(ns.gen_lengths),
        n=10 if ns.n is None else ns.n, accuracy_n=ns.accuracy_n, accuracy_baseline_gen=ns.accuracy_baseline_gen,
        accuracy_methods=list(ns.accuracy_methods) if ns.accuracy_methods else None,
        accuracy_batch_size=ns.accuracy_batch_size)
    result = run_ladder(settings, ns.out or "benchmarks/results/ladder", resume=ns.resume, overwrite=ns.overwrite,
                        progress=not ns.no_progress, plot=not ns.no_plot,
                        command=command_from_namespace(ns._parser, ns, "dpad bench"))
    print(text_table(result))
    for t in result["targets"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        val = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"target: {t['name']}: >= {t['target']:g}, measured {val} ({mark})")
    print("files: " + ", ".join(v for v in result["files"].values() if Path(v).exists()))
    return 0


def _default_sweep() -> str:
    from .frontier import DEFAULT_SWEEP

    return " ".join(f"{k}={','.join(f'{v:g}' if isinstance(v, float) else str(v) for v in vs)}"
                    for k, vs in DEFAULT_SWEEP.items())


def _rule_names() -> str:
    return ", ".join(f"{s.short} ({s.name})" if s.short != s.name else s.name for s in RULES.values())


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="the speed-up ladder: every method at every gen length (latency, tok/s, NFE, accuracy)",
        description=(
            "Speed-up ladder on the same problems for every method: batch 1, one run, methods interleaved per "
            "problem; optional accuracy runs vs vanilla at --accuracy-baseline-gen. Writes OUT.json "
            "(results format, kind 'ladder'), OUT.md, OUT.png and OUT.records.jsonl (one line per finished "
            "run; --resume continues from it). Embedded-model parameters: "
            f"{EMBEDDED_DEFAULTS}; parallel methods use {EMBEDDED_PARALLEL} (the frontier's pick; "
            "METHOD-threshold0.9 for Fast-dLLM's threshold). --frontier runs the accuracy-speed frontier instead "
            "(OUT defaults to benchmarks/results/frontier)."),
    )
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="M",
                   help=f"methods (default: {' '.join(DEFAULT_METHODS)})")
    p.add_argument("--gen-lengths", nargs="+", type=int_in(1, MAX_LENGTH), default=list(DEFAULT_GEN_LENGTHS), metavar="L",
                   help="gen lengths (default: 256 512 1024 2048)")
    p.add_argument("--n", type=int_in(1, 10**6), default=None,
                   help="problems timed per gen length (default 10); with --frontier: problems per point (default 300)")
    p.add_argument("--accuracy-n", type=int_in(0, 10**6), default=0,
                   help="problems for the accuracy runs (default 0: accuracy from the speed problems only)")
    p.add_argument("--accuracy-baseline-gen", type=int_in(1, MAX_LENGTH), default=256,
                   help="gen length of the vanilla accuracy baseline (default 256)")
    p.add_argument("--accuracy-methods", nargs="+", default=None, metavar="M",
                   help="methods for the accuracy runs (default: every non-vanilla method)")
    p.add_argument("--accuracy-batch-size", type=int_in(1, 1024), default=8,
                   help="prompts per generate call in the (untimed) accuracy runs (default 8)")
    p.add_argument("--task", default="arith", help="task of the problems (default: arith, the embedded model's)")
    p.add_argument("--data", default=None, help="local dataset file for the task")
    p.add_argument("--train-data", default=None, help="local train split for few-shot examples")
    p.add_argument("--num-fewshot", type=int_in(0, 64), default=None, help="few-shot examples (task default)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the chat template (default: when the tokenizer has one)")
    p.add_argument("--problem-seed", type=int_in(0, MAX_SEED), default=None,
                   help="arith: seed of the test-split generator (default 0; another seed = another held-out set)")
    p.add_argument("--out", default=None,
                   help="output prefix: OUT.json, OUT.md, OUT.png, OUT.records.jsonl "
                        "(default: benchmarks/results/ladder, or benchmarks/results/frontier with --frontier)")
    f = p.add_argument_group("frontier (--frontier)")
    f.add_argument("--frontier", action="store_true",
                   help="the accuracy-speed frontier instead of the ladder: every parallel rule over a sweep of its "
                        "knob on --base-method, same problems for every point, vanilla as a point")
    f.add_argument("--sweep", nargs="+", default=None, metavar="RULE=V,V",
                   help=f"rules and knob values (default: {_default_sweep()}); rules: {_rule_names()}, "
                        "guard (the dependency guard's strict bound on --guard-threshold, or never)")
    f.add_argument("--base-method", default="parallel+prefix+dpad",
                   help="method every rule runs on (default parallel+prefix+dpad)")
    f.add_argument("--guard-threshold", type=float_in(0, 1), default=0.9, help="guard: the base threshold (default 0.9)")
    f.add_argument("--guard-distance", type=int_in(0, MAX_LENGTH), default=1, help="guard: the distance D (default 1)")
    f.add_argument("--batch-size", type=int_in(1, 1024), default=32, help="rows per generate call (default 32)")
    f.add_argument("--vanilla-n", type=int_in(0, 10**6), default=8,
                   help="problems on which vanilla itself runs (its latency; its outputs checked against et's; "
                        "default 8)")
    f.add_argument("--vanilla-records", default=None, metavar="FILE",
                   help="import vanilla's own per-problem records (a ladder's or frontier's .records.jsonl, matched "
                        "by problem id) instead of decoding those problems through et again")
    f.add_argument("--no-vanilla", action="store_true", help="skip the vanilla point")
    f.add_argument("--only", nargs="+", default=None, metavar="POINT",
                   help="run only these points (e.g. eb=0.1 vanilla vanilla-direct): several processes may share "
                        "one OUT; a final --resume run writes the full result")
    p.add_argument("--resume", action="store_true", help="continue the run recorded in OUT.records.jsonl")
    p.add_argument("--overwrite", action="store_true", help="discard an existing OUT.records.jsonl")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_args(p)
    p.set_defaults(threads=2)  # recorded in the JSON; --threads N changes it
    add_decode_args(p)
    p.set_defaults(func=cmd_bench, _parser=p)
