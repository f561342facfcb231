"""The public API: ``load()`` a checkpoint (the embedded model by default) and ``generate()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import DecodeConfig
from .engine import GenerationOutput, decode_batch
from .errors import ConfigError
from .models import LoadedModel
from .models import load as _load_checkpoint

EMBEDDED_MODEL = Path(__file__).parent / "assets" / "embedded"


def embedded_model_path() -> Path:
    """The directory of the tiny dLLM shipped inside the package (see MODEL_CARD.md)."""
    return EMBEDDED_MODEL


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device={device!r} is not a valid torch device (e.g. cpu, cuda, cuda:1)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was asked for but CUDA is not available; use device='cpu'")
    return dev


def load(path: str | Path | None = None, device: str | torch.device | None = "auto",
         dtype: str | torch.dtype | None = "auto", revision: str | None = None,
         compile: bool | dict[str, Any] = False) -> LoadedModel:  # noqa: A002
    """Load a LLaDA/Dream checkpoint: a directory, or a Hugging Face Hub id ``ORG/NAME`` (at
    ``revision``) taken from the local hub cache first; ``path=None`` loads the embedded model.

    ``dtype='auto'`` is bfloat16 on CUDA and float32 on CPU. ``compile=True`` runs the model
    forward through ``torch.compile`` (dynamic shapes on CPU; 32-token buckets + CUDA graphs on
    CUDA; a dict gives :class:`~dpad.models.compiled.CompiledForward` options) and warms it up
    once, printing the first compile time; same tokens as eager (see docs).
    """
    if not isinstance(compile, (bool, dict)):
        raise ConfigError(f"compile={compile!r} must be True, False or a dict of options (mode, bucket)")
    if path is None and revision is not None:
        raise ConfigError(f"revision={revision!r} needs a hub id: the embedded model has no revisions")
    dev = resolve_device(device)
    if dtype is None or dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    lm = _load_checkpoint(EMBEDDED_MODEL if path is None else path, device=dev, dtype=dtype, revision=revision)
    if compile is not False:
        from .engine.engine import warm_up
        from .models.compiled import compile_model, default_options

        opts = {**default_options(dev), **(compile if isinstance(compile, dict) else {})}
        try:
            compile_model(lm.model, **opts)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"compile options {compile!r}: {e}") from e
        warm_up(lm.model, mask_id=lm.mask_token_id, eos_id=lm.eos_token_id)
    return lm


@dataclass
class Generation:
    """One prompt's result: the response text (up to the first EOS), token ids and stats."""

    text: str | None
    prompt_ids: list[int]
    response_ids: list[int]
    generated_ids: list[int]
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "prompt_ids": self.prompt_ids, "response_ids": self.response_ids,
                "generated_ids": self.generated_ids, **self.stats}


def check_text(text: str, what: str = "prompt") -> str:
    """``text`` must be valid Unicode (encodable as UTF-8): a lone surrogate — from JSON's
    ``"\\ud800"`` or a command-line argument holding bytes that are not UTF-8 — is a ConfigError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        ch = text[e.start]
        why = (f"the byte 0x{ord(ch) - 0xDC00:02x} that is not UTF-8" if 0xDC80 <= ord(ch) <= 0xDCFF
               else f"the lone surrogate {ascii(ch)}")
        raise ConfigError(f"{what} is not valid text: it holds {why} at character {e.start}; "
                          "pass UTF-8 text") from e
    return text


def encode_prompt(lm: LoadedModel, prompt: str | list[int], chat: bool | None = None, *,
                  tokenizer: Any = None) -> list[int]:
    """Token ids for a prompt: ids pass through; text is tokenized (with the chat template when
    ``chat`` is True, or when ``chat`` is None and the checkpoint is an instruct one: it has a chat
    template and is not a base model, see :mod:`dpad.models.chat`). ``tokenizer``: a copy of the
    checkpoint's tokenizer to use instead of ``lm.tokenizer`` (the server encodes on its own copies)."""
    if isinstance(prompt, (list, tuple)) or isinstance(prompt, torch.Tensor):
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < lm.args.vocab_size]
        if bad:
            raise ConfigError(f"prompt ids {bad[:5]} are outside the vocabulary [0, {lm.args.vocab_size})")
        return ids
    if not isinstance(prompt, str):
        raise ConfigError(f"a prompt must be text or a list of token ids, got {type(prompt).__name__}")
    check_text(prompt)
    tok = tokenizer if tokenizer is not None else lm.tokenizer
    if tok is None:
        raise ConfigError("this checkpoint has no tokenizer files: pass token ids (e.g. --prompt-ids 1,2,3)")
    use_chat = chat if chat is not None else getattr(lm, "is_chat", bool(getattr(tok, "chat_template", None)))
    if use_chat:
        if not getattr(tok, "chat_template", None):
            raise ConfigError("chat=True but the tokenizer has no chat template; use chat=False")
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                       tokenize=False)
        return tok(text, add_special_tokens=False)["input_ids"]
    return tok(prompt, add_special_tokens=False)["input_ids"]


def to_generation(lm: LoadedModel, out: GenerationOutput) -> Generation:
    resp = out.generated[: out.response_length]
    text = lm.tokenizer.decode(resp, skip_special_tokens=True) if lm.tokenizer is not None else None
    return Generation(text=text, prompt_ids=out.prompt, response_ids=resp, generated_ids=out.generated,
                      stats=out.stats())


DEFAULT_MAX_BATCH = 32


def generate(lm: LoadedModel, prompts: str | list[int] | list[str] | list[list[int]],
             config: DecodeConfig | None = None, *, chat: bool | None = None, batch_size: int | None = None,
             **overrides: Any) -> Generation | list[Generation]:
    """Decode one prompt (text or ids) or a list of them. Returns one Generation per prompt
    (a single Generation when a single prompt was given).

    A list is decoded in batches of ``batch_size`` rows (default: all prompts, at most
    ``DEFAULT_MAX_BATCH``), prompts of similar length together; every row decodes what it would
    decode alone (same tokens, same NFE: exactly so in float64; in lower precision padding can change
    the floating-point reduction order), results come back in the order given."""
    cfg = config or DecodeConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    single = isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                          and isinstance(prompts[0], int))
    batch = [prompts] if single else list(prompts)
    if not batch:
        raise ConfigError("no prompts given (for unconditional generation pass one empty prompt: [[]], or '' "
                          "with chat=False)")
    if batch_size is None:
        batch_size = min(len(batch), DEFAULT_MAX_BATCH)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} is invalid: must be an integer >= 1")
    encoded = [encode_prompt(lm, p, chat) for p in batch]
    from .engine.loop import check_length

    for ids in encoded:  # validate every prompt before any heavy work
        check_length(len(ids), cfg, lm.args.max_seq_len)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[Generation | None] = [None] * len(encoded)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in chunks:
        outs = decode_batch(lm.model, [encoded[i] for i in chunk], cfg, mask_id=lm.mask_token_id,
                            eos_id=lm.eos_token_id, eot_id=getattr(lm, "eot_token_id", None))
        for i, out in zip(chunk, outs, strict=True):
            results[i] = to_generation(lm, out)
    return results[0] if single else results  # type: ignore[return-value]
