"""Hostile and ordinary programs in the sandbox; the test process must always survive.

These run on the best layer here (``allow_unsandboxed=True`` so that they also run, guard only,
where no OS isolation exists); tests/test_sandbox_hostile.py holds the corpus run per OS layer.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid

import pytest
from conftest import PLATFORM

from dpad.eval import sandbox
from dpad.eval.sandbox import LAYERS, OPTED_IN, isolation_method


def run_python(code, **kw):
    kw.setdefault("allow_unsandboxed", True)
    return sandbox.run_python(code, **kw)


def check_program(*args, **kw):
    kw.setdefault("allow_unsandboxed", True)
    return sandbox.check_program(*args, **kw)


def check_mbpp(*args, **kw):
    kw.setdefault("allow_unsandboxed", True)
    return sandbox.check_mbpp(*args, **kw)


# the best layer here, and no OS isolation (guard and limits only)
NAMESPACES = [None, "none"]

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"


def test_passing_and_failing_humaneval_check():
    ok = check_program(PROMPT, "    return a + b\n", TEST, "add")
    assert ok.passed and ok.status == "passed", ok.stderr
    bad = check_program(PROMPT, "    return a - b\n", TEST, "add")
    assert not bad.passed and bad.status == "failed"
    assert "AssertionError" in bad.stderr
    syntax = check_program(PROMPT, "    return a +\n", TEST, "add")
    assert syntax.status == "failed" and "SyntaxError" in syntax.stderr


def test_mbpp_check():
    tests = ["assert square(3) == 9", "assert square(-2) == 4"]
    assert check_mbpp("def square(x):\r\n    return x * x", tests).passed
    assert check_mbpp("def square(x):\n    return math.pow(x, 2)", tests, "import math").passed
    assert check_mbpp("def square(x):\n    return x + x", tests).status == "failed"


def test_stdout_and_cwd_is_private_temp_dir():
    res = run_python(
        "import os\nprint(os.getcwd())\nopen('out.txt', 'w').write('hi')\nprint(open('out.txt').read())"
    )
    assert res.passed, res.stderr
    cwd, content = res.stdout.split()
    assert content == "hi"
    assert not os.path.exists(cwd), "temporary directory must be removed"


# The timeout tests assert no wall-clock bound of their own: "timeout" is the status the sandbox
# gives a program it stopped at its limit, and a program that would run far longer (forever, or
# 600 s) came back, so the limit was enforced.
def test_infinite_loop_times_out():
    res = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert res.status == "timeout" and not res.passed
    assert 1.0 <= res.duration_s < 600


def test_sleeping_program_times_out():
    res = run_python("import time\ntime.sleep(600)\nprint('woke up')\n", timeout_s=0.5)
    assert res.status == "timeout" and "woke up" not in res.stdout
    assert 0.5 <= res.duration_s < 600


@pytest.mark.parametrize("isolation", NAMESPACES)
def test_fork_bomb_is_blocked_by_guard(isolation):
    code = textwrap.dedent(
        """
        import os, time
        for _ in range(10000):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
        """
    )
    res = run_python(code, timeout_s=5.0, isolation=isolation)
    assert res.status == "failed"  # refused at the first fork, not stopped at the 5 s limit ("timeout")
    assert "os.fork is disabled" in res.stderr
    for other in (
        "import subprocess\nsubprocess.run(['true'])",
        "import multiprocessing as mp\np = mp.Process(target=print)\np.start()\np.join()",
        "import os\nos.system('true')",
        "import posix\nposix.fork()",
        "import ctypes",
    ):
        res = run_python(other, timeout_s=5.0, isolation=isolation)
        assert res.status == "failed", (other, res)


@pytest.mark.parametrize("isolation", NAMESPACES)
def test_forked_children_never_outlive_the_run(isolation):
    # Guard off: the only protection left is the PID namespace / process group cleanup. The
    # children carry a unique marker in their command line; none may be left afterwards.
    marker = f"dpad-child-marker-{uuid.uuid4().hex}"
    code = textwrap.dedent(
        f"""
        import os, sys, time
        for _ in range(5):
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
        time.sleep(0.3)
        print("forked")
        """
    )
    res = run_python(code, timeout_s=5.0, guard=False, isolation=isolation, max_procs=8)
    assert res.status == "passed" and res.stdout.strip() == "forked", res.stderr
    alive = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        alive.append(entry)
            except OSError:
                pass
    assert alive == []


def _nproc_enforced() -> bool:
    """RLIMIT_NPROC is ignored for root, unless the OS sandbox runs the program as nobody."""
    if os.geteuid() != 0:
        return True
    variant = sandbox._working(isolation_method(allow_unsandboxed=True).split(" ")[0])
    return variant is not None and variant.layer != "none" and variant.privileged


@pytest.mark.skipif(not _nproc_enforced(), reason=PLATFORM + "RLIMIT_NPROC is not enforced for root without an "
                                                  "OS sandbox that drops to nobody (the guard covers it)")
def test_nproc_limit_without_guard():
    code = textwrap.dedent(
        """
        import os, time
        n = 0
        try:
            for _ in range(200):
                if os.fork() == 0:
                    time.sleep(5)
                    os._exit(0)
                n += 1
        except OSError:
            print("limited", n)
        """
    )
    res = run_python(code, timeout_s=10.0, max_procs=8, guard=False)
    assert "limited" in res.stdout, (res.stdout, res.stderr)


def test_memory_blowup_is_an_error_not_a_crash():
    res = run_python(
        "x = []\nwhile True:\n    x.append(bytearray(16 * 1024 * 1024))\n", memory_mb=256, timeout_s=10
    )
    assert res.status == "error" and not res.passed
    assert "MemoryError" in res.stderr
    res = run_python("x = bytearray(8 * 1024 ** 3)\n", memory_mb=256)
    assert res.status == "error"


def test_writes_outside_the_directory_are_blocked():
    target = f"/tmp/dpad_escape_test_{uuid.uuid4().hex}"
    attempts = [
        f"open({target!r}, 'w').write('x')",
        f"import os\nos.close(os.open({target!r}, os.O_WRONLY | os.O_CREAT))",
        f"import pathlib\npathlib.Path({target!r}).write_text('x')",
        f"open('../../../../../../..' + {target!r}, 'a').write('x')",
        f"import os\nos.symlink({target!r}, 'link')\nopen('link', 'w').write('x')",
        f"import os\nos.mkdir({target!r})",
        f"import shutil\nshutil.copy(__file__, {target!r})",
    ]
    try:
        for code in attempts:
            res = run_python(code)
            assert res.status == "failed", (code, res)
            assert "PermissionError" in res.stderr, (code, res.stderr)
            assert not os.path.exists(target), code
    finally:
        if os.path.isdir(target):
            os.rmdir(target)
        elif os.path.lexists(target):
            os.remove(target)


@pytest.mark.parametrize("isolation", NAMESPACES)
def test_killing_the_parent_does_not_work(isolation):
    """Signals to the parent, to another process of the host (a canary this test started) and to
    every process the program may reach: the guard refuses each one, and the canary lives on."""
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        for code in (
            "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
            f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)",
            f"import os, signal\nos.kill({canary.pid}, signal.SIGKILL)",
            "import os, signal\nos.killpg(0, signal.SIGKILL)\nos.kill(-1, signal.SIGKILL)",
        ):
            res = run_python(code, isolation=isolation)
            assert res.status == "failed" and "PermissionError" in res.stderr, (code, res)
            assert canary.poll() is None, code
        if isolation is None and isolation_method() in LAYERS[:-1]:
            # unguarded, the PID namespace alone still protects the host: the program's parent is
            # the namespace's init (pid 1; 0 where it is outside), and neither this process nor the
            # canary is visible in there (signal 0 probes, SIGKILL would kill)
            res = run_python(textwrap.dedent(f"""
                import os, signal
                print(os.getppid())
                for pid, sig in (({os.getpid()}, 0), ({canary.pid}, signal.SIGKILL)):
                    try:
                        os.kill(pid, sig)
                        print("reached", pid)
                    except ProcessLookupError:
                        print("no such process")
            """), guard=False)
            assert res.passed and res.stdout.splitlines() == [res.stdout.split()[0]] + ["no such process"] * 2, res
            assert int(res.stdout.split()[0]) in (0, 1), res
            assert canary.poll() is None
    finally:
        canary.kill()
        canary.wait()


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("DPAD_SECRET", "hunter2-do-not-leak")
    res = run_python("import os\nprint(os.environ.get('DPAD_SECRET'))\nprint(sorted(os.environ))")
    assert res.passed, res.stderr
    assert "hunter2" not in res.stdout
    assert res.stdout.splitlines()[0] == "None"
    leak = run_python(f"print(open('/proc/{os.getpid()}/environ').read())")
    assert leak.status == "failed" and "hunter2" not in leak.stdout


def test_network_is_disabled():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    code = (
        f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')"
    )
    try:
        res = run_python(code)
        assert res.status == "failed" and "connected" not in res.stdout
        raw = f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\nprint('connected')"
        res = run_python(raw)
        assert res.status == "failed" and "connected" not in res.stdout
        if isolation_method() in LAYERS[:-1]:
            # the network namespace alone already blocks it
            res = run_python(raw, guard=False)
            assert res.status == "failed" and "connected" not in res.stdout, res
    finally:
        server.close()


def test_output_is_capped():
    res = run_python(
        "import sys\nfor _ in range(100000):\n    sys.stdout.write('x' * 100)\n", max_output_bytes=1000
    )
    assert len(res.stdout) < 1100
    assert "truncated" in res.stdout
    flood = run_python(
        "while True:\n    print('y' * 10000)\n", max_file_mb=1, max_output_bytes=100, timeout_s=5
    )
    assert flood.status == "error" and len(flood.stdout) < 200


def test_isolation_method_is_reported():
    assert isolation_method() in ("bubblewrap", "unshare", "none")
    assert isolation_method(allow_unsandboxed=True) in ("bubblewrap", "unshare", OPTED_IN)
    assert run_python("pass").isolation == isolation_method(allow_unsandboxed=True)


@pytest.mark.parametrize("layer", [la for la in LAYERS[:-1] if la in sandbox.available_isolation()])
def test_a_python_installation_below_tmp_stays_visible(layer: str, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """A virtual environment made below /tmp (pytest's tmp_path is there) is bound read-only on top
    of the sandbox's private /tmp, not hidden by it; the rest of the host's /tmp stays invisible."""
    if not str(tmp_path.resolve()).startswith("/tmp/"):
        pytest.skip(PLATFORM + "tmp_path is not below /tmp here")
    env_dir = tmp_path / "venv-like"
    env_dir.mkdir()
    (env_dir / "marker.txt").write_text("installed")
    (tmp_path / "host-secret.txt").write_text("secret")
    env_dir.chmod(0o755)
    tmp_path.chmod(0o755)
    real = str(env_dir.resolve())
    plan = sandbox._readonly_plan() + (("bind", real, real),)
    monkeypatch.setattr(sandbox, "_readonly_plan", lambda: plan)
    code = textwrap.dedent(f"""
        import os
        print(open({real + '/marker.txt'!r}).read())
        print(os.path.exists({str(tmp_path.resolve() / 'host-secret.txt')!r}))
        try:
            open({real + '/new.txt'!r}, "w")
            print("writable")
        except OSError:
            print("read-only")
    """)
    res = sandbox.run_python(code, isolation=layer, guard=False)
    assert res.passed, (res.status, res.stderr)
    assert res.stdout.split() == ["installed", "False", "read-only"]
