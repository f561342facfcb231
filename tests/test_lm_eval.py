"""The lm-evaluation-harness model ``dpad``: offline, a local YAML task on 3 arith problems."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

pytest.importorskip("lm_eval")

from dpad.errors import ConfigError  # noqa: E402
from dpad.eval import lm_eval_model  # noqa: E402
from dpad.eval.lm_eval_model import DpadLM, decode_kwargs_from_model_args  # noqa: E402

TASK_YAML = """\
task: dpad_arith_offline
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["Question:"]
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: take_first
metadata:
  version: 1.0
"""


@pytest.fixture()
def task_dir(tmp_path: Path) -> Path:
    from dpad.synthetic import arith

    data = tmp_path / "arith.jsonl"
    with open(data, "w") as fh:
        for p in arith.generate("test", 3, seed=0):
            fh.write(json.dumps({"question": p.question, "answer": p.solution}) + "\n")
    (tmp_path / "dpad_arith_offline.yaml").write_text(TASK_YAML.format(data=data))
    return tmp_path


def test_registered_in_lm_eval() -> None:
    from lm_eval.api.registry import get_model, model_registry

    assert get_model("dpad") is DpadLM
    assert "hf" in model_registry  # lm-eval's own models are still there
    lm_eval_model.register()  # idempotent


def _valid_text(knob) -> str:  # noqa: ANN001 - a Knob: a valid value of the field, as model-args text
    if knob.type is bool:
        return "true"
    if knob.choices:
        return knob.choices[-1]
    lo = 0 if knob.low is None else knob.low
    v = lo + 1 if knob.high is None else (lo + knob.high) / 2
    return str(int(v)) if knob.type is int else repr(float(v))


def test_model_args_cover_every_decode_knob() -> None:
    from dataclasses import fields

    from dpad.config import FIELDS, DecodeConfig

    assert set(FIELDS) == {f.name for f in fields(DecodeConfig)} - {"extra"}
    args = {name: _valid_text(k) for name, k in FIELDS.items()}
    assert set(decode_kwargs_from_model_args({**args, "extra": 1})) == set(args)
    # lm-eval's own parsing: "none" -> None, numbers -> int/float, true/false -> bool
    d = decode_kwargs_from_model_args({"cache": None, "threshold": None, "k": 3, "a": 1.6, "W": 64,
                                       "early_termination": "true", "gen_length": 128.0})
    assert d == {"cache": "none", "threshold": None, "sigma": 3.0, "scale": 1.6, "window": 64,
                 "early_termination": True, "gen_length": 128}
    # none unsets every field that may be unset (entropy_bound and the guard's included)
    nullable = [name for name, k in FIELDS.items() if k.nullable]
    assert {"steps", "threshold", "entropy_bound", "dependency_distance", "dependency_threshold"} <= set(nullable)
    assert decode_kwargs_from_model_args(dict.fromkeys(nullable, "none")) == dict.fromkeys(nullable)
    assert decode_kwargs_from_model_args(dict.fromkeys(nullable)) == dict.fromkeys(nullable)
    for bad in ({"gen_length": 1.5}, {"gen_length": "none"}, {"threshold": 2}, {"cache": "lru"},
                {"early_termination": "maybe"}, {"seed": -1}):
        with pytest.raises(ConfigError, match=f"model arg {next(iter(bad))}") as e:
            decode_kwargs_from_model_args(bad)
        assert e.value.field == next(iter(bad))


def test_every_field_as_a_model_arg_on_a_tiny_task(task_dir: Path) -> None:
    """lm-eval's own --model_args string with every DecodeConfig field, ``none`` for each field that
    may be unset: the model decodes with exactly that config."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from dpad.config import FIELDS, DecodeConfig

    given = {"gen_length": "32", "block_length": "16", "confidence": "low_confidence", "schedule": "auto",
             "temperature": "0", "alg_temp": "0", "cfg_scale": "0", "eps": "0.001", "suffix": "full",
             "sigma": "4", "scale": "2", "cache": "prefix", "early_termination": "true",
             "logits_eos_inf": "false", "confidence_eos_eot_inf": "false", "seed": "7", "rng": "exact",
             "compat": "none"}
    nones = [name for name, k in FIELDS.items() if k.nullable]
    assert set(given) | set(nones) == set(FIELDS) and not set(given) & set(nones)
    model_args = ",".join([f"{k}={v}" for k, v in given.items()] + [f"{k}=none" for k in nones])
    # the embedded model's default method turns its parallel rule (threshold 0.99) on; none turns it off
    res = lm_eval.simple_evaluate(
        model="dpad", model_args=f"method=parallel+prefix,device=cpu,{model_args}", tasks=["dpad_arith_offline"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False), apply_chat_template=True,
        batch_size=1, limit=1, log_samples=True)
    samples = res["samples"]["dpad_arith_offline"]
    assert len(samples) == 1 and isinstance(samples[0]["resps"][0][0], str)

    lm = DpadLM(method="parallel+prefix", device="cpu", **{**given, **dict.fromkeys(nones, "none")})
    want = DecodeConfig(gen_length=32, block_length=16, cache="prefix", early_termination=True, seed=7)
    assert lm.config == want and lm.method == "et+prefix"


def test_simple_evaluate_offline_with_chat_template(task_dir: Path) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model="dpad", model_args="method=parallel+prefix+dpad,gen_length=96,device=cpu,seed=7",
        tasks=["dpad_arith_offline"], task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        apply_chat_template=True, batch_size=3, log_samples=True)
    em = res["results"]["dpad_arith_offline"]["exact_match,strict-match"]
    assert em == pytest.approx(1.0)  # the embedded model solves these three
    samples = res["samples"]["dpad_arith_offline"]
    assert len(samples) == 3 and all("####" in s["resps"][0][0] for s in samples)
    assert "parallel+prefix+dpad" in str(res["config"]["model_args"])


def test_cli_launcher_and_no_loglikelihood(task_dir: Path, monkeypatch) -> None:  # noqa: ANN001
    from dpad.eval.lm_eval_main import main

    out = task_dir / "out"
    monkeypatch.chdir(task_dir)
    rc = main(["--model", "dpad", "--model_args", "method=parallel+dual+dpad,gen_length=96,chat=true,k=3,W=64",
               "--tasks", "dpad_arith_offline", "--include_path", str(task_dir), "--output_path", str(out),
               "--limit", "2"])
    assert rc == 0
    result = json.loads(next(out.rglob("results_*.json")).read_text())
    assert result["results"]["dpad_arith_offline"]["exact_match,strict-match"] == pytest.approx(1.0)

    lm = DpadLM(method="vanilla", gen_length=32)
    with pytest.raises(NotImplementedError, match="generate_until only"):
        lm.loglikelihood([])
    with pytest.raises(ConfigError, match="unknown dpad model arg"):
        DpadLM(gen_lenght=32)


def test_simple_evaluate_by_hub_id(task_dir: Path, hub: Path) -> None:  # noqa: ARG001 - hub: the cache
    import lm_eval
    from lm_eval.tasks import TaskManager

    res = lm_eval.simple_evaluate(
        model="dpad", model_args="pretrained=dpad-test/embedded,method=parallel+prefix,gen_length=64,device=cpu",
        tasks=["dpad_arith_offline"], task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        apply_chat_template=True, batch_size=3, log_samples=True, limit=2)
    samples = res["samples"]["dpad_arith_offline"]
    assert len(samples) == 2 and all(s["resps"][0][0] for s in samples)
    assert "dpad-test/embedded" in str(res["config"]["model_args"])
