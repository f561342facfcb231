"""``dpad`` command line: thin subcommands over the library.

Every subcommand turns a :class:`~dpad.errors.DpadError` (bad input) into one readable line on
stderr and exit status 2 — no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import Any

from .config import PRESETS, DecodeConfig, preset
from .errors import ConfigError, DpadError

# Help text and short aliases for the decoding knobs (one flag per DecodeConfig field).
_HELP = {
    "gen_length": "tokens to generate (a multiple of --block-length)",
    "block_length": "block size of semi-autoregressive decoding",
    "steps": "total decoding steps for the fixed schedule (default: gen_length, one token per step)",
    "confidence": "score used to pick positions: low_confidence, random, maskgit_plus, topk_margin, entropy, origin",
    "schedule": "fixed schedule: auto, llada (even split) or dream (linear timesteps)",
    "threshold": "Fast-dLLM parallel decoding: commit every position with confidence >= this (top-1 always)",
    "factor": "Fast-dLLM factor rule (instead of --threshold)",
    "entropy_bound": "EB-sampler gamma (nats): commit the confidence-ranked prefix while its summed entropy "
                     "minus its largest entropy stays <= gamma (instead of --threshold)",
    "dependency_distance": "D: with a parallel rule, never commit two positions within D of each other in one "
                           "step unless both pass --dependency-threshold",
    "dependency_threshold": "the stricter confidence bound of --dependency-distance (default: never)",
    "temperature": "sampling temperature (0 = greedy)",
    "top_p": "nucleus filter before sampling",
    "top_k": "top-k filter before sampling",
    "alg_temp": "Dream: sample positions with softmax(conf / alg_temp) instead of top-k",
    "cfg_scale": "classifier-free guidance scale (no cache)",
    "eps": "Dream schedule: final timestep",
    "suffix": "suffix policy: full (vanilla), window, gaussian (DPad), uniform (ablation)",
    "window": "W: suffix window size in tokens",
    "sigma": "k: the Gaussian's spread (window end at k standard deviations)",
    "scale": "a: keep-probability scale, p(d) = a * phi(k d / (W-1))",
    "uniform_keep": "tokens kept by --suffix uniform",
    "cache": "KV cache: none, prefix or dual",
    "early_termination": "stop once a finished block holds EOS",
    "logits_eos_inf": "LLaDA option: EOS logit -inf (EOS is never proposed)",
    "confidence_eos_eot_inf": "LLaDA option: EOS/EoT get confidence 0 (committed last)",
    "seed": "seed of the sampling and DPad dropout generators",
    "compat": "reproduce a reference implementation's quirks: none, fast-dllm, dpad-dream",
}
_ALIASES = {"sigma": ["-k"], "scale": ["-a"], "window": ["-W"]}


def add_decode_args(p: argparse.ArgumentParser) -> None:
    """One flag per DecodeConfig field (default: unset, so presets and defaults show through)."""
    g = p.add_argument_group("decoding (see DecodeConfig)")
    g.add_argument("--preset", choices=sorted(PRESETS) + sorted(f"{n}-parallel" for n in PRESETS),
                   metavar="NAME", help=f"start from a named preset: {', '.join(sorted(PRESETS))} (+ -parallel)")
    for f in fields(DecodeConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        names = [flag] + _ALIASES.get(f.name, [])
        if f.type in ("bool",) or isinstance(f.default, bool):
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=_HELP.get(f.name))
            continue
        typ: Any = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float}.get(
            str(f.type), float if isinstance(f.default, float) else int if isinstance(f.default, int) else str)
        g.add_argument(*names, dest=f.name, type=typ, default=None, help=_HELP.get(f.name))


def decode_config_from_args(ns: argparse.Namespace) -> DecodeConfig:
    overrides = {f.name: getattr(ns, f.name) for f in fields(DecodeConfig)
                 if f.name != "extra" and getattr(ns, f.name, None) is not None}
    if getattr(ns, "preset", None):
        return preset(ns.preset, **overrides)
    return DecodeConfig(**overrides)


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint directory or Hugging Face Hub id ORG/NAME, taken from the local hub cache "
                        "first (default: the embedded model)")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit of --model (default: main)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, float16, float64 or auto (default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise ConfigError(f"--prompt-ids must be comma-separated integers, e.g. 1,2,3 (got {text!r})") from e


def cmd_generate(ns: argparse.Namespace) -> int:
    import torch

    from .api import generate, load

    if (ns.prompt is None) == (ns.prompt_ids is None):
        raise ConfigError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    cfg = decode_config_from_args(ns)  # validated before the model loads
    prompt: Any = ns.prompt if ns.prompt is not None else parse_ids(ns.prompt_ids)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    lm = load(ns.model, device=ns.device, dtype=ns.dtype, revision=ns.revision)
    chat = ns.chat
    out = generate(lm, prompt, cfg, chat=chat)
    if ns.json:
        print(json.dumps({"method": cfg.method_name(), "config": cfg.to_dict(), **out.to_dict()}))
    else:
        print(out.text if out.text is not None else ",".join(map(str, out.response_ids)))
        s = out.stats
        print(f"[{cfg.method_name()}] nfe={s['nfe']} response_tokens={s['response_tokens']} "
              f"time={s['total_time_s']:.3f}s (model {s['model_time_s']:.3f}s)", file=sys.stderr)
    return 0


def cmd_train(ns: argparse.Namespace, rest: list[str]) -> int:
    from .train import main as train_main

    return train_main(rest)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="dpad", description="Fast decoding for diffusion language models.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="decode one prompt")
    add_model_args(g)
    g.add_argument("--prompt", help="prompt text")
    g.add_argument("--prompt-ids", help="prompt token ids, comma-separated (token-level use)")
    g.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the tokenizer's chat template (default: for instruct checkpoints, i.e. a chat template and no 'base' in the name)")
    g.add_argument("--json", action="store_true", help="machine-readable output: ids, text, nfe, timings")
    add_decode_args(g)
    g.set_defaults(func=cmd_generate)
    sub.add_parser("train", help="train the embedded model (see `dpad train --help`)", add_help=False)
    for modname in ("dpad.eval.cli", "dpad.bench.cli", "dpad.analysis.cli", "dpad.serve.cli"):
        try:
            mod = __import__(modname, fromlist=["register"])
        except ImportError:
            continue
        mod.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["train"]:
            return cmd_train(argparse.Namespace(), argv[1:])
        ap = build_parser()
        ns = ap.parse_args(argv)
        return int(ns.func(ns) or 0)
    except DpadError as e:
        print(f"dpad: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dpad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
