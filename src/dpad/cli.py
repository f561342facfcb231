"""``dpad`` command line: thin subcommands over the library.

Bad input — a flag argparse refuses, a value out of its range, a :class:`~dpad.errors.DpadError` —
gives one readable line on stderr and exit status 2, before any heavy work (no model is loaded, no
traceback). The flags themselves come from :mod:`dpad.flags`, which every subcommand imports;
nothing but the entry point imports this module.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .config import DecodeConfig
from .errors import ConfigError, DpadError, short_repr
from .flags import (
    ArgumentParser,
    add_decode_args,
    add_method_arg,
    add_model_args,
    method_config_from_args,
    one_line,
    parse_ids,
)


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
    method, cfg = method_config_from_args(ns)  # validated before the model loads
    prompt: Any = ns.prompt if ns.prompt is not None else parse_ids(ns.prompt_ids)
    check_before_load(ns.model, cfg, prompt, ns.revision)
    if ns.threads:
        torch.set_num_threads(ns.threads)
    lm = load(ns.model, device=ns.device, dtype=ns.dtype, revision=ns.revision, compile=ns.compile)
    chat = ns.chat
    out = generate(lm, [prompt], cfg, chat=chat)[0]  # a list of one: [] is the empty prompt, not no prompt
    if ns.json:
        print(json.dumps({"method": method, "config": cfg.to_dict(), **out.to_dict()}))
    else:
        print(out.text if out.text is not None else ",".join(map(str, out.response_ids)))
        s = out.stats
        print(f"[{method}] nfe={s['nfe']} response_tokens={s['response_tokens']} "
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
    add_method_arg(g)
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
