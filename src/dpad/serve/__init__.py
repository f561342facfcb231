"""``dpad serve``: an OpenAI-compatible HTTP server with dynamic batching (needs ``pip install dpad-dllm[serve]``).

>>> from dpad.serve import create_app, ServerThread
>>> app = create_app(dpad.load(), model_id="dpad-embedded")
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerThread", "create_app"]


def __getattr__(name: str) -> Any:  # import FastAPI lazily: `dpad --help` must not need it
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
