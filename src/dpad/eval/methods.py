"""Benchmark method names (the speed-up ladder) and how each maps to a :class:`DecodeConfig`.

A method is a ``+``-joined set of parts: ``vanilla`` | ``et`` (early termination) | ``parallel``
(Fast-dLLM threshold decoding) | ``prefix`` / ``dual`` (KV cache) | ``dpad`` (Gaussian suffix
dropout, which implies early termination as in the paper). Parts may be given in any order
(``parallel+prefix+et`` == ``et+parallel+prefix``); :func:`canonical_method` returns the
order of :meth:`DecodeConfig.method_name`.

The *switches* (parallel rule, cache, suffix policy, early termination) come from the method; the
*parameters* (gen length, block length, DPad's W, k, a; Dream's confidence and schedule) come
from :func:`default_params`: the published preset for the model family and task, or the
embedded model's defaults (:data:`EMBEDDED_DEFAULTS`). Explicit decoding flags override both.

``parallel`` means the family's default parallel rule: Fast-dLLM's threshold 0.9 for the
published models, :data:`EMBEDDED_PARALLEL` (chosen on the accuracy-speed frontier,
``benchmarks/results/frontier.md``) for the embedded model. A rule suffix picks another one:
``parallel+prefix+dpad-threshold0.9``, ``...-eb0.01``, ``...-factor0.5``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..config import PRESETS, DecodeConfig
from ..errors import ConfigError, DpadError
from ..rules import RULES, by_short, rule_fields

__all__ = [
    "EMBEDDED_DEFAULTS",
    "EMBEDDED_PARALLEL",
    "LADDER",
    "METHOD_PARTS",
    "PARALLEL_THRESHOLD",
    "canonical_method",
    "default_params",
    "method_config",
    "model_family",
    "resolve_config",
    "rule_suffix",
]

LADDER: tuple[str, ...] = (
    "vanilla", "et", "dpad", "parallel", "parallel+dpad", "parallel+prefix", "parallel+prefix+dpad",
    "parallel+dual", "parallel+dual+dpad",
)
"""The speed-up ladder of the DPad paper (Fast-dLLM rows with and without DPad)."""

METHOD_PARTS: tuple[str, ...] = ("vanilla", "et", "parallel", "prefix", "dual", "dpad")
PARALLEL_THRESHOLD = 0.9
"""Fast-dLLM's confidence threshold: the ``parallel`` rule of the published model families."""

RULE_FIELDS: tuple[str, ...] = rule_fields()
"""Every DecodeConfig field of the parallel rule (each registered rule's knob, then the guard's)."""
EMBEDDED_PARALLEL: dict[str, Any] = {"threshold": 0.99}
"""The embedded model's ``parallel`` rule: the point of the accuracy-speed frontier
(``benchmarks/results/frontier.md``) with the fewest forwards whose accuracy stays within 1 point
of vanilla's. Fast-dLLM's threshold 0.9 stays available as ``...-threshold0.9``."""

EMBEDDED_DEFAULTS: dict[str, Any] = {
    "gen_length": 256, "block_length": 32, "window": 128, "sigma": 4.0, "scale": 2.0,
}
"""Parameters for the embedded 5.5M-parameter model (answers of ~50 tokens, trained with up to
2,100 tokens of EOS padding). Block 32 as in the paper. DPad keeps W=128 suffix positions at
most, k=4, a=2 (the LLaDA-Instruct GSM8K k and a): about 32 kept tokens per block, enough
for the model to place its EOS, while the cost of a forward stays independent of gen length."""

# task -> preset task key (arith is GSM8K-formatted, so GSM8K settings apply to real models)
_TASK_KEYS = {"arith": "gsm8k", "gsm8k": "gsm8k", "math": "math", "humaneval": "humaneval", "mbpp": "mbpp"}
_DPAD_KEYS = ("gen_length", "block_length", "window", "sigma", "scale", "confidence", "schedule")


def _suffix_pattern() -> re.Pattern[str]:
    """``METHOD-SHORTVALUE`` for every registered rule's short name (longest first)."""
    shorts = sorted((re.escape(s.short) for s in RULES.values()), key=len, reverse=True)
    return re.compile(rf"(.*?)-({'|'.join(shorts)})([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)")


def _split_rule(name: str) -> tuple[str, dict[str, Any] | None, str]:
    """``'parallel+prefix-threshold0.9'`` -> (``'parallel+prefix'``, the rule's fields, ``'-threshold0.9'``);
    the suffixes are the registered rules' short names (:data:`dpad.rules.RULES`)."""
    m = _suffix_pattern().fullmatch(str(name).strip().lower())
    if not m:
        return str(name), None, ""
    rule = dict.fromkeys(RULE_FIELDS)
    rule[by_short(m.group(2)).name] = float(m.group(3))
    return m.group(1), rule, f"-{m.group(2)}{float(m.group(3)):g}"


def rule_suffix(cfg: DecodeConfig) -> str:
    """The method-name suffix that names ``cfg``'s parallel rule (``-threshold0.9``, ``-eb0.01``, ...)."""
    if cfg.dependency_distance is not None:
        strict = "never" if cfg.dependency_threshold is None else f"{cfg.dependency_threshold:g}"
        base = rule_suffix(cfg.replace(dependency_distance=None, dependency_threshold=None))
        return f"{base}-guard{cfg.dependency_distance}@{strict}"
    for spec in RULES.values():
        v = getattr(cfg, spec.name)
        if v is not None:
            return f"-{spec.short}{v:g}"
    return ""


def canonical_method(name: str) -> str:
    """Validate a method name and return it in canonical part order (``et+parallel+prefix``), with
    its rule suffix (``-threshold0.9``) if any."""
    name, rule, suffix = _split_rule(name)
    parts = [p.strip().lower() for p in str(name).split("+") if p.strip()]
    if not parts:
        raise ConfigError(f"method {name!r} is empty; use e.g. {', '.join(LADDER)}")
    unknown = [p for p in parts if p not in METHOD_PARTS]
    if unknown:
        raise ConfigError(f"method {name!r}: unknown part(s) {', '.join(unknown)}; parts are "
                          f"{' | '.join(METHOD_PARTS)} joined by '+', e.g. {', '.join(LADDER)}")
    if "vanilla" in parts and len(parts) > 1:
        raise ConfigError(f"method {name!r}: 'vanilla' cannot be combined with other parts")
    if "prefix" in parts and "dual" in parts:
        raise ConfigError(f"method {name!r}: choose one cache, prefix or dual")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"method {name!r} repeats a part")
    if rule is not None and "parallel" not in parts:
        raise ConfigError(f"method {name + suffix!r}: a rule suffix ({suffix}) needs the 'parallel' part")
    return _switches_to_config(set(parts), DecodeConfig()).method_name() + suffix


def _switches_to_config(parts: set[str], base: DecodeConfig, rule: dict[str, Any] | None = None) -> DecodeConfig:
    """The method's switches on ``base``. ``parallel`` uses ``rule`` if given, else the base's own
    parallel rule if it has one, else Fast-dLLM's threshold 0.9."""
    dpad = "dpad" in parts
    if "parallel" not in parts:
        rule_fields: dict[str, Any] = dict.fromkeys(RULE_FIELDS)
    elif rule is not None:
        rule_fields = rule
    elif base.parallel:
        rule_fields = {f: getattr(base, f) for f in RULE_FIELDS}
    else:
        rule_fields = {**dict.fromkeys(RULE_FIELDS), "threshold": PARALLEL_THRESHOLD}
    return base.replace(
        **rule_fields,
        cache="dual" if "dual" in parts else "prefix" if "prefix" in parts else "none",
        suffix="gaussian" if dpad else "full",
        window=(base.window or base.gen_length) if dpad else base.window,
        early_termination=dpad or "et" in parts,
    )


def model_family(model_path: str | Path | None, config: dict[str, Any] | None = None) -> str:
    """``embedded``, ``llada-instruct``, ``llada-1.5``, ``dream-base`` or ``dream-instruct`` (picks the
    preset family; Dream's instruct checkpoint is told apart by its chat template, see
    :func:`dpad.models.chat.is_chat_checkpoint`)."""
    from ..api import embedded_model_path

    if model_path is None:
        return "embedded"
    try:
        if Path(model_path).resolve() == embedded_model_path().resolve():
            return "embedded"
    except OSError:
        pass
    if config is not None and config == _embedded_config():
        return "embedded"  # a copy of it (a hub id, another directory): the same model, the same presets
    name = str(model_path).lower()
    mtype = str((config or {}).get("model_type", "")).lower()
    if "dream" in mtype or "dream" in name:
        return "dream-instruct" if _is_chat_dir(model_path, config) else "dream-base"
    if "1.5" in name or "1_5" in name:
        return "llada-1.5"
    return "llada-instruct"


@functools.lru_cache(maxsize=1)
def _embedded_config() -> dict[str, Any]:
    from ..api import embedded_model_path

    return json.loads((embedded_model_path() / "config.json").read_text())


def _is_chat_dir(model_path: str | Path, config: dict[str, Any] | None) -> bool:
    from ..models.chat import is_chat_checkpoint
    from ..models.loading import resolve_checkpoint

    try:
        path = resolve_checkpoint(model_path)
    except DpadError:
        return False
    return is_chat_checkpoint(path, config)


# families without published DPad settings of their own take those of their base model
_PARAMS_FAMILY = {"dream-instruct": "dream-base"}


def default_params(family: str, task: str | None = None) -> dict[str, Any]:
    """Decoding parameters (not switches) for a model family and task.

    ``embedded``: :data:`EMBEDDED_DEFAULTS` and its parallel rule :data:`EMBEDDED_PARALLEL`.
    Otherwise the published preset ``{family}-{task}`` (e.g. ``llada-1.5-gsm8k``), falling back to
    the family's GSM8K preset (whose parallel rule is threshold 0.9); ``dream-instruct`` has no DPad
    settings of its own and takes Dream-Base's.
    """
    if family == "embedded":
        return {**EMBEDDED_DEFAULTS, **EMBEDDED_PARALLEL}
    key = _TASK_KEYS.get(task or "gsm8k", "gsm8k")
    family = _PARAMS_FAMILY.get(family, family)
    name = f"{family}-{key}" if f"{family}-{key}" in PRESETS else f"{family}-gsm8k"
    if name not in PRESETS:
        raise ConfigError(f"no preset for model family {family!r}; pass --preset or the decoding flags")
    return {k: v for k, v in PRESETS[name].items() if k in _DPAD_KEYS}


def method_config(method: str, params: dict[str, Any] | DecodeConfig | None = None,
                  **overrides: Any) -> DecodeConfig:
    """The DecodeConfig of ``method`` on top of ``params`` (a dict of fields or a config), with
    ``overrides`` (explicit flags; ``None`` values ignored) applied last."""
    canonical_method(method)  # validates
    name, rule, _ = _split_rule(method)
    parts = {p.strip().lower() for p in name.split("+")}
    if isinstance(params, DecodeConfig):
        base = params
    else:
        base = DecodeConfig(**{k: v for k, v in (params or {}).items() if k in DecodeConfig.__dataclass_fields__})
    cfg = _switches_to_config(parts, base, rule)
    explicit = {k: v for k, v in overrides.items() if v is not None}
    if any(k in explicit for k in RULES):  # an explicit rule replaces the method's one
        explicit = {**{k: None for k in RULES if k not in explicit}, **explicit}
    if explicit:
        cfg = cfg.replace(**explicit)
    return cfg


def resolve_config(method: str | None, *, preset_name: str | None = None, family: str = "embedded",
                   task: str | None = None, overrides: dict[str, Any] | None = None,
                   unset: Collection[str] = ()) -> tuple[str, DecodeConfig]:
    """(method label, DecodeConfig) for an eval/bench run.

    * ``preset_name`` alone: the preset plus ``overrides``; the label is its ``method_name()``.
    * ``method`` (with or without a preset): the method's switches on top of the preset's (or
      the family/task default) parameters, then ``overrides``.

    ``overrides`` with the value None are ignored; the fields named in ``unset`` are set to None last
    (the lm-eval model's ``threshold=none``: the method's own rule is turned off).

    The returned label is the *actual* configuration's ``method_name()``, so an override such as
    ``--threshold`` on ``vanilla`` is labelled honestly (``parallel``), followed by the rule suffix
    (``-threshold0.9``) when the parallel rule is not the family's default one.
    """
    from ..config import preset

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if preset_name:
        base = preset(preset_name)
        cfg = method_config(method, base, **overrides) if method else base.replace(**overrides)
    else:
        cfg = method_config(method or "vanilla", default_params(family, task), **overrides)
    if unset:
        cfg = cfg.replace(**dict.fromkeys(unset))
    label = cfg.method_name()
    if cfg.parallel:
        default = EMBEDDED_PARALLEL if family == "embedded" and not preset_name else {"threshold": PARALLEL_THRESHOLD}
        if {f: getattr(cfg, f) for f in RULE_FIELDS} != {**dict.fromkeys(RULE_FIELDS), **default}:
            label += rule_suffix(cfg)
    return label, cfg
