"""Models: one plain transformer and the official checkpoints mapped onto it.

- :mod:`.layers`: the transformer (token ids + absolute positions, slot-addressed K/V cache);
- :mod:`.llada`, :mod:`.llada_moe`, :mod:`.dream`: each architecture's config fields and official
  parameter names; :mod:`.moe`: the mixture-of-experts feed-forward (softmax top-k routing);
- :mod:`.loading`: ``load`` / ``save`` / ``read_config`` for checkpoint directories and hub ids
  ``ORG/NAME`` (resolved through the Hugging Face cache, local first).
"""

from .layers import KVCache, ModelArgs, Transformer, init_weights
from .loading import (
    ARCHITECTURES,
    DTYPES,
    LoadedModel,
    download_command,
    hub_cache_dir,
    is_hub_id,
    load,
    parse_dtype,
    read_args,
    read_config,
    resolve_checkpoint,
    save,
)

__all__ = ["ARCHITECTURES", "DTYPES", "KVCache", "LoadedModel", "ModelArgs", "Transformer", "download_command",
           "hub_cache_dir", "init_weights", "is_hub_id", "load", "parse_dtype", "read_args", "read_config",
           "resolve_checkpoint", "save"]
