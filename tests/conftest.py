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


def load_cases() -> list[dict]:
    """The 53 reference generation cases (also used at collection time for parametrisation)."""
    return json.loads((GOLDEN_DIR / "cases.json").read_text())


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
