"""``dpad`` command line: thin subcommands over the library.

Bad input — a flag argparse refuses, a value out of its range, a :class:`~dpad.errors.DpadError` —
gives one readable line on stderr and exit status 2, before any heavy work (no model is loaded, no
traceback). Numeric flags declare their range with :func:`int_in` / :func:`float_in`; decoding
flags are checked by :class:`~dpad.config.DecodeConfig`, the single source of their ranges.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import fields
from typing import Any, NoReturn

from .config import PRESETS, DecodeConfig, preset
from .errors import ConfigError, DpadError, short_repr

MAX_THREADS = 1024


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``dpad generate: error: ... (see --help)``), exit 2.
    Subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see `{self.prog} --help`)\n")


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``lo..hi`` (inclusive)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in {lo}..{hi}, got {short_repr(text)}")
        return v

    parse.__name__ = "int"
    return parse


def float_in(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[lo, hi]``."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = math.nan
        if not (math.isfinite(v) and lo <= v <= hi):
            raise argparse.ArgumentTypeError(f"must be a number in [{lo:g}, {hi:g}], got {short_repr(text)}")
        return v

    parse.__name__ = "float"
    return parse

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
    p.add_argument("--threads", type=int_in(1, MAX_THREADS), default=None, help="torch CPU threads")
    p.add_argument("--compile", action="store_true",
                   help="run the model forward through torch.compile (warm-up compile printed; same tokens; "
                        "on CPU it is not faster on small models, see docs/performance.md)")


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise ConfigError(f"--prompt-ids must be comma-separated integers, e.g. 1,2,3 (got {short_repr(text)})") from e


def check_before_load(model: str | None, cfg: DecodeConfig, prompt: str | list[int] | None = None,
                      revision: str | None = None) -> None:
    """What can be checked from the checkpoint's config.json alone (no weights): the prompt text is
    valid Unicode, token ids are in the vocabulary, prompt + gen_length fits the model's context
    (a text prompt's length is checked again once tokenized)."""
    from .api import check_text, embedded_model_path
    from .engine.loop import check_length
    from .models import read_args

    if isinstance(prompt, str):
        check_text(prompt, "--prompt")
    args = read_args(model if model is not None else embedded_model_path(), revision)
    if isinstance(prompt, list):
        bad = [t for t in prompt if not 0 <= t < args.vocab_size]
        if bad:
            raise ConfigError(f"--prompt-ids {short_repr(bad[:5])} are outside the vocabulary [0, {args.vocab_size})")
    if isinstance(prompt, list):
        check_length(len(prompt), cfg, args.max_seq_len)
    elif cfg.gen_length > args.max_seq_len:
        raise ConfigError(f"gen_length={cfg.gen_length} is too long: the model's maximum sequence length is "
                          f"{args.max_seq_len} tokens, prompt included")


def cmd_generate(ns: argparse.Namespace) -> int:
    import torch

    from .api import generate, load

    if (ns.prompt is None) == (ns.prompt_ids is None):
        raise ConfigError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    cfg = decode_config_from_args(ns)  # validated before the model loads
    prompt: Any = ns.prompt if ns.prompt is not None else parse_ids(ns.prompt_ids)
    check_before_load(ns.model, cfg, prompt, ns.revision)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    lm = load(ns.model, device=ns.device, dtype=ns.dtype, revision=ns.revision, compile=ns.compile)
    chat = ns.chat
    out = generate(lm, [prompt], cfg, chat=chat)[0]  # a list of one: [] is the empty prompt, not no prompt
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
    ap = ArgumentParser(prog="dpad", description="Fast decoding for diffusion language models.")
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
        try:
            if argv[:1] == ["train"]:
                return cmd_train(argparse.Namespace(), argv[1:])
            ns = build_parser().parse_args(argv)
        except SystemExit as e:  # --help (0) or a one-line usage error (2)
            return e.code if isinstance(e.code, int) else 2
        return int(ns.func(ns) or 0)
    except DpadError as e:
        print(f"dpad: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dpad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
