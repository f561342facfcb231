"""lm-evaluation-harness model ``dpad``: any dpad checkpoint with any DecodeConfig, via lm-eval.

lm-eval 0.4.x finds models in its own registry only (it does not scan package entry points),
so the class must be imported before lm-eval looks the name up. Use our launcher, which
registers ``dpad`` and then runs lm-eval's own command line unchanged::

    python -m dpad.eval.lm_eval_main --model dpad \\
        --model_args pretrained=GSAI-ML/LLaDA-8B-Instruct,method=parallel+prefix+dpad,gen_length=256 \\
        --tasks gsm8k --batch_size 8

or, in Python, ``import dpad.eval.lm_eval_model`` and then ``lm_eval.simple_evaluate(model="dpad", ...)``.

Model arguments (``--model_args k=v,...``):

* ``pretrained``: checkpoint directory or Hugging Face Hub id ``ORG/NAME`` (local hub cache first;
  omitted or ``embedded``: the embedded model), ``revision``: its hub branch, tag or commit;
  ``device`` (``auto``), ``dtype`` (``auto``), ``threads``, ``compile`` (torch.compile the forward);
* ``method``: a ladder method (``vanilla``, ``dpad``, ``parallel+prefix+dpad``, ...; the
  model family's published W/k/a) and/or ``preset`` (a :data:`dpad.config.PRESETS` name);
* every :class:`~dpad.config.DecodeConfig` field (:data:`dpad.config.FIELDS`: ``gen_length``,
  ``steps``, ``threshold``, ``entropy_bound``, ``dependency_distance``, ``suffix``, ``window`` (``W``),
  ``sigma`` (``k``), ``scale`` (``a``), ``cache``, ``seed``, ...), with its type and range; they
  override the method/preset. ``none`` unsets a field that may be unset (``threshold=none`` turns the
  method's parallel rule off, ``steps=none`` is one token per step) and is the value ``none`` of
  ``cache`` and ``compat``;
* ``chat``: wrap each context as one user turn of the tokenizer's chat template; default ``auto``:
  yes for an instruct checkpoint (a chat template and no ``base`` in its name, see
  :mod:`dpad.models.chat`, e.g. Dream-v0-Instruct-7B, LLaDA-8B-Instruct), unless lm-eval formats the
  contexts itself (``--apply_chat_template``, through :meth:`DpadLM.apply_chat_template`);
* ``batch_size`` (lm-eval's ``--batch_size``): prompts decoded together by the engine.

Only ``generate_until`` is implemented: a diffusion LM has no left-to-right likelihood, so
``loglikelihood`` tasks raise ``NotImplementedError``. The generation length is the config's
``gen_length`` (lm-eval's ``max_gen_toks`` is ignored, as in the LLaDA/Fast-dLLM harnesses);
stop strings (``until``) cut the decoded text post hoc. ``temperature`` in a task's
``generation_kwargs`` is honoured when ``do_sample`` is not false.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import model_registry

from ..config import FIELDS, DecodeConfig
from ..errors import ConfigError

__all__ = ["DpadLM", "decode_kwargs_from_model_args"]

_ALIASES = {a: k.name for k in FIELDS.values() for a in {*k.aliases, *(a.lower() for a in k.aliases)}}
"""Short names: ``k`` -> sigma, ``a`` -> scale, ``W`` / ``w`` -> window (from :data:`~dpad.config.FIELDS`)."""


def _coerce(name: str, value: Any) -> Any:
    """lm-eval parses ``none`` as None, numbers as int/float and true/false as bool; bring the value to
    the field's type and check it against its :data:`~dpad.config.FIELDS` entry (None unsets a field
    that may be unset)."""
    try:
        return FIELDS[name].coerce(value)
    except ConfigError as e:
        raise ConfigError(f"model arg {e}", field=name) from None


def decode_kwargs_from_model_args(args: dict[str, Any]) -> dict[str, Any]:
    """DecodeConfig fields (aliases k, a, W resolved, types coerced) found in ``args``; a field given
    as ``none`` maps to None (unset)."""
    out: dict[str, Any] = {}
    for key, value in args.items():
        name = _ALIASES.get(key, key)
        if name in FIELDS:
            out[name] = _coerce(name, value)
    return out


def _as_bool(v: Any) -> bool:
    return v.lower() in ("1", "true", "yes") if isinstance(v, str) else bool(v)


class DpadLM(LM):
    """lm-eval model that decodes with :func:`dpad.generate` (see the module docstring)."""

    def __init__(self, pretrained: str | None = None, device: str | None = "auto", dtype: str | None = "auto",
                 batch_size: int | str | None = 1, max_batch_size: int | None = None, method: str | None = None,
                 preset: str | None = None, chat: bool | str | None = "auto", threads: int | None = None,
                 revision: str | None = None, compile: bool | str = False, **kwargs: Any) -> None:  # noqa: A002
        super().__init__()
        import torch

        from ..api import load
        from ..models import read_config
        from .methods import model_family, resolve_config
        from .parallel import init_distributed

        decode = decode_kwargs_from_model_args(kwargs)
        unknown = sorted(k for k in kwargs if _ALIASES.get(k, k) not in FIELDS)
        if unknown:
            raise ConfigError(f"unknown dpad model arg(s): {', '.join(unknown)}")
        path = None if pretrained in (None, "", "embedded") else str(pretrained)
        family = model_family(path, read_config(path, revision) if path else None)
        unset = [k for k, v in decode.items() if v is None]  # `threshold=none`: unset, even the method's own
        self.method, self.config = resolve_config(method, preset_name=preset, family=family, overrides=decode,
                                                  unset=unset)
        self.chat = None if chat is None or str(chat).lower() == "auto" else _as_bool(chat)
        self._templated = False  # lm-eval applied the chat template to the contexts itself
        if isinstance(batch_size, str) and not batch_size.isdigit():  # "auto", "auto:4"
            batch_size = max_batch_size or 8
        self.batch_size = max(1, int(batch_size or 1))
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval passes its --device default (cuda:0) even on CPU-only machines
            logging.getLogger(__name__).warning("device %s is not available; using cpu", device)
            device = "cpu"
        self._dist = init_distributed(device)
        self._rank, self._world_size = self._dist.rank, self._dist.world_size
        if threads:
            torch.set_num_threads(int(threads))
        self.lm = load(path, device=self._dist.device_for(device or "auto"), dtype=dtype or "auto",
                       revision=revision, compile=_as_bool(compile))
        self._device = self.lm.model.device
        self.pretrained = path or "embedded"

    # ----------------------------------------------------------------- lm-eval API
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "the dpad lm-eval model implements generate_until only: a diffusion LM has no left-to-right "
            "log-likelihood. Use generative tasks (gsm8k, minerva_math, humaneval, mbpp, ...)")

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        raise NotImplementedError(
            "the dpad lm-eval model implements generate_until only (no perplexity for diffusion LMs)")

    def _config_for(self, gen_kwargs: dict[str, Any]) -> DecodeConfig:
        cfg = self.config
        temp = gen_kwargs.get("temperature")
        if temp is not None and gen_kwargs.get("do_sample", True) is not False:
            cfg = cfg.replace(temperature=float(temp))
        return cfg

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from tqdm.auto import tqdm

        from ..api import generate

        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        parsed: list[tuple[str, dict[str, Any], list[str]]] = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            until = gen_kwargs.get("until") or []
            if isinstance(until, str):
                until = [until]
            parsed.append((context, gen_kwargs, [u for u in until if u]))
            key = json.dumps({k: v for k, v in gen_kwargs.items() if k in ("temperature", "do_sample")},
                             sort_keys=True, default=str)
            groups.setdefault(key, []).append(i)
        chat = self.chat if self.chat is not None else (self.lm.is_chat and not self._templated)
        bar = tqdm(total=len(requests), desc="dpad generate_until", disable=disable_tqdm or self.rank != 0)
        for idxs in groups.values():
            cfg = self._config_for(parsed[idxs[0]][1])
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start : start + self.batch_size]
                gens = generate(self.lm, [parsed[i][0] for i in chunk], cfg, chat=chat,
                                batch_size=len(chunk)) if _accepts_batch_size() else \
                    generate(self.lm, [parsed[i][0] for i in chunk], cfg, chat=chat)
                for i, g in zip(chunk, gens, strict=True):
                    text = g.text or ""
                    for stop in parsed[i][2]:
                        pos = text.find(stop)
                        if pos >= 0:
                            text = text[:pos]
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return [r if r is not None else "" for r in results]

    # ----------------------------------------------------------------- chat templates
    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        tok = self.lm.tokenizer
        if tok is None or not getattr(tok, "chat_template", None):
            raise ConfigError(f"{self.pretrained} has no chat template; run without --apply_chat_template")
        self._templated = True
        return tok.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt, tokenize=False)

    @property
    def tokenizer_name(self) -> str:
        return str(self.pretrained).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if chat_template:  # lm-eval asks when it formats the contexts (also with cached requests)
            self._templated = True
        tok = self.lm.tokenizer
        return getattr(tok, "chat_template", None) or ""

    # ----------------------------------------------------------------- data parallel
    def all_gather(self, tensor: Any) -> Any:
        import torch

        if self.world_size == 1:
            return tensor
        items = self._dist.gather(tensor.detach().cpu())
        out = torch.stack(items) if tensor.dim() == 0 else torch.cat(items)
        return out.to(tensor.device)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        objs = self._dist.gather(obj)
        return objs if self.rank == dst else None

    def barrier(self) -> None:
        self._dist.barrier()


def _accepts_batch_size() -> bool:
    from .runner import generate_accepts_batch_size

    return generate_accepts_batch_size()


def register() -> None:
    """Register ``dpad`` in lm-eval's model registry (idempotent; keeps lm-eval's own models)."""
    import lm_eval.models  # noqa: F401  (fills the registry with lm-eval's models first)

    if model_registry.get("dpad", None) is not DpadLM:
        model_registry.register("dpad")(DpadLM)


register()
