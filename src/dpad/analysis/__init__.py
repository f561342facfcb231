"""Analysis tools that let users see DPad's two observations on their own model.

- :mod:`.attention`: record the current block's real attention to the suffix, by distance;
- :mod:`.migration`: remove high-attention distant suffix tokens, see where the mass goes and
  whether the decoded answer changes;
- :mod:`.keep`: the keep probability p(d) and the kept-set map of a real DPad decode;
- :mod:`.common`: prompts, the config check and CSV/JSON output shared by the three;
- :mod:`.plots`: their figures.

Answers are scored with :mod:`dpad.scoring`, like :mod:`dpad.eval`'s.

Command line: ``dpad analyze {attention,migration,keep}`` (see :mod:`.cli`).
"""

from .attention import (
    AttentionRecorder,
    DistanceProfile,
    ForwardAttention,
    block_attention_probs,
    by_distance,
)

__all__ = ["AttentionRecorder", "DistanceProfile", "ForwardAttention", "block_attention_probs", "by_distance"]
