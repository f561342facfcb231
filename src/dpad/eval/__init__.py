"""Evaluation: benchmark tasks, sandboxed code execution, the eval runner and lm-eval glue.

Answer extraction and scoring (GSM8K as in lm-evaluation-harness, MATH via math_verify,
HumanEval/MBPP post-processing) live in :mod:`dpad.scoring`, shared with :mod:`dpad.analysis`.

* :mod:`dpad.eval.sandbox` - running generated code in an OS sandbox (bubblewrap; refused without one);
* :mod:`dpad.eval.datasets` - local benchmark loaders and few-shot prompts;
* :mod:`dpad.eval.tasks` - arith, gsm8k, math, humaneval, mbpp (prompts, stop strings, scoring);
* :mod:`dpad.eval.methods` - ladder method names (``parallel+prefix+dpad``) -> DecodeConfig;
* :mod:`dpad.eval.runner` / :mod:`dpad.eval.cli` - ``dpad eval`` (JSONL, summary JSON, Markdown);
* :mod:`dpad.eval.parallel` - data-parallel sharding under torchrun / accelerate;
* :mod:`dpad.eval.lm_eval_model` / :mod:`dpad.eval.lm_eval_main` - the lm-evaluation-harness model;
* :mod:`dpad.eval.env` - the environment recorded in every result.

Submodules are imported on demand so ``import dpad.eval`` stays cheap.
"""

__all__ = ["cli", "datasets", "env", "lm_eval_main", "lm_eval_model", "methods", "parallel",
           "runner", "sandbox", "tasks"]
