"""Shared fixtures: the golden tiny checkpoints (float64, loaded once per session) and cases.

The hub is never contacted (``HF_HUB_OFFLINE``), and torch runs single-threaded so exact-token
tests are reproducible and cheap on a shared machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

GOLDEN_DIR = Path(__file__).resolve().parent / "fixtures" / "golden"
MASK_ID = 250
EOS_ID = 251


def load_cases(name: str = "cases.json") -> list[dict]:
    """Reference generation cases (default: the 53 golden ones; also used at collection time)."""
    return json.loads((GOLDEN_DIR / name).read_text())


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    return GOLDEN_DIR


@pytest.fixture(scope="session")
def llada_tiny(golden_dir: Path):  # noqa: ANN201
    from dpad.models import load

    return load(golden_dir / "llada-tiny", dtype="float64")


@pytest.fixture(scope="session")
def dream_tiny(golden_dir: Path):  # noqa: ANN201
    from dpad.models import load

    return load(golden_dir / "dream-tiny", dtype="float64")


@pytest.fixture(scope="session")
def tiny_models(llada_tiny, dream_tiny) -> dict:  # noqa: ANN001
    return {"llada-tiny": llada_tiny, "dream-tiny": dream_tiny}


@pytest.fixture(scope="session")
def cases() -> list[dict]:
    return load_cases()


# ------------------------------------------------------------------ a Hugging Face cache of test models
HUB_MODELS = {  # hub id -> (source directory, commit)
    "dpad-test/embedded": (Path(__file__).resolve().parents[1] / "src" / "dpad" / "assets" / "embedded", "e" * 40),
    "dpad-test/llada-tiny": (GOLDEN_DIR / "llada-tiny", "1" * 40),
    "dpad-test/dream-tiny": (GOLDEN_DIR / "dream-tiny", "d" * 40),
}


def add_to_hub_cache(cache: Path, repo_id: str, src: Path, commit: str, ref: str | None = "main") -> Path:
    """Put the files of ``src`` into ``cache`` the way huggingface_hub stores a download:
    ``models--ORG--NAME/blobs/<hash>``, ``snapshots/<commit>/<file>`` -> blob links, ``refs/<ref>``."""
    import hashlib
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if not f.is_file():
            continue
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF_HOME whose hub cache holds the embedded model and the golden tiny models (``HUB_MODELS``),
    plus ``dpad-test/tiny``: ``main`` is llada-tiny, the tag ``dream`` is dream-tiny."""
    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "hub"
    for repo_id, (src, commit) in HUB_MODELS.items():
        add_to_hub_cache(cache, repo_id, src, commit)
    add_to_hub_cache(cache, "dpad-test/tiny", GOLDEN_DIR / "llada-tiny", "1" * 40)
    add_to_hub_cache(cache, "dpad-test/tiny", GOLDEN_DIR / "dream-tiny", "d" * 40, ref="dream")
    return home


@pytest.fixture()
def hub(hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HF_HOME at ``hub_home`` (offline) for one test; returns the hub cache directory."""
    monkeypatch.setenv("HF_HOME", str(hub_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_home / "hub"


# ------------------------------------------------------------------ skips are failures in CI
# With DPAD_NO_SKIPS=1 (set by .ci/run) a skip fails, unless its reason starts with PLATFORM: a test
# whose requirement is a package of the `test` extra, bubblewrap or unshare must run in CI, and
# a missing one is an error there, not a silent skip. Only what the platform itself lacks (another
# CPU architecture, a torch build without torch.distributed, ...) may still skip.
PLATFORM = "platform: "
NO_SKIPS = os.environ.get("DPAD_NO_SKIPS", "").strip() not in ("", "0")


def _skip_reason(rep: pytest.CollectReport | pytest.TestReport) -> str:
    lr = rep.longrepr
    reason = str(lr[2]) if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return reason.removeprefix("Skipped: ")


def _fail_a_skip(rep: pytest.CollectReport | pytest.TestReport) -> None:
    if NO_SKIPS and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = _skip_reason(rep)
        if not reason.startswith(PLATFORM):
            rep.outcome = "failed"
            rep.longrepr = (f"DPAD_NO_SKIPS is set (CI), and this skip is not a platform one: {reason}\n"
                            "install the `test` extra (pip install -e '.[test]') and bubblewrap, or mark "
                            f"a genuine platform skip with a reason starting {PLATFORM!r}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    outcome = yield
    _fail_a_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # noqa: ANN201
    outcome = yield
    _fail_a_skip(outcome.get_result())


# ------------------------------------------------------------------ serve: batches without a time window
class BatchGate:
    """Holds a scheduler's worker until the jobs announced with :meth:`expect` all wait in its queue,
    so which requests start together does not depend on when the client threads arrive. Install it
    before the server starts. Continuous scheduler: an idle worker admits nothing until then (its
    ``admission_gate``); closed scheduler: the worker takes no batch until then."""

    def __init__(self, scheduler) -> None:  # noqa: ANN001
        self.scheduler, self.n = scheduler, 0
        s = scheduler
        if hasattr(s, "admission_gate"):
            def ready() -> bool:
                if s.queue and len(s.queue) >= self.n:
                    self.n = 0
                    return True
                return False

            s.admission_gate = ready
            return
        take = s._take_batch

        def gated():  # noqa: ANN202
            with s.cv:  # (a safety timeout only: the test's own assertions then fail)
                s.cv.wait_for(lambda: s.stopping or (s.queue and len(s.queue) >= self.n), timeout=120)
                self.n = 0
            return take()

        s._take_batch = gated

    def expect(self, n: int) -> None:
        """The next batch is formed once ``n`` jobs wait (call before sending them)."""
        with self.scheduler.cv:
            self.n = n
            self.scheduler.cv.notify_all()
