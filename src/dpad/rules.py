"""The registry of parallel unmasking rules: one :class:`RuleSpec` per rule, registered once.

A parallel rule decides *how many* masked positions of the block to commit at a step from their
ranked confidences (Fast-dLLM's threshold and factor rules, the EB-sampler). Everything that names
a rule outside the engine is derived from this registry: the :class:`~dpad.config.DecodeConfig`
field that holds its knob and the check that at most one rule is set, the method-name suffix
(``parallel-threshold0.9``, ``-eb0.01``), the CLI flag help, the accuracy-speed frontier's sweep
names and the lm-eval model arguments. The batched implementation lives in
:mod:`dpad.engine.unmask` (``RANKED_RULES``), keyed by :attr:`RuleSpec.name`.

Adding a rule: a ``DecodeConfig`` field for its knob (``None`` = unset), one ``register(RuleSpec(...))``
here, and its ``accept`` function in :mod:`dpad.engine.unmask`.

This module imports nothing heavy (no torch), so the config and the command-line parsers can use it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuleSpec:
    """One parallel rule.

    ``name``: the :class:`~dpad.config.DecodeConfig` field holding the rule's knob (``None`` = the
    rule is off); ``short``: its method-name suffix and frontier sweep name (``eb`` ->
    ``parallel-eb0.01``, ``--sweep eb=0.1``); ``low``/``high``: the knob's valid range with
    ``low_open``/``high_open`` saying whether the ends are excluded (``high=None``: no upper bound);
    ``help``: one line for flags and docs."""

    name: str
    short: str
    low: float
    high: float | None
    low_open: bool
    high_open: bool
    help: str

    def range_text(self) -> str:
        lo = "(" if self.low_open else "["
        if self.high is None:
            return f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        hi = ")" if self.high_open else "]"
        return f"in {lo}{self.low:g}, {self.high:g}{hi}"

    def accepts(self, value: float) -> bool:
        v = float(value)
        if v < self.low or (self.low_open and v == self.low):
            return False
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            return False
        return True


RULES: dict[str, RuleSpec] = {}
"""Registered parallel rules by name (= DecodeConfig field), in registration order."""


def register(spec: RuleSpec) -> RuleSpec:
    if spec.name in RULES or any(s.short == spec.short for s in RULES.values()):
        raise ValueError(f"rule {spec.name!r} ({spec.short!r}) is already registered")
    RULES[spec.name] = spec
    return spec


def by_short(short: str) -> RuleSpec:
    for s in RULES.values():
        if s.short == short:
            return s
    raise KeyError(short)


register(RuleSpec("threshold", "threshold", 0.0, 1.0, True, False,
                  "Fast-dLLM parallel decoding: commit every position with confidence >= this (top-1 always)"))
register(RuleSpec("factor", "factor", 0.0, None, True, False,
                  "Fast-dLLM factor rule: commit the n-th most confident while c_n >= 1 - f / (n + 1) "
                  "(all of them when only the last fails, as DPad's reference)"))
register(RuleSpec("entropy_bound", "eb", 0.0, None, False, False,
                  "EB-sampler gamma (nats): commit the confidence-ranked prefix while its summed entropy "
                  "minus its largest entropy stays <= gamma"))

GUARD_FIELDS: tuple[str, ...] = ("dependency_distance", "dependency_threshold")
"""The dependency guard's fields: it wraps any parallel rule (see :class:`~dpad.engine.unmask.DependencyGuard`)."""


def rule_fields() -> tuple[str, ...]:
    """Every DecodeConfig field that belongs to the parallel rule: each rule's knob, then the guard's."""
    return (*RULES, *GUARD_FIELDS)
