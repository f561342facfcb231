"""dpad: training-free fast decoding for diffusion language models (LLaDA, Dream).

>>> import dpad
>>> lm = dpad.load()                                   # the embedded tiny model
>>> out = dpad.generate(lm, "Mia has 3 apples ...", dpad.preset("llada-instruct-gsm8k"))
>>> out.text, out.stats["nfe"]
"""

from .api import Generation, embedded_model_path, generate, load
from .config import PRESETS, DecodeConfig, preset
from .errors import CheckpointError, ConfigError, DpadError

__version__ = "0.1.0"

__all__ = ["PRESETS", "CheckpointError", "ConfigError", "DecodeConfig", "DpadError", "Generation",
           "embedded_model_path", "generate", "load", "preset"]
