"""Which checkpoints take chat-formatted prompts.

An instruct (chat) checkpoint ships a chat template in its tokenizer files (``tokenizer_config.json``
``chat_template``, or ``chat_template.jinja``): LLaDA-8B-Instruct's ``<|start_header_id|>`` turns,
Dream-v0-Instruct-7B's Qwen2-style ``<|im_start|>role ... <|im_end|>`` turns. Base checkpoints of
Qwen-derived models (Dream-v0-Base-7B) can carry the same template, inherited from their tokenizer,
without being trained on it, so a checkpoint whose name says ``base`` (its directory, its hub id or
``config.json``'s ``_name_or_path``) is not a chat checkpoint even when it has a template.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_BASE = re.compile(r"(^|[-_/.\s])base([-_/.\s]|$)", re.IGNORECASE)

__all__ = ["chat_template_of", "is_chat_checkpoint", "names_base"]


def chat_template_of(path: str | Path | None) -> str | None:
    """The chat template in a checkpoint directory's tokenizer files, or None."""
    if path is None:
        return None
    p = Path(path)
    jinja = p / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text() or None
    cfg = p / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        tmpl = json.loads(cfg.read_text()).get("chat_template")
    except (json.JSONDecodeError, AttributeError):
        return None
    if isinstance(tmpl, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}
        tmpl = named.get("default") or next(iter(named.values()), None)
    return tmpl if isinstance(tmpl, str) and tmpl.strip() else None


def names_base(path: str | Path | None, config: dict[str, Any] | None = None) -> bool:
    """The checkpoint's own directory name (for a hub cache snapshot: the repo id), or
    ``_name_or_path`` in its config, says ``base`` as a word (``LLaDA-8B-Base``, ``Dream-v0-Base-7B``)."""
    names = [str(config.get("_name_or_path", "")) if config else ""]
    if path is not None:
        parts = Path(path).parts
        if len(parts) >= 3 and parts[-2] == "snapshots":  # hub cache: models--ORG--NAME/snapshots/<rev>
            names.append(parts[-3].removeprefix("models--").replace("--", "/"))
        elif parts:
            names.append(parts[-1])  # the checkpoint's own directory, not the folders above it
    return any(_BASE.search(n) for n in names if n)


def is_chat_checkpoint(path: str | Path | None, config: dict[str, Any] | None = None,
                       tokenizer: Any | None = None) -> bool:
    """True when the checkpoint is an instruct one: it has a chat template (in ``tokenizer``, or in
    its tokenizer files) and its name does not mark it as a base model."""
    tmpl = getattr(tokenizer, "chat_template", None) if tokenizer is not None else chat_template_of(path)
    return bool(tmpl) and not names_base(path, config)
