"""Synthetic tasks for training and evaluating tiny diffusion LMs.

``dpad.tasks.arith`` generates GSM8K-format word problems; ``dpad.tasks.tokenizer``
builds the matching word-level tokenizer (import it explicitly).
"""

from dpad.tasks.arith import SPLITS, Problem, generate, iter_problems, split_of

__all__ = ["SPLITS", "Problem", "generate", "iter_problems", "split_of"]
