"""Model-independent evaluation building blocks.

* :mod:`dpad.eval.metrics` - answer extraction and scoring (GSM8K as in
  lm-evaluation-harness, MATH via math_verify, HumanEval/MBPP post-processing);
* :mod:`dpad.eval.sandbox` - running generated code in a limited child process;
* :mod:`dpad.eval.datasets` - local benchmark loaders and few-shot prompts.

Submodules are imported on demand so ``import dpad.eval`` stays cheap.
"""

__all__ = ["datasets", "metrics", "sandbox"]
