"""Bad command lines: every one gives exit status 2 and exactly one line on stderr, with no traceback,
before any heavy work (the model is never loaded: every way to load it raises here, so a refusal
came before it; no wall-clock bound). Driven in-process through
``dpad.cli.main``; a subprocess only where real argv bytes are needed. Also: the empty prompt is
unconditional generation, the same in the CLI and the library."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

import dpad
import dpad.api
import dpad.models
from dpad.cli import build_parser, main
from dpad.config import DecodeConfig
from dpad.train import trainer

DECODE_FLAGS = {f.name for f in fields(DecodeConfig)}


class Reached(Exception):
    """The command got as far as loading the model: the input was accepted."""


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def load(*a: object, **kw: object) -> None:
        raise Reached

    monkeypatch.setattr(dpad.api, "load", load)
    monkeypatch.setattr(dpad.models, "load", load)
    monkeypatch.setattr(trainer, "train", load)  # dpad train: the training run


def run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[object, str]:
    try:
        rc: object = main(argv)
    except Reached:
        rc = "reached"
    _, err = capsys.readouterr()
    return rc, err


def assert_one_line(argv: list[str], rc: object, err: str) -> None:
    """Exit 2 (so the command stopped before the model load, which raises Reached), one line."""
    assert rc == 2, f"{argv}: exit {rc!r} (stderr: {err!r})"
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0], f"{argv}: {len(lines)} lines on stderr: {err!r}"
    assert "Traceback" not in err and "error" in lines[0], (argv, err)


def bases(tmp: Path) -> dict[str, list[str]]:
    """A valid invocation of each subcommand (it reaches model loading)."""
    return {
        "generate": ["generate", "--prompt", "hi"],
        "eval": ["eval", "--task", "arith", "--out", str(tmp / "eval"), "--no-progress"],
        "bench": ["bench", "--out", str(tmp / "bench" / "l"), "--gen-lengths", "32", "--n", "1", "--no-plot",
                  "--no-progress"],
        "serve": ["serve", "--port", "0"],
        "analyze attention": ["analyze", "attention", "--out", str(tmp / "a")],
        "analyze migration": ["analyze", "migration", "--out", str(tmp / "m"), "--n-problems", "1"],
        "analyze keep": ["analyze", "keep", "--out", str(tmp / "k"), "--run"],
        "train": ["train", "--out", str(tmp / "t")],
    }


def parsers() -> dict[str, argparse.ArgumentParser]:
    def subs(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                return dict(a.choices)
        return {}

    out = {}
    for name, p in subs(build_parser()).items():
        nested = subs(p)
        if nested:
            out.update({f"{name} {n}": q for n, q in nested.items()})
        else:
            out[name] = p
    out["train"] = trainer.build_parser()  # `dpad train` parses its own flags
    return out


def numeric_flags(p: argparse.ArgumentParser, decode: bool) -> list[tuple[str, str]]:
    """(flag, 'int'|'float') of every numeric option; the decoding flags only where ``decode``."""
    out = []
    for a in p._actions:
        kind = getattr(a.type, "__name__", None)
        if kind in ("int", "float") and a.option_strings and (decode or a.dest not in DECODE_FLAGS):
            out.append((a.option_strings[0], kind))
    return out


def test_valid_bases_reach_the_model(tmp_path: Path, no_load: None, capsys: pytest.CaptureFixture) -> None:
    for name, argv in bases(tmp_path).items():
        rc, err = run(argv, capsys)
        assert rc == "reached", (name, rc, err)


# every numeric flag with these values must be refused; a huge number may only be refused or accepted
REFUSED = ["-1", "abc", "nan", "inf", "1e400"]
HUGE = "1" * 40


def test_numeric_flag_sweep(tmp_path: Path, no_load: None, capsys: pytest.CaptureFixture) -> None:
    all_parsers = parsers()
    base = bases(tmp_path)
    assert set(all_parsers) == set(base), "a new subcommand needs a base invocation here"
    n = 0
    for name, p in all_parsers.items():
        flags = numeric_flags(p, decode=name == "generate")  # decoding flags are shared: swept once
        assert flags or name == "generate"
        for flag, kind in flags:
            for v in [*REFUSED, HUGE]:
                argv = [*base[name], f"{flag}={v}"]
                rc, err = run(argv, capsys)
                n += 1
                if v == HUGE and (rc == "reached" and kind == "float"):
                    continue  # e.g. --factor 1e39 is a valid (if odd) setting
                assert_one_line(argv, rc, err)
    print(f"numeric flag sweep: {n} invocations")
    assert n > 200


def test_bad_invocations(tmp_path: Path, no_load: None, capsys: pytest.CaptureFixture) -> None:
    b = bases(tmp_path)
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    cases = [
        [*b["generate"], "--threads", "-1"], [*b["eval"], "--threads", "-1"], [*b["serve"], "--threads", "-1"],
        [*b["analyze attention"], "--threads", "0"], [*b["bench"], "--threads", "-1"],
        [*b["generate"], "--seed", "18446744073709551616"], [*b["eval"], "--seed", "18446744073709551616"],
        [*b["serve"], "--seed", "18446744073709551616"], [*b["bench"], "--seed", "-5"],
        ["generate", "--prompt", "a\udcffb"],  # argv bytes b"a\xffb" as Python decodes them (surrogateescape)
        ["generate", "--prompt", "\ud800"],
        [*b["generate"], "--steps", "1000000000"], [*b["eval"], "--steps", "1000000000"],
        [*b["generate"], "--gen-length", "8192"], [*b["generate"], "--gen-length", "100"],
        ["generate", "--prompt-ids", "1,x"], ["generate", "--prompt-ids", "99999"],
        ["generate", "--prompt-ids", "-3"], ["generate"], ["generate", "--prompt", "a", "--prompt-ids", "1"],
        [*b["generate"], "--preset", "nope"], [*b["generate"], "--suffix", "uniform"],
        [*b["generate"], "--threshold", "2"], [*b["generate"], "--top-p", "2"],
        [*b["generate"], "--temperature", "1e308"], [*b["generate"], "--uniform-keep", "-1"],
        [*b["generate"], "--cache", "lru"], [*b["generate"], "--no-such-flag"], ["frobnicate"], [],
        ["eval", "--task", "arith", "--out", str(not_dir / "sub")], ["eval", "--task", "arith", "--out", str(not_dir)],
        ["eval", "--task", "nope"], [*b["eval"], "--limit", "0"], [*b["eval"], "--method", "warp"],
        ["analyze", "attention", "--out", str(not_dir / "x")], ["bench", "--out", str(not_dir / "x" / "l")],
        ["serve", "--port", port], ["serve", "--host", "192.0.2.1", "--port", "0"],
        [*b["serve"], "--shutdown-timeout", "-1"], [*b["serve"], "--max-batch-size", "0"],
        [*b["serve"], "--log-level", "loud"], [*b["bench"], "--gen-lengths", "0"],
        [*b["analyze migration"], "--n-problems", "0"], [*b["train"], "--lr", "nan"], [*b["train"], "--dim", "0"],
        [*b["train"], "--no-such-flag"],
    ]
    try:
        for argv in cases:
            rc, err = run(argv, capsys)
            assert_one_line(argv, rc, err)
    finally:
        busy.close()
    rc, err = run(["eval", "--task", "arith", "--out", str(not_dir / "sub")], capsys)
    assert "--out" in err and "not a writable directory" in err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        _, err = run(["serve", "--port", str(busy.getsockname()[1])], capsys)
        assert "port is in use" in err
    finally:
        busy.close()
    _, err = run(["generate", "--prompt", "a\udcffb"], capsys)
    assert "0xff" in err and "not UTF-8" in err


def test_invalid_utf8_argv_in_a_real_process() -> None:
    """The bytes b'a\\xffb' on a real command line: one line, exit 2 (no tokenizer TypeError)."""
    r = subprocess.run([sys.executable, "-m", "dpad.cli", "generate", "--prompt", b"a\xffb"],
                       capture_output=True, timeout=120)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "0xff" in err


def test_empty_prompt_is_unconditional_generation(capsys: pytest.CaptureFixture) -> None:
    """`--prompt "" --no-chat` and `--prompt-ids ""` decode from no prompt at all, the same tokens as the
    library's unconditional generation."""
    common = ["--gen-length", "32", "--threshold", "0.9", "--device", "cpu", "--threads", "1", "--json"]
    outs = []
    for argv in (["generate", "--prompt", "", "--no-chat", *common], ["generate", "--prompt-ids", "", *common]):
        assert main(argv) == 0
        outs.append(json.loads(capsys.readouterr().out))
    lm = dpad.load(device="cpu")
    lib = dpad.generate(lm, [[]], DecodeConfig(gen_length=32, threshold=0.9))[0]
    for o in outs:
        assert o["prompt_ids"] == [] and o["generated_ids"] == lib.generated_ids and len(o["generated_ids"]) == 32
    # with the chat template (the default for this tokenizer) "" is an empty user turn, not an empty prompt
    assert dpad.generate(lm, "", DecodeConfig(gen_length=32, threshold=0.9)).prompt_ids != []
