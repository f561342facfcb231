"""The flag library of the ``dpad`` subcommands: one-line argparse errors, ranged numbers, the model
flags and one flag per :class:`~dpad.config.DecodeConfig` field.

It sits below every command (``dpad.cli`` and the ``eval``, ``bench``, ``analyze``, ``serve`` and
``train`` subcommands import it; it imports none of them), so that nothing but the entry point imports
:mod:`dpad.cli`. Numeric flags declare their range with :func:`int_in` / :func:`float_in`; the decoding
flags take type, range, help and aliases from :data:`dpad.config.FIELDS`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any, NoReturn

from .config import FIELDS, PRESETS, DecodeConfig, Knob, preset
from .errors import ConfigError, short_repr

__all__ = ["MAX_THREADS", "ArgumentParser", "add_decode_args", "add_model_args", "decode_config_from_args",
           "decode_overrides", "float_in", "int_in", "knob_type", "one_line", "parse_ids"]

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

def knob_type(knob: Knob) -> Callable[[str], Any]:
    """An argparse ``type`` for one DecodeConfig field: its type and range from :data:`~dpad.config.FIELDS`
    (``none`` is refused: an unset flag already leaves the field to the preset or the default)."""
    def parse(text: str) -> Any:
        try:
            return knob.coerce(text, allow_none=False)
        except ConfigError:
            raise argparse.ArgumentTypeError(f"must be {knob.expects()}, got {short_repr(text)}") from None

    parse.__name__ = knob.type.__name__
    return parse


def knob_help(knob: Knob) -> str:
    """The field's help, its range (choices show in the metavar) and its default or what unset means."""
    notes = [] if knob.choices else [knob.expects()]
    if knob.nullable:
        notes.append(f"unset: {knob.unset}")
    elif knob.type is not bool:
        notes.append(f"default {knob.default}")
    return f"{knob.help} ({'; '.join(notes)})"


def add_decode_args(p: argparse.ArgumentParser) -> None:
    """One flag per DecodeConfig field, derived from :data:`~dpad.config.FIELDS` (default: unset, so
    presets and defaults show through)."""
    g = p.add_argument_group("decoding (see DecodeConfig)")
    g.add_argument("--preset", choices=sorted(PRESETS) + sorted(f"{n}-parallel" for n in PRESETS),
                   metavar="NAME", help=f"start from a named preset: {', '.join(sorted(PRESETS))} (+ -parallel)")
    for knob in FIELDS.values():
        flag = "--" + knob.name.replace("_", "-")
        if knob.type is bool:
            g.add_argument(flag, dest=knob.name, action=argparse.BooleanOptionalAction, default=None,
                           help=knob.help)
            continue
        names = [flag] + [f"-{a}" for a in knob.aliases]
        g.add_argument(*names, dest=knob.name, type=knob_type(knob), default=None, help=knob_help(knob),
                       metavar=knob.name.upper() if not knob.choices else "{" + ",".join(knob.choices) + "}")


def decode_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The decoding flags given explicitly on the command line (unset ones are None)."""
    return {name: getattr(ns, name) for name in FIELDS if getattr(ns, name, None) is not None}


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


FAST_METHOD = "parallel+prefix+dpad"
"""What ``dpad generate`` and ``dpad serve`` run by default: the family's fast method, as ``dpad eval
--method parallel+prefix+dpad`` resolves it (the embedded model: threshold 0.99, prefix cache, DPad
W=128 k=4 a=2; LLaDA / Dream: the paper's DPad settings with Fast-dLLM's threshold 0.9)."""


def add_method_arg(p: argparse.ArgumentParser, default: str = FAST_METHOD) -> None:
    p.add_argument("--method", default=None,
                   help=f"decoding method, as in dpad eval: vanilla (the reference: one token per step, no cache), "
                        f"et, dpad, parallel, parallel+prefix, parallel+prefix+dpad, ... (default: {default}, or "
                        "the preset's own method with --preset); every decoding flag overrides it")


def model_family_of(model: str | None, revision: str | None = None) -> str:
    """The preset family of ``--model`` from its config.json alone (no weights are read)."""
    from .api import embedded_model_path
    from .eval.methods import model_family
    from .models.loading import read_config

    if model is None:
        return "embedded"
    try:
        config = read_config(model, revision)
    except ConfigError:
        config = None
    return model_family(embedded_model_path() if model is None else model, config)


def method_config_from_args(ns: argparse.Namespace, default: str = FAST_METHOD) -> tuple[str, DecodeConfig]:
    """(method label, DecodeConfig) of ``--method`` (default: ``default``; with ``--preset`` and no
    ``--method``, the preset alone) for the model family of ``--model``, explicit flags on top."""
    from .eval.methods import resolve_config

    method = getattr(ns, "method", None)
    if method is None and not getattr(ns, "preset", None):
        method = default
    family = model_family_of(getattr(ns, "model", None), getattr(ns, "revision", None))
    return resolve_config(method, preset_name=getattr(ns, "preset", None), family=family,
                          overrides=decode_overrides(ns))
