"""DecodeConfig validation, presets, method labels and the sequence-length check."""

from __future__ import annotations

import copy

import pytest
import torch

from dpad.config import PRESETS, DecodeConfig, preset
from dpad.engine import decode
from dpad.errors import ConfigError, DpadError

# (field named in the message, overrides)
INVALID = [
    ("gen_length", dict(gen_length=100, block_length=32)),
    ("gen_length", dict(gen_length=0)),
    ("gen_length", dict(gen_length=64.0)),
    ("block_length", dict(block_length=0)),
    ("steps", dict(gen_length=64, block_length=16, steps=30)),
    ("steps", dict(steps=0)),
    ("window", dict(suffix="window", window=0)),
    ("window", dict(suffix="gaussian", window=-3)),
    ("window", dict(suffix="gaussian", window=None)),
    ("window", dict(suffix="window", window=None)),
    ("window", dict(window=2.5)),
    ("sigma", dict(suffix="gaussian", window=64, sigma=0.0)),
    ("sigma", dict(sigma=-1.0)),
    ("scale", dict(suffix="gaussian", window=64, scale=0.0)),
    ("scale", dict(scale=-2.0)),
    ("threshold", dict(threshold=0.0)),
    ("threshold", dict(threshold=1.5)),
    ("threshold", dict(threshold=-1.0)),
    ("factor", dict(factor=0.0)),
    ("factor", dict(factor=-1.0)),
    ("factor", dict(threshold=0.9, factor=1.0)),
    ("suffix", dict(suffix="dropout")),
    ("cache", dict(cache="kv")),
    ("confidence", dict(confidence="margin")),
    ("confidence", dict(confidence="origin", threshold=0.9)),
    ("schedule", dict(schedule="cosine")),
    ("temperature", dict(temperature=-0.1)),
    ("top_p", dict(top_p=0.0)),
    ("top_p", dict(top_p=1.5)),
    ("top_k", dict(top_k=0)),
    ("top_k", dict(top_k=2.5)),
    ("alg_temp", dict(alg_temp=-1.0)),
    ("cfg_scale", dict(cfg_scale=-1.0)),
    ("cfg_scale", dict(cfg_scale=1.0, cache="prefix")),
    ("cfg_scale", dict(cfg_scale=1.0, cache="dual")),
    ("eps", dict(eps=0.0)),
    ("eps", dict(eps=1.0)),
    ("uniform_keep", dict(suffix="uniform", window=32)),
    ("uniform_keep", dict(suffix="uniform", window=32, uniform_keep=-1)),
    ("uniform_keep", dict(suffix="uniform", window=32, uniform_keep=33)),
    ("uniform_keep", dict(suffix="uniform", window=32, uniform_keep=4.0)),
    ("seed", dict(seed="1234")),
    ("compat", dict(compat="fastdllm")),
    # hostile sizes and values: rejected before any work (nothing clamped)
    ("seed", dict(seed=2**64)),
    ("seed", dict(seed=-1)),
    ("seed", dict(seed=True)),
    ("steps", dict(steps=1_000_000_000)),
    ("steps", dict(gen_length=64, block_length=16, steps=128)),
    ("gen_length", dict(gen_length=2**40, block_length=2**20)),
    ("gen_length", dict(gen_length=True, block_length=1)),
    ("window", dict(suffix="gaussian", window=10**9)),
    ("top_k", dict(top_k=10**30)),
    ("temperature", dict(temperature=float("inf"))),
    ("temperature", dict(temperature=1e308)),
    ("temperature", dict(temperature=float("nan"))),
    ("top_p", dict(top_p=float("nan"))),
    ("top_p", dict(top_p=2.0)),
    ("threshold", dict(threshold=float("nan"))),
    ("factor", dict(factor=float("inf"))),
    ("cfg_scale", dict(cfg_scale=float("inf"))),
    ("alg_temp", dict(alg_temp=float("nan"))),
    ("sigma", dict(suffix="gaussian", window=64, sigma=float("inf"))),
    ("temperature", dict(temperature=10**400)),
    ("early_termination", dict(early_termination="yes")),
]


@pytest.mark.parametrize(("name", "kw"), INVALID, ids=[f"{n}-{i}" for i, (n, _) in enumerate(INVALID)])
def test_invalid_field(name: str, kw: dict) -> None:
    with pytest.raises(ConfigError) as exc:
        DecodeConfig(**kw)
    assert name in str(exc.value)
    assert exc.value.field == name  # the error carries its field (the server's error param)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, DpadError)


def test_both_threshold_and_factor_names_both() -> None:
    with pytest.raises(ConfigError, match="threshold") as exc:
        DecodeConfig(threshold=0.9, factor=1.0)
    assert "factor" in str(exc.value)


def test_gen_length_message_suggests_a_fix() -> None:
    with pytest.raises(ConfigError, match="block_length=32") as exc:
        DecodeConfig(gen_length=100, block_length=32)
    assert "128" in str(exc.value)


VALID = [
    dict(),
    dict(threshold=1.0),
    dict(threshold=1e-6),
    dict(factor=1.0),
    dict(top_p=1.0, top_k=1, temperature=0.7),
    dict(suffix="window", window=1),
    dict(suffix="gaussian", window=256, sigma=4.0, scale=2.0),
    dict(suffix="uniform", window=32, uniform_keep=0),
    dict(suffix="uniform", window=32, uniform_keep=32),
    dict(cfg_scale=1.0),
    dict(gen_length=64, block_length=16, steps=4),
    dict(cache="dual", compat="fast-dllm", threshold=0.9),
    dict(confidence="origin", schedule="dream"),
]


@pytest.mark.parametrize("kw", VALID)
def test_valid_configs(kw: dict) -> None:
    cfg = DecodeConfig(**kw)
    assert DecodeConfig.from_dict(cfg.to_dict()) == cfg


def test_replace_validates() -> None:
    cfg = DecodeConfig()
    assert cfg.replace(threshold=0.5).threshold == 0.5
    with pytest.raises(ConfigError, match="threshold"):
        cfg.replace(threshold=2.0)


def test_from_dict_rejects_unknown() -> None:
    with pytest.raises(ConfigError, match="windw"):
        DecodeConfig.from_dict({"windw": 3})


def test_derived_counts() -> None:
    cfg = DecodeConfig(gen_length=256, block_length=32, steps=128)
    assert (cfg.num_blocks, cfg.steps_per_block) == (8, 16)
    assert DecodeConfig(gen_length=256, block_length=32).steps_per_block == 32


# ---------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name: str) -> None:
    cfg = preset(name)
    assert isinstance(cfg, DecodeConfig)
    assert cfg.threshold is None or name.startswith("fast-dllm")
    par = preset(f"{name}-parallel")
    assert par.threshold == 0.9
    assert par.replace(threshold=cfg.threshold) == cfg


def test_preset_values() -> None:
    cfg = preset("llada-1.5-gsm8k-long-parallel")
    assert cfg.threshold == 0.9
    assert (cfg.gen_length, cfg.suffix, cfg.window, cfg.sigma, cfg.scale) == (1024, "gaussian", 256, 3.0, 1.6)
    assert cfg.early_termination
    assert preset("llada-instruct-gsm8k").method_name() == "dpad"
    assert preset("vanilla") == DecodeConfig()
    assert preset("llada-instruct-gsm8k", gen_length=512).gen_length == 512
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("llada-9-gsm8k")
    with pytest.raises(ConfigError, match="threshold"):
        preset("vanilla", threshold=3.0)


@pytest.mark.parametrize(("kw", "label"), [
    (dict(), "vanilla"),
    (dict(early_termination=True), "et"),
    (dict(suffix="gaussian", window=256), "dpad"),
    (dict(suffix="gaussian", window=256, early_termination=True), "dpad"),
    (dict(threshold=0.9), "parallel"),
    (dict(factor=1.0), "parallel"),
    (dict(cache="prefix"), "prefix"),
    (dict(threshold=0.9, cache="prefix"), "parallel+prefix"),
    (dict(threshold=0.9, cache="dual"), "parallel+dual"),
    (dict(threshold=0.9, cache="prefix", suffix="gaussian", window=256), "parallel+prefix+dpad"),
    (dict(threshold=0.9, cache="dual", suffix="gaussian", window=256), "parallel+dual+dpad"),
    (dict(early_termination=True, threshold=0.9, cache="dual"), "et+parallel+dual"),
    (dict(suffix="window", window=64), "window"),
    (dict(suffix="uniform", window=64, uniform_keep=8, cache="prefix"), "prefix+uniform"),
])
def test_method_name(kw: dict, label: str) -> None:
    assert DecodeConfig(**kw).method_name() == label


def test_preset_method_names() -> None:
    assert preset("fast-dllm-prefix").method_name() == "parallel+prefix"
    assert preset("fast-dllm-dual").method_name() == "parallel+dual"
    assert preset("dream-base-gsm8k-parallel", cache="prefix").method_name() == "parallel+prefix+dpad"


# ---------------------------------------------------------------------------- sequence length
@pytest.fixture
def short_model(llada_tiny):  # noqa: ANN001, ANN201
    """A copy of the tiny LLaDA whose max_seq_len is 56, with a hook counting forwards."""
    model = copy.deepcopy(llada_tiny.model)
    model.args.max_seq_len = 56
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return model, calls


def test_too_long_raises_before_any_forward(short_model, cases: list[dict]) -> None:  # noqa: ANN001
    model, calls = short_model
    prompt = cases[0]["prompt_ids"]
    assert len(prompt) == 24
    with pytest.raises(ConfigError, match="gen_length") as exc:
        decode(model, prompt, DecodeConfig(gen_length=64, block_length=16), mask_id=250, eos_id=251)
    msg = str(exc.value)
    assert "56" in msg and "88" in msg and "32" in msg  # the limit, the total, the largest gen_length that fits
    assert calls == []
    # exactly at the limit it runs
    out = decode(model, prompt, DecodeConfig(gen_length=32, block_length=16, threshold=0.9),
                 mask_id=250, eos_id=251)
    assert len(out.generated) == 32 and len(calls) == out.nfe > 0


def test_prompt_with_mask_token_rejected(llada_tiny) -> None:  # noqa: ANN001
    calls = []
    handle = llada_tiny.model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ConfigError, match="mask"):
            decode(llada_tiny.model, torch.tensor([5, 250, 7]), DecodeConfig(gen_length=32, block_length=16),
                   mask_id=250, eos_id=251)
    finally:
        handle.remove()
    assert calls == []


# ---------------------------------------------------------------------------- type checks
NUMERIC_FIELDS = ["threshold", "factor", "temperature", "top_p", "sigma", "scale", "eps", "alg_temp", "cfg_scale"]


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
def test_non_numeric_string_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        DecodeConfig(**{name: "high"})


@pytest.mark.parametrize("name", NUMERIC_FIELDS)
def test_numeric_string_is_rejected(name: str) -> None:
    """One behaviour, the library's and the server's: a number given as text is refused with a
    ConfigError naming the field (a typed API does not guess), even when the text reads as a valid
    value. The server answers 400 for it (tests/test_serve_hostile.py); the surfaces that take text
    (CLI flags, lm-eval model arguments) parse it themselves before building the config."""
    refused = rf"^{name}='0\.9' is invalid: text is not a number"
    with pytest.raises(ConfigError, match=refused):
        DecodeConfig(gen_length=16, block_length=16, **{name: "0.9"})
    with pytest.raises(ConfigError, match=refused):
        preset("vanilla", **{name: "0.9"})
    with pytest.raises(ConfigError, match=refused):
        DecodeConfig(gen_length=16, block_length=16).replace(**{name: "0.9"})


def test_an_integer_for_a_float_field_becomes_a_float() -> None:
    cfg = DecodeConfig(gen_length=16, block_length=16, threshold=1, temperature=0, cfg_scale=2)
    assert [type(v) for v in (cfg.threshold, cfg.temperature, cfg.cfg_scale)] == [float] * 3
    assert (cfg.threshold, cfg.temperature, cfg.cfg_scale) == (1.0, 0.0, 2.0)


def test_text_surfaces_parse_numbers_themselves(llada_tiny) -> None:  # noqa: ANN001
    """Command-line flags and lm-eval's model arguments arrive as text and still configure a decode."""
    from dpad.cli import build_parser
    from dpad.flags import decode_config_from_args

    ns = build_parser().parse_args(["generate", "--prompt-ids", "1,2", "--gen-length", "16", "--block-length",
                                    "16", "--threshold", "0.9", "--temperature", "0"])
    cfg = decode_config_from_args(ns)
    assert (cfg.threshold, cfg.temperature) == (0.9, 0.0)
    out = decode(llada_tiny.model, [1, 2, 3], cfg, mask_id=250, eos_id=251)
    assert 250 not in out.ids
    pytest.importorskip("lm_eval")  # in the test extra: CI fails rather than skips without it
    from dpad.eval.lm_eval_model import decode_kwargs_from_model_args

    kw = decode_kwargs_from_model_args({"gen_length": "16", "block_length": "16", "factor": "0.9", "threshold": "none"})
    cfg = DecodeConfig(**kw)
    assert (cfg.factor, cfg.threshold, cfg.gen_length) == (0.9, None, 16)
