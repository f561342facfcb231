"""Synthetic training data for tiny diffusion LMs (the embedded model is trained on it).

``dpad.synthetic.arith`` generates GSM8K-format word problems; ``dpad.synthetic.tokenizer``
builds the matching word-level tokenizer (import it explicitly). The benchmarks that score
models are in :mod:`dpad.eval.tasks`.
"""

from dpad.synthetic.arith import SPLITS, Problem, generate, iter_problems, split_of

__all__ = ["SPLITS", "Problem", "generate", "iter_problems", "split_of"]
