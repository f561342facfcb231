"""A sample that stops before its tests finish is not a pass.

Each trick below is put into a wrong HumanEval solution and a wrong MBPP solution, either after
the function (it runs before the tests) or inside it (it runs when the tests call it). Every one
must fail on every layer, with the guard on (as ``dpad eval`` runs) and, on the OS layers, with
it off. The correct solutions of the same problems still pass, also with ``__main__`` blocks and
exit handlers that do not cut the tests short.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from dpad.eval import sandbox
from dpad.eval.sandbox import available_isolation
from dpad.eval.tasks import Sample, get_task

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures" / "eval"
AVAILABLE = available_isolation()

# --------------------------------------------------------------------------- the problems

HE_PROMPT = '''def running_max(numbers: list) -> list:
    """The largest value seen so far, at each position of numbers.
    >>> running_max([1, 3, 2])
    [1, 3, 3]
    """
'''
HE_TEST = '''METADATA = {"author": "dpad tests"}


def check(candidate):
    assert candidate([]) == []
    assert candidate([1, 3, 2]) == [1, 3, 3]
    assert candidate([5, 4, 6, 0]) == [5, 5, 6, 6]
'''
HE_ENTRY = "running_max"
HE_RIGHT = "    out = []\n    for x in numbers:\n        out.append(max(out[-1], x) if out else x)\n    return out\n"
HE_WRONG = "    return list(numbers)\n"

MBPP = json.loads((FIXTURES / "mbpp.jsonl").read_text().splitlines()[0])  # task 11: sum_of_squares
MBPP_RIGHT = MBPP["code"]
MBPP_HEAD = "def sum_of_squares(nums):\n"
MBPP_WRONG_BODY = "    return sum(nums)\n"

# --------------------------------------------------------------------------- the tricks

FORGE = r'''
import os
# what a program can find out: its argv, environment and fds; try each word as the report's
# token, and common "it passed" strings, on every fd
words = set()
for name in ("cmdline", "environ"):
    try:
        words.update(open("/proc/self/" + name, "rb").read().replace(b"\0", b" ").split())
    except OSError:  # environ: unreadable once the runner dropped root
        pass
words.update(w.encode() for pair in os.environ.items() for w in pair)
lines = [b"done", b"passed", b"OK", b"\ndone\n"] + [b"\n" + w + b" done\n" for w in words]
for fd in range(3, 256):
    for line in lines:
        try:
            os.write(fd, line)
        except OSError:
            break
os._exit(0)
'''

# how each kind of ending is reported: (status, how the one-line detail starts)
OUTCOMES = {
    "SystemExit": ("exited", "exited early (SystemExit"),
    "_exit": ("exited", "exited before its tests finished"),
    "raised": ("failed", "raised an exception before its tests finished"),
    "signal": ("error", "killed by SIG"),
}

# (id, where, snippet, outcome with the guard on, outcome with it off where different)
TRICKS: list[tuple[str, str, str, str, str | None]] = [
    ("exit", "after", "exit()", "SystemExit", None),
    ("quit", "after", "quit()", "SystemExit", None),
    ("sys_exit_0", "after", "import sys\nsys.exit(0)", "SystemExit", None),
    ("sys_exit_none", "after", "import sys\nsys.exit()", "SystemExit", None),
    ("raise_systemexit", "after", "raise SystemExit", "SystemExit", None),
    ("raise_systemexit_message", "after", 'raise SystemExit("all tests passed")', "SystemExit", None),
    ("systemexit_subclass", "after", "class Done(SystemExit):\n    pass\n\n\nraise Done(0)", "SystemExit", None),
    ("builtins_exit", "after", "import builtins\nbuiltins.exit(0)", "SystemExit", None),
    ("exec_systemexit", "after", 'exec("raise SystemExit(0)")', "SystemExit", None),
    ("main_guard_sys_exit", "after", 'if __name__ == "__main__":\n    import sys\n    sys.exit(0)', "SystemExit",
     None),
    ("main_guard_exit", "after", 'if __name__ == "__main__":\n    print("ok")\n    exit(0)', "SystemExit", None),
    ("patched_os_write_then_exit", "after", "import os, sys\nreal = os.write\n"
     "os.write = lambda fd, data: real(fd, data.replace(b'exit', b'done'))\nsys.exit(0)", "SystemExit", None),
    ("os_exit", "after", "import os\nos._exit(0)", "_exit", None),
    ("posix_exit_after_output", "after", "import posix, sys\nprint('all tests passed')\nsys.stdout.flush()\n"
     "posix._exit(0)", "_exit", None),
    ("os_exit_from_thread", "after", "import os, threading\nt = threading.Thread(target=os._exit, args=(0,))\n"
     "t.start()\nt.join()", "_exit", None),
    ("forge_report", "after", FORGE, "_exit", None),
    ("exec_fresh_interpreter", "after", "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'pass'])",
     "raised", "_exit"),  # the guard refuses exec; without it the new interpreter exits 0
    ("silenced_failure_then_os_exit", "after", "import atexit, os, sys\nsys.excepthook = lambda *args: None\n"
     "atexit.register(os._exit, 0)", "raised", None),  # the tests fail quietly, then status 0
    ("sigkill_self", "after", "import signal\nsignal.raise_signal(signal.SIGKILL)", "signal", None),
    ("sigterm_self", "after", "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_DFL)\n"
     "signal.raise_signal(signal.SIGTERM)", "signal", None),
    ("abort", "after", "import os\nos.abort()", "signal", None),
    ("during_exit", "during", "exit()", "SystemExit", None),
    ("during_sys_exit", "during", "import sys\nsys.exit(0)", "SystemExit", None),
    ("during_raise_systemexit", "during", "raise SystemExit(0)", "SystemExit", None),
    ("during_os_exit", "during", "import os\nos._exit(0)", "_exit", None),
]
TRICK_IDS = [t[0] for t in TRICKS]


def _indent(snippet: str) -> str:
    return textwrap.indent(snippet, "    ") + "\n"


def humaneval(limits: dict, where: str, snippet: str, body: str = HE_WRONG) -> sandbox.SandboxResult:
    completion = (_indent(snippet) + body) if where == "during" else f"{body}\n\n{snippet}\n"
    return sandbox.check_program(HE_PROMPT, completion, HE_TEST, HE_ENTRY, timeout_s=10.0, **limits)


def mbpp(limits: dict, where: str, snippet: str, code: str | None = None) -> sandbox.SandboxResult:
    if where == "during":
        code = MBPP_HEAD + _indent(snippet) + MBPP_WRONG_BODY
    else:
        code = f"{code or (MBPP_HEAD + MBPP_WRONG_BODY)}\n\n{snippet}\n"
    return sandbox.check_mbpp(code, MBPP["test_list"], MBPP["test_setup_code"], timeout_s=10.0, **limits)


BENCHMARKS = {"humaneval": humaneval, "mbpp": mbpp}
RIGHT = {"humaneval": HE_RIGHT, "mbpp": MBPP_RIGHT}

NO_BWRAP = "bubblewrap (bwrap) is not installed or does not work here: apt-get install bubblewrap"
OS_LAYERS = [
    pytest.param("bubblewrap", id="bubblewrap", marks=pytest.mark.skipif("bubblewrap" not in AVAILABLE,
                                                                         reason=NO_BWRAP)),
    pytest.param("unshare", id="unshare", marks=pytest.mark.skipif("unshare" not in AVAILABLE,
                                                                   reason="unshare does not work here")),
]
LAYERS = [*OS_LAYERS, pytest.param("none", id="none")]  # none: guard and limits only, opted in


def _limits(layer: str, **extra: object) -> dict:
    return {"isolation": layer, "allow_unsandboxed": layer == "none", **extra}


def test_corpus_is_big_enough() -> None:
    assert len(TRICKS) >= 12 and len(set(TRICK_IDS)) == len(TRICKS)
    assert {t[1] for t in TRICKS} == {"after", "during"}
    assert {t[3] for t in TRICKS} == set(OUTCOMES)


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_correct_solutions_pass_and_wrong_ones_fail(layer: str, bench: str) -> None:
    run, limits = BENCHMARKS[bench], _limits(layer)
    extras = [
        "pass",
        'if __name__ == "__main__":\n    print("self-test")',
        "import atexit\natexit.register(print, 'bye')",
        # the tests finished; an exit handler that then ends the process with status 0 changes nothing
        "import atexit, os\natexit.register(os._exit, 0)",
    ]
    for extra in extras:
        res = run(limits, "after", extra, RIGHT[bench])
        assert res.passed and res.status == "passed" and res.detail == "", (extra, res)
        assert res.isolation.startswith(layer)
    wrong = run(limits, "after", "pass")
    assert wrong.status == "failed" and "AssertionError" in wrong.stderr, wrong


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("bench", BENCHMARKS)
@pytest.mark.parametrize("trick", TRICKS, ids=TRICK_IDS)
def test_early_exit_is_not_a_pass(layer: str, bench: str, trick: tuple) -> None:
    name, where, snippet, outcome, _ = trick
    res = BENCHMARKS[bench](_limits(layer), where, snippet)
    status, detail = OUTCOMES[outcome]
    assert not res.passed and res.status == status, (name, res)
    assert res.detail.startswith(detail) and "before its tests finished" in res.detail, res.detail


@pytest.mark.parametrize("layer", OS_LAYERS)
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_early_exit_without_the_guard(layer: str, bench: str) -> None:
    """The Python guard off (the OS alone): the completion report still decides."""
    for name, where, snippet, outcome, unguarded in TRICKS:
        res = BENCHMARKS[bench](_limits(layer, guard=False), where, snippet)
        status, detail = OUTCOMES[unguarded or outcome]
        assert not res.passed and res.status == status and res.detail.startswith(detail), (name, res)


@pytest.mark.parametrize("layer", OS_LAYERS)
@pytest.mark.parametrize("bench", BENCHMARKS)
def test_exiting_before_the_tests_fails_a_correct_solution_too(layer: str, bench: str) -> None:
    for name, where, snippet, outcome, _ in TRICKS:
        if where == "after" and outcome in ("SystemExit", "_exit"):
            res = BENCHMARKS[bench](_limits(layer), where, snippet, RIGHT[bench])
            assert not res.passed and res.status == "exited", (name, res)


def test_eval_tasks_score_an_early_exit_as_a_failure() -> None:
    """Through the tasks' own post-processing and scoring, as ``dpad eval`` runs them."""
    task = get_task("mbpp", data=FIXTURES / "mbpp.jsonl", allow_unsandboxed=True)
    sample = task.samples(limit=1)[0]
    assert task.score(sample, task.canonical_output(sample))["pass@1"]
    out = task.score(sample, f"{MBPP_HEAD}{MBPP_WRONG_BODY}import sys\nsys.exit(0)\n[DONE]")
    assert not out["pass@1"] and out["status"] == "exited", out
    assert out["error"].startswith("exited early (SystemExit")

    he = get_task("humaneval", allow_unsandboxed=True)
    doc = {"prompt": HE_PROMPT, "test": HE_TEST, "entry_point": HE_ENTRY}
    sample = Sample(0, "HumanEval/dpad", HE_PROMPT, HE_RIGHT, doc)
    assert he.score(sample, HE_RIGHT)["pass@1"]
    for body in ("    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n"):
        out = he.score(sample, body + HE_WRONG)
        assert not out["pass@1"] and out["status"] == "exited", out
        assert "before its tests finished" in out["error"]
