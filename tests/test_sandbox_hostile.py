"""A corpus of hostile programs (tests/hostile/*.py) against every OS isolation layer here.

For each program and layer: the parent and a canary process it started survive, nothing is
written outside the sample's directory (specific target paths, a tree the test owns, $HOME, the
repository), no process the program started survives the call, the parent's listeners are never
reached, and a secret (in the parent's environment, in $HOME and in a file of the test's tree)
never shows up in what the program printed. Programs marked ``uses: bypass`` first undo the
Python guard, and every layer also runs with the guard off: the OS alone must hold.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import PLATFORM

from dpad.eval import sandbox as sandbox_module
from dpad.eval.sandbox import (
    OPTED_IN,
    SandboxUnavailableError,
    available_isolation,
    check_mbpp,
    check_program,
    isolation_method,
    require_isolation,
    run_python,
)

HERE = Path(__file__).parent
CORPUS = sorted(p for p in (HERE / "hostile").glob("[0-9]*.py"))
BYPASS = (HERE / "hostile" / "_bypass.py").read_text()
REPO = HERE.parent

TIMEOUT_S = 2.0
LIMITS = {"timeout_s": TIMEOUT_S, "memory_mb": 320, "max_procs": 4, "max_file_mb": 8, "max_output_bytes": 1 << 16}

AVAILABLE = available_isolation()
NO_BWRAP = "bubblewrap (bwrap) is not installed or does not work here: apt-get install bubblewrap"
CONFIGS = [
    pytest.param("bubblewrap", False, id="bubblewrap-noguard",
                 marks=pytest.mark.skipif("bubblewrap" not in AVAILABLE, reason=NO_BWRAP)),
    pytest.param("bubblewrap", True, id="bubblewrap-guard",
                 marks=pytest.mark.skipif("bubblewrap" not in AVAILABLE, reason=NO_BWRAP)),
    pytest.param("unshare", False, id="unshare-noguard",
                 marks=pytest.mark.skipif("unshare" not in AVAILABLE,
                                          reason="unshare with mount/PID/net namespaces does not work here")),
]


def test_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 20


def test_ci_has_an_os_sandbox() -> None:
    """CI (DPAD_REQUIRE_SANDBOX=1) runs every layer: a missing one fails here, not as a quiet skip."""
    if os.environ.get("DPAD_REQUIRE_SANDBOX"):
        assert "bubblewrap" in AVAILABLE, f"DPAD_REQUIRE_SANDBOX is set but {NO_BWRAP}"
        assert "unshare" in AVAILABLE, ("DPAD_REQUIRE_SANDBOX is set but unshare with mount/PID/net namespaces "
                                        f"does not work here: {sandbox_module._reasons.get('unshare')}")


def _proc_cmdlines_with(marker: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if marker in fh.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def _session_key(secret: str) -> list[int]:
    """Put ``secret`` in a key of a fresh session keyring of this process (none where keyctl is
    unavailable); returns the key's id."""
    import ctypes
    import platform

    nr = {"x86_64": 250, "aarch64": 219}.get(platform.machine())
    add_key = {"x86_64": 248, "aarch64": 217}.get(platform.machine())
    if nr is None or add_key is None:
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(nr, 1, None) < 0:  # KEYCTL_JOIN_SESSION_KEYRING: do not touch a shared one
        return []
    kid = libc.syscall(add_key, b"user", b"dpad_hostile", secret.encode(), len(secret), ctypes.c_int(-3))
    return [int(kid)] if kid > 0 else []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    token = uuid.uuid4().hex[:12]
    secret = f"dpad-secret-{uuid.uuid4().hex}"
    marker = f"dpad-hostile-marker-{token}"
    tree = tmp_path_factory.mktemp("hostile_tree")
    (tree / "sub").mkdir()
    secret_file = tree / "secret.txt"
    secret_file.write_text(secret)
    home = Path.home()
    home_marker = home / f".dpad_hostile_{token}"
    home_marker.write_text(secret)
    repo_file = REPO / "tests" / "hostile" / "01_proc_environ_all.py"
    targets = [f"/tmp/dpad_hostile_{token}", str(tree / "outside.txt"), str(tree / "sub" / "x"),
               str(home / f"dpad_hostile_{token}"), str(REPO / f"dpad_hostile_{token}"),
               f"/dev/shm/dpad_hostile_{token}", f"/var/tmp/dpad_hostile_{token}",
               f"/usr/dpad_hostile_{token}"]
    canary_marker = f"dpad-canary-{token}"
    canary = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", canary_marker])
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("0.0.0.0", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    port = tcp.getsockname()[1]
    listeners = [tcp]
    for fam, kind, addr in ((socket.AF_INET6, socket.SOCK_STREAM, ("::1", port)),
                            (socket.AF_INET, socket.SOCK_DGRAM, ("0.0.0.0", port))):
        try:
            s = socket.socket(fam, kind)
            s.bind(addr)
            if kind == socket.SOCK_STREAM:
                s.listen(8)
            s.setblocking(False)
            listeners.append(s)
        except OSError:
            pass
    unix_name = f"dpad_hostile_{token}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + unix_name)
    unix.listen(8)
    unix.setblocking(False)
    listeners.append(unix)
    host_ips = []
    try:
        host_ips = sorted({a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
                          - {"127.0.0.1"})
    except OSError:
        pass
    key_ids = _session_key(secret)
    old = os.environ.get("DPAD_HOSTILE_SECRET")
    os.environ["DPAD_HOSTILE_SECRET"] = secret
    cfg = {"parent_pid": os.getpid(), "canary_pid": canary.pid, "port": port, "unix_name": unix_name,
           "targets": targets, "tree": str(tree), "secret_file": str(secret_file), "home": str(home),
           "home_marker": str(home_marker), "repo_file": str(repo_file), "marker": marker,
           "host_ips": host_ips, "key_ids": key_ids}
    try:
        yield {"cfg": cfg, "secret": secret, "canary": canary, "listeners": listeners, "tree": tree,
               "home": home, "marker": marker}
    finally:
        if old is None:
            os.environ.pop("DPAD_HOSTILE_SECRET", None)
        else:
            os.environ["DPAD_HOSTILE_SECRET"] = old
        home_marker.unlink(missing_ok=True)
        canary.kill()
        canary.wait()
        for s in listeners:
            s.close()


def _uses_bypass(path: Path) -> bool:
    return path.read_text().startswith("# uses: bypass")


def _program(path: Path, cfg: dict) -> str:
    text = path.read_text()
    prelude = BYPASS if _uses_bypass(path) else ""
    return f"CFG = {json.dumps(cfg)}\n{prelude}\n{text}"


def _expectation(path: Path) -> str:
    for line in path.read_text().splitlines()[:3]:
        if line.startswith("# expect:"):
            return line.split(":", 1)[1].strip()
    return "any"


# every program on every layer, except a program that undoes the guard first on a guard-on layer:
# that run would be its guard-off run again
HOSTILE_RUNS = [pytest.param(program, *c.values, id=f"{program.stem}-{c.id}", marks=c.marks)
                for program in CORPUS for c in CONFIGS if not (c.values[1] and _uses_bypass(program))]


@pytest.mark.parametrize("program,layer,guard", HOSTILE_RUNS)
def test_hostile_program_is_contained(world, program: Path, layer: str, guard: bool) -> None:  # noqa: ANN001
    cfg, secret = world["cfg"], world["secret"]
    tree_before = _snapshot(world["tree"])
    home_before = os.listdir(world["home"])
    tmp_before = os.listdir("/tmp")

    res = run_python(_program(program, cfg), isolation=layer, guard=guard, **LIMITS)

    # the parent and its canary are untouched
    assert cfg["parent_pid"] == os.getpid()
    assert world["canary"].poll() is None, "the canary process was killed"
    assert signal.getsignal(signal.SIGINT) is not None
    assert res.isolation == layer
    # no process started by the program survives the call
    assert _proc_cmdlines_with(world["marker"].encode()) == [], "a process outlived the sandbox"
    # nothing written outside
    for t in cfg["targets"]:
        for suffix in ("", ".d", ".lnk"):
            assert not os.path.lexists(t + suffix), f"{t + suffix} was created"
    assert _snapshot(world["tree"]) == tree_before
    # (other processes may add files to $HOME and /tmp meanwhile: only names the corpus uses count)
    for where, before in ((world["home"], home_before), ("/tmp", tmp_before)):
        new = set(os.listdir(where)) - set(before)
        assert not {n for n in new if n.startswith(("fill", "s0", "hard", "escaped")) or "hostile" in n}, new
    # nothing reached the parent's listeners
    for s in world["listeners"]:
        with pytest.raises(BlockingIOError):
            if s.type == socket.SOCK_DGRAM:
                s.recvfrom(16)
            else:
                s.accept()
    # the secret stays unreadable
    assert secret not in res.stdout and secret not in res.stderr
    # ("WROTE" lines are fine: the sandbox's own /tmp and directory are writable, the host's are checked above)
    assert "CONNECTED" not in res.stdout and "PRIVILEGED" not in res.stdout, res.stdout[-2000:]
    for field in ("CapEff", "CapPrm"):  # 28: the program holds no capabilities
        caps = re.search(rf"^{field}:\s*([0-9a-f]+)$", res.stdout, re.M)
        assert caps is None or int(caps.group(1), 16) == 0, res.stdout[:2000]
    # limits: the call came back well before the corpus' sleeps (60 s) and endless loops would end
    # (a bound with a wide margin over the 2 s limit: no race with a loaded machine)
    assert res.duration_s < 30
    assert len(res.stdout) <= LIMITS["max_output_bytes"] + 100
    assert len(res.stderr) <= LIMITS["max_output_bytes"] + 100
    spawned = re.search(r"^children (\d+)$", res.stdout, re.M)  # 27: RLIMIT_NPROC held
    if spawned:
        assert int(spawned.group(1)) <= LIMITS["max_procs"], res.stdout
    expect = _expectation(program)
    if expect == "timeout":
        assert res.status == "timeout", res
    elif expect == "not-passed":
        assert not res.passed, res


PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n"


@pytest.mark.parametrize("layer,guard", CONFIGS)
def test_benign_programs_score_correctly(layer: str, guard: bool) -> None:
    ok = check_program(PROMPT, "    return a + b\n", TEST, "add", isolation=layer, guard=guard)
    assert ok.passed and ok.status == "passed" and ok.isolation == layer, ok
    bad = check_program(PROMPT, "    return a - b\n", TEST, "add", isolation=layer, guard=guard)
    assert bad.status == "failed" and "AssertionError" in bad.stderr
    slow = check_program(PROMPT, "    import time\n    time.sleep(600)\n", TEST, "add", timeout_s=1.0,
                         isolation=layer, guard=guard)
    assert slow.status == "timeout" and 1.0 <= slow.duration_s < 600  # stopped at its limit
    mbpp = check_mbpp("import heapq, re, math\ndef f(xs):\n    return heapq.nsmallest(1, xs)[0]",
                      ["assert f([3, 1, 2]) == 1"], isolation=layer, guard=guard)
    assert mbpp.passed, mbpp
    files = run_python("import tempfile, os\nwith tempfile.NamedTemporaryFile('w') as f:\n    f.write('x')\n"
                       "open('a.txt', 'w').write('y' * 1000)\nprint(open('a.txt').read()[:3], os.getcwd())",
                       isolation=layer, guard=guard)
    assert files.passed and files.stdout.startswith("yyy"), files


_NONE = sandbox_module._Variant("none")


def test_refuses_without_os_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DPAD_SANDBOX", "none")
    assert isolation_method() == "none"
    assert isolation_method(allow_unsandboxed=True) == OPTED_IN
    with pytest.raises(SandboxUnavailableError) as info:
        run_python("print('ran')")
    msg = str(info.value)
    assert "\n" not in msg and "DPAD_SANDBOX" in msg and "--allow-unsandboxed" in msg
    with pytest.raises(SandboxUnavailableError):
        require_isolation()
    assert require_isolation(allow_unsandboxed=True) == OPTED_IN
    res = run_python("print('ran')", allow_unsandboxed=True)
    assert res.passed and res.stdout.strip() == "ran" and res.isolation == OPTED_IN
    # nothing works here: the message says how to fix it
    monkeypatch.delenv("DPAD_SANDBOX")
    monkeypatch.setattr("dpad.eval.sandbox._working", lambda layer: _NONE if layer == "none" else None)
    monkeypatch.setattr("dpad.eval.sandbox._reasons", {"bubblewrap": "bwrap not found"})
    assert isolation_method() == "none"
    with pytest.raises(SandboxUnavailableError) as info:
        run_python("print('ran')")
    msg = str(info.value)
    assert "\n" not in msg and "bwrap not found" in msg and "apt-get install bubblewrap" in msg
    assert "--allow-unsandboxed" in msg
    with pytest.raises(SandboxUnavailableError, match="'bubblewrap' is not available"):
        run_python("print('ran')", isolation="bubblewrap", allow_unsandboxed=True)
    monkeypatch.setenv("DPAD_SANDBOX", "bogus")
    with pytest.raises(SandboxUnavailableError, match="DPAD_SANDBOX"):
        isolation_method()


def test_isolation_method_names_the_layer() -> None:
    method = isolation_method()
    assert method == (AVAILABLE[0] if AVAILABLE else "none")
    if AVAILABLE:
        assert run_python("pass").isolation == method


SECCOMP_PROBE = r"""
import ctypes, os, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("Seccomp:")][0])
print("keyctl", libc.syscall(250, 0, ctypes.c_int(-3), 0), ctypes.get_errno())
print("userns", libc.unshare(0x10000000), ctypes.get_errno())
done = []
threads = [threading.Thread(target=done.append, args=(i,)) for i in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("threads", len(done))
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    print("fork allowed")
except OSError as e:
    print("fork refused", e.errno)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason=PLATFORM + "the seccomp filter is built for x86_64 Linux")
@pytest.mark.parametrize("layer,guard", CONFIGS)
def test_seccomp_filter(layer: str, guard: bool) -> None:
    res = run_python(BYPASS + SECCOMP_PROBE, isolation=layer, guard=guard)
    assert res.passed, res
    lines = res.stdout.splitlines()
    assert lines[0] == "2"  # filter mode
    assert lines[1] == "keyctl -1 1" and lines[2] == "userns -1 1"
    assert lines[3] == "threads 4"  # threads still work
    # with the guard on, processes are refused by the kernel too (the guard itself is undone above)
    assert lines[4] == ("fork refused 1" if guard else "fork allowed")
