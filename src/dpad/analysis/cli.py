"""``dpad analyze {attention,migration,keep}``: see DPad's observations on your own model.

Picked up by ``dpad.cli`` through :func:`register`. Every command writes PNG + CSV + JSON into
``--out`` (default ``dpad-analysis/``) and prints the files and a one-line summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..config import MAX_LENGTH, MAX_SEED
from ..errors import ConfigError
from ..flags import int_in


def _model_label(ns: argparse.Namespace) -> str:
    return "embedded model" if ns.model is None else Path(ns.model).name


def _setup(ns: argparse.Namespace) -> Any:
    import torch

    from ..api import load

    if ns.threads is not None:
        if ns.threads < 1:
            raise ConfigError("--threads must be >= 1")
        torch.set_num_threads(ns.threads)
    return load(ns.model, device=ns.device, dtype=ns.dtype, revision=ns.revision, compile=ns.compile)


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompt (default: test word problem 0)")
    g.add_argument("--prompt", help="prompt text (the tokenizer's chat template is applied when it has one)")
    g.add_argument("--prompt-ids", help="prompt token ids, comma-separated")
    g.add_argument("--problem-index", type=int_in(0, 10**6), default=None,
                   help="index of a test-split word problem (dpad.synthetic.arith)")
    g.add_argument("--problem-seed", type=int_in(0, MAX_SEED), default=0, help="seed of the word-problem stream (default 0)")


def _check_prompt_args(ns: argparse.Namespace) -> None:
    if sum(getattr(ns, k) is not None for k in ("prompt", "prompt_ids", "problem_index")) > 1:
        raise ConfigError("give at most one of --prompt, --prompt-ids and --problem-index")


def _prompt(lm: Any, ns: argparse.Namespace) -> Any:
    from ..flags import parse_ids
    from .common import resolve_prompt

    ids = parse_ids(ns.prompt_ids) if ns.prompt_ids is not None else None
    return resolve_prompt(lm, ns.prompt, ids, ns.problem_index, ns.problem_seed)


def _out(ns: argparse.Namespace) -> Path:
    from .common import out_dir

    return out_dir(ns.out)


def _report(out: Path, files: list[str], line: str, t0: float) -> None:
    for f in files:
        print(out / f)
    print(f"{line} [{time.perf_counter() - t0:.1f}s]", file=sys.stderr)


def cmd_attention(ns: argparse.Namespace) -> int:
    from ..flags import decode_config_from_args
    from .attention import analyze_attention

    t0 = time.perf_counter()
    cfg = decode_config_from_args(ns)
    _check_prompt_args(ns)
    out = _out(ns)
    lm = _setup(ns)
    s = analyze_attention(lm, _prompt(lm, ns), cfg, out, label=_model_label(ns))
    m = s["mass"]
    near = s["layer_avg_attention_at_distance"]
    _report(out, s["files"],
            f"attention: {s['forwards_recorded']} forwards; mass prefix {m['prefix']['layer_avg']:.1%} "
            f"block {m['block']['layer_avg']:.1%} suffix {m['suffix']['layer_avg']:.1%}; per-token attention "
            + ", ".join(f"d={d}: {v:.2g}" for d, v in near.items()), t0)
    return 0


def cmd_migration(ns: argparse.Namespace) -> int:
    from ..flags import decode_config_from_args
    from .common import problem_prompts
    from .migration import analyze_migration

    t0 = time.perf_counter()
    if ns.one_per_step:
        if ns.threshold not in (None, 0.9) or ns.factor is not None:
            raise ConfigError("--one-per-step decodes without --threshold/--factor: give only one of them")
        ns.threshold = None
    elif ns.factor is not None and ns.threshold == 0.9:
        ns.threshold = None  # --factor replaces the default --threshold 0.9
    cfg = decode_config_from_args(ns)
    if cfg.suffix != "full":
        raise ConfigError("migration compares the full suffix with a pruned one: use --suffix full")
    if ns.n_problems < 1:
        raise ConfigError("--n-problems must be >= 1")
    out = _out(ns)
    lm = _setup(ns)
    idx = list(range(ns.first_problem, ns.first_problem + ns.n_problems))
    prompts = problem_prompts(lm, idx, ns.problem_seed)
    s = analyze_migration(lm, prompts, cfg, out, min_distance=ns.min_distance, top=ns.top,
                          remove_blocks=ns.remove_blocks, radius=ns.radius, select=ns.select,
                          label=_model_label(ns), indices=idx)
    line = (f"migration: {s['n_problems']} problems; identical responses {s['fraction_identical_responses']:.0%}, "
            f"same answer {s['fraction_same_answer']:.0%}")
    if s["accuracy_full"] is not None:
        line += f", accuracy {s['accuracy_full']:.0%} (full) vs {s['accuracy_removed']:.0%} (removed)"
    fb = s["first_block"]
    if fb:
        line += (f"; first block: neighbours got {fb['share_of_removed_mass_gained']['neighbours']:.0%} of the "
                 f"removed mass (x{fb['after_over_before']['neighbours']:.2f} vs x"
                 f"{fb['after_over_before']['other far suffix']:.2f} for other far tokens)")
    _report(out, s["files"], line, t0)
    return 0


def cmd_keep(ns: argparse.Namespace) -> int:
    from ..flags import decode_config_from_args
    from .keep import analyze_keep

    t0 = time.perf_counter()
    cfg = decode_config_from_args(ns)
    W, k, a = cfg.window if cfg.window is not None else 256, cfg.sigma, cfg.scale
    out = _out(ns)
    if not ns.run:
        s = analyze_keep(out, W, k, a, draws=ns.draws, bin_width=ns.bin)
        _report(out, s["files"], f"keep: W={W} k={k:g} a={a:g}: expected kept per block {s['expected_kept_per_block']:.1f}",
                t0)
        return 0
    cfg = cfg.replace(suffix="gaussian", window=W)
    _check_prompt_args(ns)
    lm = _setup(ns)
    s = analyze_keep(out, W, k, a, lm=lm, prompt=_prompt(lm, ns), cfg=cfg, draws=ns.draws, bin_width=ns.bin,
                     label=_model_label(ns))
    kept = [b["kept"] for b in s["blocks"]]
    _report(out, s["files"],
            f"keep: W={W} k={k:g} a={a:g}: expected kept per block {s['expected_kept_per_block']:.1f}; "
            f"kept per block in the decode {kept}", t0)
    return 0


def register(subparsers: Any) -> None:
    from ..flags import add_decode_args, add_model_args

    ap = subparsers.add_parser("analyze", help="see DPad's observations on a model (attention, migration, keep)",
                               description="Analysis commands; each writes PNG + CSV + JSON into --out. "
                                           "They run with --threads 1 unless told otherwise.")
    sub = ap.add_subparsers(dest="analysis", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        add_model_args(p)
        # one torch thread by default: the forwards of small models gain nothing from intra-op threads
        # and lose a lot on a busy machine (measured 5x slower with 2 threads on a shared 2-core box)
        p.set_defaults(threads=1)
        p.add_argument("--out", default="dpad-analysis", help="output directory (default: dpad-analysis)")

    p = sub.add_parser("attention", help="attention of the current block to the suffix, by distance and layer",
                       description="Decode one prompt (default: vanilla, full suffix) while recording how much "
                                   "attention the current block's queries pay to each suffix token.")
    common(p)
    _add_prompt_args(p)
    add_decode_args(p)
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("migration", help="remove high-attention distant suffix tokens: where does the mass go, "
                                         "does the answer change?",
                       description="Decode word problems with the full suffix and with the top distant "
                                   "suffix tokens removed (Explicit suffix policy). Decodes with Fast-dLLM "
                                   "parallel unmasking (--threshold 0.9) by default for speed; "
                                   "--one-per-step decodes one token per step.")
    common(p)
    p.add_argument("--n-problems", type=int_in(1, 10**5), default=20, help="number of test word problems (default 20)")
    p.add_argument("--first-problem", type=int_in(0, 10**6), default=0, help="index of the first problem (default 0)")
    p.add_argument("--problem-seed", type=int_in(0, MAX_SEED), default=0, help="seed of the word-problem stream (default 0)")
    p.add_argument("--min-distance", type=int_in(0, MAX_LENGTH), default=32,
                   help="only suffix tokens at distance >= this from the block end are removed (default 32)")
    p.add_argument("--top", type=int_in(1, MAX_LENGTH), default=8, help="tokens removed per block (default 8)")
    p.add_argument("--select", choices=("spike", "local", "mean"), default="spike",
                   help="spike: tokens that stand out most in some head against its far-suffix median "
                        "(default); local: against their neighbours (isolated peaks); mean: highest "
                        "layer/head-averaged attention")
    p.add_argument("--remove-blocks", type=int_in(0, MAX_LENGTH), default=0,
                   help="remove only in the first N blocks (default 0: every block)")
    p.add_argument("--radius", type=int_in(0, MAX_LENGTH), default=3, help="neighbours = suffix tokens within this offset (default 3)")
    p.add_argument("--one-per-step", action="store_true",
                   help="decode one token per step (vanilla schedule) instead of the default --threshold 0.9")
    add_decode_args(p)
    p.set_defaults(func=cmd_migration, threshold=0.9)

    p = sub.add_parser("keep", help="DPad keep probability p(d) (and, with --run, the kept map of a decode)",
                       description="Plot p(d) = a*phi(k*d/(W-1)) with the expected kept count; with --run "
                                   "decode a prompt with suffix=gaussian and map the kept suffix tokens.")
    common(p)
    _add_prompt_args(p)
    p.add_argument("--run", action="store_true", help="also decode a prompt with suffix=gaussian")
    p.add_argument("--draws", type=int_in(0, 10**7), default=2000,
                   help="blocks drawn from the policy alone for the simulated keep rate (default 2000; 0: none)")
    p.add_argument("--bin", type=int_in(1, MAX_LENGTH), default=16, help="distance bin of the decode's keep rate (default 16)")
    add_decode_args(p)
    p.set_defaults(func=cmd_keep, window=256)
