"""One description per DecodeConfig field (``dpad.config.FIELDS``) and the surfaces derived from it:
the command-line flags, the server's request fields and schema, the lm-eval model arguments; and
every registered parallel rule (``dpad.rules.RULES``) reaching each of them."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest

from dpad.config import FIELDS, DecodeConfig
from dpad.errors import ConfigError
from dpad.flags import ArgumentParser, add_decode_args, decode_config_from_args
from dpad.rules import GUARD_FIELDS, RULES
from dpad.serve import protocol


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="t")
    add_decode_args(p)
    return p


def _bounds(knob):  # noqa: ANN001, ANN202 - (value, valid?) at and beyond each end of a numeric range
    step = 1 if knob.type is int else 1e-9
    out = []
    if knob.low is not None:
        out += [(knob.low, not knob.low_open), (knob.low - step, False)]
    if knob.high is not None:
        out += [(knob.high, not knob.high_open), (knob.high + step, False)]
    return [(knob.type(v), ok) for v, ok in out]


def test_fields_describe_every_decode_config_field() -> None:
    assert list(FIELDS) == [f.name for f in fields(DecodeConfig) if f.name != "extra"]
    for name, k in FIELDS.items():
        assert k.type in (bool, int, float, str) and k.help, name
        assert k.nullable == (k.default is None), name  # None is valid exactly where it is the default
        assert k.check(k.default) == k.default, name
    assert {n for n in (*RULES, *GUARD_FIELDS)} <= set(FIELDS)


@pytest.mark.parametrize("name", [n for n, k in FIELDS.items() if k.type in (int, float)])
def test_range_ends_agree_everywhere(name: str) -> None:
    """DecodeConfig, the CLI flag and the lm-eval coercion accept and refuse the same values at the
    ends of the range, and every refusal names the field."""
    knob = FIELDS[name]
    p = _parser()
    base = {"threshold": 0.9} if name in GUARD_FIELDS else {}
    if name == "dependency_threshold":
        base["dependency_distance"] = 1
    if name in ("block_length", "steps"):
        base["gen_length"] = 1  # every valid value of these is <= and divides a gen_length it sets
    for v, ok in _bounds(knob):
        kw = {**base, name: v}
        if name == "gen_length":
            kw["block_length"] = 1 if ok else 32
        if name in ("block_length", "steps") and ok:
            kw["gen_length"] = int(v)
            kw["block_length"] = int(v) if name == "block_length" else 1
        if name == "uniform_keep" and ok:
            kw.update(suffix="uniform", window=max(1, int(v)))
        if ok:
            assert getattr(DecodeConfig(**kw), name) == v
            assert knob.coerce(str(v)) == v
        else:
            with pytest.raises(ConfigError) as e:
                DecodeConfig(**kw)
            assert e.value.field == name and name in str(e.value)
            with pytest.raises(ConfigError):
                knob.coerce(str(v))
        flag = "--" + name.replace("_", "-")
        if ok:
            assert getattr(p.parse_args([f"{flag}={v}"]), name) == v
        else:
            with pytest.raises(SystemExit):
                p.parse_args([f"{flag}={v}"])


def test_schema_and_flags_follow_the_fields() -> None:
    schema = protocol.request_schema("completion")["requestBody"]["content"]["application/json"]["schema"]
    props = schema["properties"]
    p = _parser()
    dests = {a.dest: a for a in p._actions}
    for name, k in FIELDS.items():
        assert name in dests, name
        if name in ("gen_length",):  # max_tokens sets it
            assert name not in props
            continue
        assert props[name] == k.json_schema(), name
        assert (name in protocol.NULLABLE) == (k.nullable and name in protocol.KNOBS), name
        if k.type is not bool:
            assert k.help in dests[name].help
    assert p.parse_args(["-k", "3", "-W", "64", "-a", "1.5"]).window == 64
    assert p.parse_args(["--cache", "none"]).cache == "none"
    for argv in (["--threshold", "none"], ["--steps", "2.5"], ["--cache", "lru"], ["--seed", "-1"]):
        with pytest.raises(SystemExit):
            p.parse_args(argv)


@pytest.mark.parametrize("rule", list(RULES))
def test_every_registered_rule_reaches_every_surface(rule: str) -> None:
    from dpad.bench import frontier
    from dpad.eval import methods

    spec = RULES[rule]
    value = spec.low + (0.5 if spec.high is None else (spec.high - spec.low) / 2)
    # the config: its field, in range, and the flag that names it
    cfg = DecodeConfig(**{rule: value})
    assert cfg.parallel and cfg.method_name() == "parallel"
    assert decode_config_from_args(_parser().parse_args([f"--{rule.replace('_', '-')}", str(value)])) == cfg
    assert FIELDS[rule].nullable and spec.help in FIELDS[rule].help
    # at most one rule: with any other, the later one in registration order is blamed
    for other in RULES:
        if other != rule:
            o = RULES[other]
            with pytest.raises(ConfigError, match="exclusive") as e:
                DecodeConfig(**{rule: value, other: o.low + (0.5 if o.high is None else (o.high - o.low) / 2)})
            assert e.value.field == max(rule, other, key=list(RULES).index)
    # guarded, and refused with the 'origin' confidence
    assert DecodeConfig(**{rule: value}, dependency_distance=1).parallel
    with pytest.raises(ConfigError, match=rule):
        DecodeConfig(**{rule: value}, confidence="origin")
    # method names: the suffix round-trips
    name = f"parallel+prefix-{spec.short}{value:g}"
    assert methods.canonical_method(name) == name
    mcfg = methods.method_config(name, {"gen_length": 64})
    assert getattr(mcfg, rule) == value and methods.rule_suffix(mcfg) == f"-{spec.short}{value:g}"
    assert rule in methods.RULE_FIELDS
    # the frontier sweeps it by its short name
    assert frontier.RULES[spec.short] == rule
    assert frontier.parse_sweep([f"{spec.short}={value:g}"]) == {spec.short: [value]}
    # the server takes it as an extra field, null included; lm-eval as a model argument, none included
    assert protocol.KNOBS[rule] == (int, float) and rule in protocol.NULLABLE
    from dpad.eval.lm_eval_model import decode_kwargs_from_model_args

    assert decode_kwargs_from_model_args({rule: str(value)}) == {rule: value}
    assert decode_kwargs_from_model_args({rule: "none"}) == {rule: None}


def test_request_errors_name_the_field_the_config_blames() -> None:
    """protocol.parse takes the param from ConfigError.field (cross-field errors included)."""
    defaults = DecodeConfig(gen_length=32)
    cases = [({"dependency_threshold": 0.5}, "dependency_threshold"), ({"threshold": 0.9, "factor": 1.0}, "factor"),
             ({"suffix": "uniform", "window": 8}, "uniform_keep"), ({"cfg_scale": 1.0, "cache": "prefix"}, "cfg_scale"),
             ({"steps": 64}, "steps"), ({"max_tokens": 2**21}, "max_tokens")]
    for extra, param in cases:
        body = {"model": "m", "prompt": "hi", "max_tokens": 16, **extra}
        with pytest.raises(protocol.ApiError) as e:
            protocol.parse(body, "completion", model_id="m", defaults=defaults)
        assert e.value.param == param, (extra, e.value.message)
