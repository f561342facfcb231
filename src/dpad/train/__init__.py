"""Training of the embedded tiny dLLM (LLaDA architecture, LLaDA SFT recipe).

``python -m dpad.train --out DIR`` (or ``dpad train``) trains from scratch on the synthetic
``arith`` word problems; ``--resume DIR`` continues from a checkpoint written by this module.

Recipe (LLaDA SFT): the prompt (chat-formatted question) is never masked; each response token
(solution + EOS padding up to the canvas length) is masked with probability t, t ~ U(eps, 1)
drawn per row (stratified across the batch); the loss is the cross-entropy on masked response
tokens weighted by 1/t and normalised by the response length, averaged over rows. EOS padding
is part of the response and of the loss: this is what teaches the model to fill a long canvas
with EOS, which is what makes the masked suffix a scratchpad at decode time.
"""

from .trainer import TrainConfig, main, train

__all__ = ["TrainConfig", "main", "train"]
