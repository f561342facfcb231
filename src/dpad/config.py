"""DecodeConfig: every decoding knob in one validated dataclass, plus named presets.

Every field is checked in ``validate()`` (called by ``__post_init__``); an invalid value raises
:class:`~dpad.errors.ConfigError` whose message names the field and its valid range.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError, short_repr

SUFFIX_POLICIES = ("full", "window", "gaussian", "uniform")
CACHE_POLICIES = ("none", "prefix", "dual")
CONFIDENCES = ("low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin")
SCHEDULES = ("auto", "llada", "dream")
COMPAT = ("none", "fast-dllm", "dpad-dream")

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
    compat: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"{name}={short_repr(getattr(self, name))} is invalid: {why}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        # numbers given as text (e.g. from a query string) are converted; anything else is an error
        for name in ("threshold", "factor", "entropy_bound", "dependency_threshold", "temperature", "top_p",
                     "alg_temp", "cfg_scale", "eps", "sigma", "scale"):
            v = getattr(self, name)
            if v is None or isinstance(v, bool):
                if isinstance(v, bool):
                    bad(name, "must be a number")
                continue
            try:
                f = float(v)
            except (TypeError, ValueError, OverflowError):
                bad(name, "must be a number")
            if not math.isfinite(f):
                bad(name, "must be a finite number")
            object.__setattr__(self, name, f)
        for name in ("gen_length", "block_length", "window", "uniform_keep", "top_k"):
            v = getattr(self, name)
            if v is not None and is_int(v) and v > MAX_LENGTH:
                bad(name, f"must be <= {MAX_LENGTH}")

        if not is_int(self.gen_length) or self.gen_length < 1:
            bad("gen_length", "must be an integer >= 1")
        if not is_int(self.block_length) or self.block_length < 1:
            bad("block_length", "must be an integer >= 1")
        if self.gen_length % self.block_length:
            bad("gen_length", f"must be a multiple of block_length={self.block_length} "
                              f"(e.g. {((self.gen_length // self.block_length) + 1) * self.block_length})")
        nb = self.gen_length // self.block_length
        if self.steps is not None:
            if not is_int(self.steps) or self.steps < 1:
                bad("steps", "must be an integer >= 1 (or None for one token per step)")
            if self.steps > self.gen_length:
                bad("steps", f"must be <= gen_length={self.gen_length} (every step commits at least one token)")
            if self.steps % nb:
                bad("steps", f"must be a multiple of the number of blocks ({nb} = gen_length / block_length)")
        if self.confidence not in CONFIDENCES:
            bad("confidence", f"must be one of {', '.join(CONFIDENCES)}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {', '.join(SCHEDULES)}")
        if self.threshold is not None and not (0.0 < float(self.threshold) <= 1.0):
            bad("threshold", "must be in (0, 1]")
        if self.factor is not None and not float(self.factor) > 0:
            bad("factor", "must be > 0")
        if self.threshold is not None and self.factor is not None:
            bad("factor", "threshold and factor are exclusive: set only one")
        if self.entropy_bound is not None:
            if not self.entropy_bound >= 0:
                bad("entropy_bound", "(gamma, in nats) must be >= 0")
            if self.threshold is not None or self.factor is not None:
                bad("entropy_bound", "threshold, factor and entropy_bound are exclusive: set only one")
        if self.dependency_distance is not None:
            if not is_int(self.dependency_distance) or not 1 <= self.dependency_distance <= MAX_LENGTH:
                bad("dependency_distance", f"must be an integer in [1, {MAX_LENGTH}]")
            if not self.parallel:
                bad("dependency_distance", "guards a parallel rule: also set threshold, factor or entropy_bound")
        if self.dependency_threshold is not None:
            if not (0.0 < self.dependency_threshold <= 1.0):
                bad("dependency_threshold", "must be in (0, 1]")
            if self.dependency_distance is None:
                bad("dependency_threshold", "only applies with dependency_distance (D >= 1)")
        if self.confidence == "origin" and self.parallel:
            bad("confidence", "'origin' reveals positions at random and cannot be combined with "
                              "threshold/factor/entropy_bound")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            bad("temperature", f"must be in [0, {MAX_TEMPERATURE:g}] (0 = greedy)")
        if self.top_p is not None and not (0.0 < self.top_p <= 1.0):
            bad("top_p", "must be in (0, 1]")
        if self.top_k is not None and (not is_int(self.top_k) or self.top_k < 1):
            bad("top_k", "must be an integer >= 1 (None: no top-k filter)")
        if not self.alg_temp >= 0:
            bad("alg_temp", "must be >= 0")
        if not self.cfg_scale >= 0:
            bad("cfg_scale", "must be >= 0")
        if self.cfg_scale > 0 and self.cache != "none":
            bad("cfg_scale", "classifier-free guidance runs without a KV cache: set cache='none'")
        if not (0.0 < self.eps < 1.0):
            bad("eps", "must be in (0, 1)")
        if self.suffix not in SUFFIX_POLICIES:
            bad("suffix", f"must be one of {', '.join(SUFFIX_POLICIES)}")
        if self.suffix != "full":
            if self.window is None:
                bad("window", f"suffix={self.suffix!r} needs a window size W >= 1")
        if self.window is not None and (not is_int(self.window) or self.window < 1):
            bad("window", "must be an integer >= 1")
        if not self.sigma > 0:
            bad("sigma", "(k, the Gaussian's spread) must be > 0")
        if not self.scale > 0:
            bad("scale", "(a, the keep-probability scale) must be > 0")
        if self.uniform_keep is not None and (not is_int(self.uniform_keep) or self.uniform_keep < 0):
            bad("uniform_keep", "must be an integer >= 0")
        if self.suffix == "uniform":
            if self.uniform_keep is None:
                bad("uniform_keep", "suffix='uniform' needs uniform_keep, an integer >= 0")
            if self.uniform_keep > self.window:
                bad("uniform_keep", f"must be <= window={self.window}")
        if self.cache not in CACHE_POLICIES:
            bad("cache", f"must be one of {', '.join(CACHE_POLICIES)}")
        for name in ("early_termination", "logits_eos_inf", "confidence_eos_eot_inf"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be True or False")
        if not is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            bad("seed", f"must be an integer in 0..{MAX_SEED} (2**64 - 1)")
        if self.compat not in COMPAT:
            bad("compat", f"must be one of {', '.join(COMPAT)}")

    # ------------------------------------------------------------------ helpers
    @property
    def parallel(self) -> bool:
        """Whether a parallel rule (threshold, factor or entropy_bound) decides how many to commit."""
        return self.threshold is not None or self.factor is not None or self.entropy_bound is not None

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
