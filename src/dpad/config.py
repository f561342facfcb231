"""DecodeConfig: every decoding knob in one validated dataclass, plus named presets.

Every field is checked in ``validate()`` (called by ``__post_init__``); an invalid value raises
:class:`~dpad.errors.ConfigError` whose message names the field and its valid range (and whose
``field`` attribute holds the field's name).

:data:`FIELDS` describes each field once (its type, range, whether it may be unset, its help text);
the command-line flags (:mod:`dpad.flags`), the server's request schema (:mod:`dpad.serve.protocol`)
and the lm-eval model arguments (:mod:`dpad.eval.lm_eval_model`) are derived from it. The parallel
rules' fields come from the rule registry, :mod:`dpad.rules`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError, short_repr
from .rules import GUARD_FIELDS, RULES

SUFFIX_POLICIES = ("full", "window", "gaussian", "uniform")
CACHE_POLICIES = ("none", "prefix", "dual")
CONFIDENCES = ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin")
SCHEDULES = ("auto", "llada", "dream")
COMPAT = ("none", "fast-dllm", "dpad-dream")
RNGS = ("exact", "device")

# Absolute bounds, independent of the model (a model's context bounds gen_length further, see
# ``engine.loop.check_length``). They keep a typo or a hostile request from allocating without bound.
MAX_LENGTH = 1 << 20  # gen_length, block_length, window, uniform_keep, top_k (tokens)
MAX_SEED = 2**64 - 1  # what torch.Generator.manual_seed accepts
MAX_TEMPERATURE = 100.0  # Gumbel-max noise (-log u) ** T stays finite in float64 up to here


@dataclass
class DecodeConfig:
    """How to decode. Defaults: LLaDA vanilla (low_confidence, one token per step, block 32).

    Suffix (which masked positions after the current block the model sees):
      ``suffix``: ``full`` (vanilla), ``window`` (the first ``window`` suffix tokens),
      ``gaussian`` (DPad: keep distance-d token with p(d) = scale * phi(sigma * d / (window-1))),
      ``uniform`` (ablation: ``uniform_keep`` tokens drawn uniformly from the window).
    Cache: ``none`` | ``prefix`` | ``dual`` (Fast-dLLM; refreshed at every block start).
    Unmasking: ``confidence`` picks the score; ``threshold`` (Fast-dLLM: top-1 always plus every
      other position with confidence >= threshold) or ``factor`` replace the fixed schedule;
      otherwise ``steps`` spread over the blocks with the ``schedule`` (``llada`` even split,
      ``dream`` linear timesteps; ``auto`` picks by model family). ``entropy_bound`` (gamma) is the
      EB-sampler: commit the longest prefix of the confidence ranking whose summed entropy minus
      its largest entropy is <= gamma. ``dependency_distance`` (D) guards any of these parallel
      rules: no two positions within D of each other are committed in one step unless both have
      confidence >= ``dependency_threshold`` (unset: never).
    End tokens (LLaDA's sampler options, its paper's Appendix B.4): ``logits_eos_inf`` sets the EOS
      logit to -inf before the proposal (EOS is never proposed); ``confidence_eos_eot_inf`` removes
      EOS and EoT (end of turn, where the model has one) from the distribution the confidence is
      read from, so a position proposing them gets confidence 0 and is committed last.
    ``compat`` reproduces a reference implementation's quirks (see docs/quirks.md).
    """

    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None  # None: one token per step (steps = gen_length)
    confidence: str = "low_confidence"
    schedule: str = "auto"
    threshold: float | None = None
    factor: float | None = None
    entropy_bound: float | None = None
    dependency_distance: int | None = None
    dependency_threshold: float | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float = 0.0
    cfg_scale: float = 0.0
    eps: float = 1e-3
    suffix: str = "full"
    window: int | None = None
    sigma: float = 4.0
    scale: float = 2.0
    uniform_keep: int | None = None
    cache: str = "none"
    early_termination: bool = False
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    seed: int = 1234
    rng: str = "exact"
    compat: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Every field against its :data:`FIELDS` entry (type, range, unset), then the rules between
        fields. A ConfigError names the field (its ``field`` attribute too)."""
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"{name}={short_repr(getattr(self, name))} is invalid: {why}", field=name)

        for knob in FIELDS.values():
            if knob.type in (int, float) and isinstance(getattr(self, knob.name), str):
                # a typed API: text is parsed where it arrives (flags, lm-eval args), never here
                bad(knob.name, f"text is not a number: {knob.requirement()}")
            value = knob.check(getattr(self, knob.name))
            if value is not _INVALID:
                object.__setattr__(self, knob.name, value)  # an int given for a float field becomes a float
                continue
            bad(knob.name, knob.requirement())

        nb = self.gen_length // self.block_length
        if self.gen_length % self.block_length:
            bad("gen_length", f"must be a multiple of block_length={self.block_length} "
                              f"(e.g. {(nb + 1) * self.block_length})")
        if self.steps is not None:
            if self.steps > self.gen_length:
                bad("steps", f"must be <= gen_length={self.gen_length} (every step commits at least one token)")
            if self.steps % nb:
                bad("steps", f"must be a multiple of the number of blocks ({nb} = gen_length / block_length)")
        rules = [name for name in RULES if getattr(self, name) is not None]
        if len(rules) > 1:
            bad(rules[-1], f"{_or(list(RULES), 'and')} are exclusive: set only one (got {', '.join(rules)})")
        if self.dependency_distance is not None and not self.parallel:
            bad("dependency_distance", f"guards a parallel rule: also set {_or(list(RULES))}")
        if self.dependency_threshold is not None and self.dependency_distance is None:
            bad("dependency_threshold", "only applies with dependency_distance (D >= 1)")
        if self.confidence == "origin" and self.parallel:
            bad("confidence", f"'origin' reveals positions at random and cannot be combined with {'/'.join(RULES)}")
        if self.rng == "device":
            per_row = [name for name, on in (
                (f"confidence={self.confidence!r}", self.confidence in ("random", "origin")),
                ("logits_eos_inf", self.logits_eos_inf), ("confidence_eos_eot_inf", self.confidence_eos_eot_inf))
                if on]
            if per_row:
                bad("rng", f"'device' draws the token samples only; {', '.join(per_row)} draw(s) or decide per "
                             "row: use rng='exact'")
        if self.cfg_scale > 0 and self.cache != "none":
            bad("cfg_scale", "classifier-free guidance runs without a KV cache: set cache='none'")
        if self.suffix != "full" and self.window is None:
            bad("window", f"suffix={self.suffix!r} needs a window size W >= 1")
        if self.suffix == "uniform":
            if self.uniform_keep is None:
                bad("uniform_keep", "suffix='uniform' needs uniform_keep, an integer >= 0")
            if self.uniform_keep > self.window:
                bad("uniform_keep", f"must be <= window={self.window}")

    # ------------------------------------------------------------------ helpers
    @property
    def parallel(self) -> bool:
        """Whether a parallel rule (one of :data:`dpad.rules.RULES`: threshold, factor, entropy_bound,
        ...) decides how many to commit."""
        return any(getattr(self, name) is not None for name in RULES)

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        steps = self.gen_length if self.steps is None else self.steps
        return steps // self.num_blocks

    def replace(self, **changes: Any) -> DecodeConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecodeConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown decoding option(s): {', '.join(unknown)}")
        return cls(**d)

    def method_name(self) -> str:
        """The benchmark method label, '+'-joined in the order et|parallel|prefix/dual|dpad."""
        parts = []
        dpad = self.suffix != "full"
        if self.early_termination and not dpad:
            parts.append("et")
        if self.parallel:
            parts.append("parallel")
        if self.cache != "none":
            parts.append(self.cache)
        if dpad:
            parts.append("dpad" if self.suffix == "gaussian" else self.suffix)
        return "+".join(parts) or "vanilla"


# ---------------------------------------------------------------------------- field descriptions

_INVALID = object()  # Knob.check's answer for a value the field refuses
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class Knob:
    """One :class:`DecodeConfig` field as every surface sees it: its type (``bool``, ``int``,
    ``float`` or ``str``), its range or choices, whether it may be unset (``nullable``: None is
    valid, ``unset`` says what None means) and its help text. ``low``/``high`` bound numbers
    (``None``: no bound) with ``low_open``/``high_open`` excluding the ends; ``aliases`` are short
    names (``k`` for ``sigma``: the CLI's ``-k``, the lm-eval argument ``k``)."""

    name: str
    type: type
    help: str
    nullable: bool = False
    unset: str = ""
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def default(self) -> Any:
        return DecodeConfig.__dataclass_fields__[self.name].default

    def range_text(self) -> str:
        """``in (0, 1]``, ``>= 1``, ... ('' without bounds)."""
        def num(x: float) -> str:
            return str(int(x)) if self.type is int else f"{x:g}"

        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {num(self.low)}"  # type: ignore[arg-type]
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {num(self.high)}"
        return (f"in {'(' if self.low_open else '['}{num(self.low)}, {num(self.high)}"
                f"{')' if self.high_open else ']'}")

    def expects(self) -> str:
        """What a valid value is, in words: ``a number in (0, 1]``, ``one of none, prefix, dual``."""
        if self.type is bool:
            return "True or False"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        kind = {int: "an integer", float: "a number"}.get(self.type, "a string")
        return f"{kind} {self.range_text()}".strip()

    def requirement(self) -> str:
        """The end of an error message: ``must be a number in (0, 1] (None: the rule is off)``."""
        if not self.nullable:
            return f"must be {self.expects()}"
        return f"must be {self.expects()} (None: {self.unset or 'unset'})"

    def in_range(self, v: float) -> bool:
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return False
        return self.high is None or not (v > self.high or (self.high_open and v == self.high))

    def check(self, v: Any) -> Any:
        """``v`` as the field holds it (a number given as text becomes a float), or ``_INVALID``."""
        if v is None:
            return None if self.nullable else _INVALID
        if self.type is bool:
            return v if isinstance(v, bool) else _INVALID
        if self.type is str:
            return v if isinstance(v, str) and (not self.choices or v in self.choices) else _INVALID
        if isinstance(v, bool):
            return _INVALID
        if self.type is int:
            if not isinstance(v, int):
                return _INVALID
        else:
            try:
                v = float(v)
            except (TypeError, ValueError, OverflowError):
                return _INVALID
            if not math.isfinite(v):
                return _INVALID
        return v if self.in_range(v) else _INVALID

    def coerce(self, value: Any, *, allow_none: bool = True) -> Any:
        """A value given as text (a flag) or as lm-eval parsed it (``none`` -> None, numbers, true/false),
        brought to the field's type and checked. ``none``/None unsets a nullable field (only where
        ``allow_none``) and is the choice ``'none'`` of a text field that has one. Raises ConfigError."""
        v = value
        if isinstance(v, str):
            text = v.strip()
            if text.lower() in ("none", "null") or (allow_none and not text):
                v = None
            elif self.type is bool and text.lower() in _TRUE + _FALSE:
                v = text.lower() in _TRUE
            elif self.type is int and text.lstrip("+-").isdigit():
                v = int(text)
        elif self.type is int and isinstance(v, float) and v.is_integer():
            v = int(v)
        elif self.type is bool and type(v) is int and v in (0, 1):
            v = bool(v)
        if v is None:
            if self.type is str and "none" in self.choices:
                v = "none"
            elif not allow_none:
                v = _INVALID
        out = self.check(v) if v is not _INVALID else _INVALID
        if out is _INVALID:
            raise ConfigError(f"{self.name}={short_repr(value)} is invalid: {self.requirement()}", field=self.name)
        return out

    def json_schema(self) -> dict[str, Any]:
        """The field as a JSON schema (null included where it may be unset)."""
        s: dict[str, Any]
        if self.type is bool:
            s = {"type": "boolean"}
        elif self.choices:
            s = {"enum": list(self.choices)}
        elif self.type is str:
            s = {"type": "string"}
        else:
            s = {"type": "integer" if self.type is int else "number"}
            cast = int if self.type is int else float
            if self.low is not None:
                s["exclusiveMinimum" if self.low_open else "minimum"] = cast(self.low)
            if self.high is not None:
                s["exclusiveMaximum" if self.high_open else "maximum"] = cast(self.high)
        if self.nullable:
            s = {"anyOf": [s, {"type": "null"}]}
        return {**s, "description": self.help}


def _rule_knob(name: str) -> Knob:
    spec = RULES[name]
    return Knob(name, float, f"{spec.help}. At most one parallel rule: {_or(list(RULES))}", nullable=True,
                unset="the rule is off", low=spec.low, high=spec.high, low_open=spec.low_open,
                high_open=spec.high_open)


def _or(names: list[str], word: str = "or") -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


_SIZE = dict(low=1, high=MAX_LENGTH)
_KNOBS = (
    Knob("gen_length", int, "tokens to generate (a multiple of block_length)", **_SIZE),
    Knob("block_length", int, "block size of semi-autoregressive decoding", **_SIZE),
    Knob("steps", int, "total decoding steps of the fixed schedule", nullable=True,
         unset="gen_length, one token per step", **_SIZE),
    Knob("confidence", str, "score that ranks the masked positions", choices=CONFIDENCES),
    Knob("schedule", str, "fixed schedule: llada (even split), dream (linear timesteps) or auto (by model family)",
         choices=SCHEDULES),
    Knob("dependency_distance", int, "D: with a parallel rule, never commit two positions within D of each other "
         "in one step unless both pass dependency_threshold", nullable=True, unset="no guard", **_SIZE),
    Knob("dependency_threshold", float, "the stricter confidence bound of dependency_distance", nullable=True,
         unset="never", low=0.0, high=1.0, low_open=True),
    Knob("temperature", float, "sampling temperature (0 = greedy)", low=0.0, high=MAX_TEMPERATURE),
    Knob("top_p", float, "nucleus filter before sampling", nullable=True, unset="no nucleus filter", low=0.0,
         high=1.0, low_open=True),
    Knob("top_k", int, "top-k filter before sampling", nullable=True, unset="no top-k filter", **_SIZE),
    Knob("alg_temp", float, "Dream: sample positions with softmax(conf / alg_temp) instead of top-k", low=0.0),
    Knob("cfg_scale", float, "classifier-free guidance scale (no cache)", low=0.0),
    Knob("eps", float, "Dream schedule: final timestep", low=0.0, high=1.0, low_open=True, high_open=True),
    Knob("suffix", str, "suffix policy: full (vanilla), window, gaussian (DPad), uniform (ablation)",
         choices=SUFFIX_POLICIES),
    Knob("window", int, "W: suffix window size in tokens", nullable=True, unset="no window, for suffix 'full'",
         aliases=("W",), **_SIZE),
    Knob("sigma", float, "k: the Gaussian's spread (window end at k standard deviations)", low=0.0, low_open=True,
         aliases=("k",)),
    Knob("scale", float, "a: keep-probability scale, p(d) = a * phi(k d / (W-1))", low=0.0, low_open=True,
         aliases=("a",)),
    Knob("uniform_keep", int, "tokens kept by suffix 'uniform'", nullable=True, unset="not set, valid unless suffix is 'uniform'",
         low=0, high=MAX_LENGTH),
    Knob("cache", str, "KV cache: none, prefix or dual", choices=CACHE_POLICIES),
    Knob("early_termination", bool, "stop once a finished block holds EOS"),
    Knob("logits_eos_inf", bool, "LLaDA option: EOS logit -inf (EOS is never proposed)"),
    Knob("confidence_eos_eot_inf", bool, "LLaDA option: EOS/EoT get confidence 0 (committed last)"),
    Knob("seed", int, "seed of the sampling and DPad dropout generators", low=0, high=MAX_SEED),
    Knob("rng", str, "sampling noise: exact (the reference's CPU draws from the row's generator: the reference's "
         "tokens) or device (counter-based draws on the model's device, batched over rows: the same "
         "distributions, other tokens)", choices=RNGS),
    Knob("compat", str, "reproduce a reference implementation's quirks (docs/quirks.md)", choices=COMPAT),
)


def _fields_table() -> dict[str, Knob]:
    hand = {k.name: k for k in _KNOBS}
    names = [f.name for f in fields(DecodeConfig) if f.name != "extra"]
    missing = [n for n in (*RULES, *GUARD_FIELDS) if n not in names]
    if missing:
        raise TypeError(f"rules.py registers {missing}, which DecodeConfig has no field for")
    table = {n: _rule_knob(n) if n in RULES else hand.get(n) for n in names}
    undescribed = [n for n, k in table.items() if k is None]
    if undescribed or set(hand) - set(names):
        raise TypeError(f"FIELDS and DecodeConfig differ: {undescribed or sorted(set(hand) - set(names))}")
    return table  # type: ignore[return-value]


FIELDS: dict[str, Knob] = _fields_table()
"""Every DecodeConfig field but ``extra``, in field order: its one description (see :class:`Knob`)."""


def _p(**kw: Any) -> dict[str, Any]:
    return kw


# Published settings (block 32; DPad runs use early termination, as in the reference scripts).
# k -> sigma, a -> scale, W -> window. Parallel variants add threshold 0.9.
PRESETS: dict[str, dict[str, Any]] = {
    "vanilla": _p(),
    "llada-instruct-gsm8k": _p(gen_length=256, suffix="gaussian", sigma=4.0, scale=2.0, window=256,
                               early_termination=True),
    "llada-instruct-math": _p(gen_length=256, suffix="gaussian", sigma=4.0, scale=2.0, window=256,
                              early_termination=True),
    "llada-instruct-humaneval": _p(gen_length=512, suffix="gaussian", sigma=3.0, scale=2.3, window=512,
                                   early_termination=True),
    "llada-instruct-mbpp": _p(gen_length=512, suffix="gaussian", sigma=3.0, scale=2.3, window=128,
                              early_termination=True),
    "llada-1.5-gsm8k": _p(gen_length=256, suffix="gaussian", sigma=3.0, scale=1.6, window=256,
                          early_termination=True),
    "llada-1.5-math": _p(gen_length=256, suffix="gaussian", sigma=3.0, scale=1.6, window=256,
                         early_termination=True),
    "llada-1.5-humaneval": _p(gen_length=512, suffix="gaussian", sigma=3.0, scale=1.6, window=128,
                              early_termination=True),
    "llada-1.5-mbpp": _p(gen_length=512, suffix="gaussian", sigma=3.0, scale=1.6, window=512,
                         early_termination=True),
    "llada-1.5-gsm8k-long": _p(gen_length=1024, suffix="gaussian", sigma=3.0, scale=1.6, window=256,
                               early_termination=True),
    "dream-base-gsm8k": _p(gen_length=256, confidence="entropy", schedule="dream", suffix="gaussian",
                           sigma=4.0, scale=1.6, window=256, early_termination=True),
    "dream-base-math": _p(gen_length=256, confidence="entropy", schedule="dream", suffix="gaussian",
                          sigma=4.0, scale=1.6, window=128, early_termination=True),
    "dream-base-humaneval": _p(gen_length=512, confidence="entropy", schedule="dream", suffix="gaussian",
                               sigma=3.0, scale=2.3, window=128, early_termination=True),
    "dream-base-mbpp": _p(gen_length=512, confidence="entropy", schedule="dream", suffix="gaussian",
                          sigma=3.0, scale=1.6, window=128, early_termination=True),
    "dream-base-gsm8k-long": _p(gen_length=1024, confidence="entropy", schedule="dream", suffix="gaussian",
                                sigma=3.0, scale=2.3, window=128, early_termination=True),
    # LLaDA-MoE-7B-A1B-Instruct model card: generate(steps=128, gen_length=128, block_length=32,
    # temperature 0, cfg 0, low_confidence); its dInfer example uses threshold 0.9 (-parallel).
    "llada-moe-instruct": _p(gen_length=128, steps=128, block_length=32),
    # Dream-v0-Instruct-7B (prompts in its chat format): the model card's diffusion_generate call
    # (one block of 512, 512 steps, entropy, temperature 0.2, top-p 0.95, alg_temp 0), and the
    # block-32 setting of the multi-turn chat demo shipped with Fast-dLLM and DPad (gen 128, steps
    # 128, entropy, alg_temp 0.1, greedy tokens).
    "dream-instruct": _p(gen_length=512, block_length=512, steps=512, confidence="entropy", schedule="dream",
                         temperature=0.2, top_p=0.95, alg_temp=0.0),
    "dream-instruct-chat": _p(gen_length=128, block_length=32, steps=128, confidence="entropy",
                              schedule="dream", alg_temp=0.1),
    "fast-dllm-prefix": _p(threshold=0.9, cache="prefix"),
    "fast-dllm-dual": _p(threshold=0.9, cache="dual"),
}


def preset(name: str, **overrides: Any) -> DecodeConfig:
    """A named preset (see ``PRESETS``), optionally with fields overridden.

    A ``-parallel`` suffix adds Fast-dLLM's threshold 0.9, e.g. ``llada-1.5-gsm8k-long-parallel``.
    """
    base = name
    extra: dict[str, Any] = {}
    if name.endswith("-parallel") and name[: -len("-parallel")] in PRESETS:
        base = name[: -len("-parallel")]
        extra = {"threshold": 0.9}
    if base not in PRESETS:
        raise ConfigError(f"unknown preset {short_repr(name)}; known: {', '.join(sorted(PRESETS))} "
                          "(each also as NAME-parallel)")
    return DecodeConfig(**{**PRESETS[base], **extra, **overrides})
