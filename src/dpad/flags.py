"""The flag library of the ``dpad`` subcommands: one-line argparse errors, ranged numbers, the model
flags and one flag per :class:`~dpad.config.DecodeConfig` field.

It sits below every command (``dpad.cli`` and the ``eval``, ``bench``, ``analyze``, ``serve`` and
``train`` subcommands import it; it imports none of them), so that nothing but the entry point imports
:mod:`dpad.cli`. Numeric flags declare their range with :func:`int_in` / :func:`float_in`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any, NoReturn

from .config import PRESETS, DecodeConfig, preset
from .errors import ConfigError, short_repr

__all__ = ["MAX_THREADS", "ArgumentParser", "add_decode_args", "add_model_args", "decode_config_from_args",
           "decode_overrides", "float_in", "int_in", "one_line", "parse_ids"]

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


def decode_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The decoding flags given explicitly on the command line (unset ones are None)."""
    return {f.name: getattr(ns, f.name) for f in fields(DecodeConfig)
            if f.name != "extra" and getattr(ns, f.name, None) is not None}


def decode_config_from_args(ns: argparse.Namespace) -> DecodeConfig:
    """The DecodeConfig of the decoding flags: ``--preset`` (if given) with the explicit flags on top."""
    overrides = decode_overrides(ns)
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
