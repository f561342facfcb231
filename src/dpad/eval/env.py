"""The environment a result was measured in (recorded in every results JSON)."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["collect_env", "command_args", "command_from_namespace", "command_line", "cpu_name", "git_revision"]


def git_revision(cwd: str | Path | None = None) -> str | None:
    """``HEAD``'s hash of the dpad checkout (``+dirty`` when tracked files changed), or None."""
    root = Path(cwd) if cwd else Path(__file__).resolve().parents[3]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "") if rev else None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed (``dpad eval ...``), shell-quoted."""
    args = list(sys.argv if argv is None else argv)
    if args and Path(args[0]).name in ("dpad", "cli.py", "__main__.py"):
        args[0] = "dpad"
    return " ".join(shlex.quote(a) for a in args)


def command_args(argv: list[str], elide: str = "--note") -> str:
    """Shell-quoted arguments, with the (long) value of ``elide`` replaced by a pointer to it."""
    out, skip = [], False
    for a in argv:
        if skip:
            out.append("'<the note below>'")
            skip = False
        elif a == elide:
            out.append(a)
            skip = True
        elif a.startswith(elide + "="):
            out.append(f"{elide}='<the note below>'")
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


def command_from_namespace(parser: argparse.ArgumentParser, ns: argparse.Namespace, prog: str) -> str:
    """The command that reproduces ``ns`` (flags whose value differs from the default), e.g.
    ``dpad bench --gen-lengths 1024 --n 10``; independent of how the process was launched."""
    parts = prog.split()
    for action in parser._actions:  # noqa: SLF001 (argparse has no public accessor)
        if not action.option_strings or isinstance(action, argparse._HelpAction):  # noqa: SLF001
            continue
        value = getattr(ns, action.dest, None)
        if value == action.default:
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        flag = max(longs, key=len) if longs else action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            parts.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def collect_env(device: Any = None, dtype: Any = None, world_size: int = 1) -> dict[str, Any]:
    """device, dtype, threads, torch/transformers/python versions, git revision, CPU (and GPU)."""
    import torch

    try:
        import transformers

        tf_version: str | None = transformers.__version__
    except ImportError:
        tf_version = None
    dev = str(device) if device is not None else None
    env: dict[str, Any] = {
        "device": dev,
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": tf_version,
        "python": platform.python_version(),
        "git": git_revision(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "world_size": world_size,
    }
    if dev is not None and dev.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(dev))
    return env
