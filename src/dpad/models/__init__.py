"""Models: one plain transformer and the official checkpoints mapped onto it.

- :mod:`.layers`: the transformer (token ids + absolute positions, slot-addressed K/V cache);
- :mod:`.llada`, :mod:`.llada_moe`, :mod:`.dream`: each architecture's config fields and official
  parameter names; :mod:`.moe`: the mixture-of-experts feed-forward (softmax top-k routing);
- :mod:`.loading`: ``load(path)`` / ``save`` / ``read_config`` for checkpoint directories.
"""

from .layers import KVCache, ModelArgs, Transformer, init_weights
from .loading import ARCHITECTURES, DTYPES, LoadedModel, load, parse_dtype, read_config, save

__all__ = ["ARCHITECTURES", "DTYPES", "KVCache", "LoadedModel", "ModelArgs", "Transformer",
           "init_weights", "load", "parse_dtype", "read_config", "save"]
