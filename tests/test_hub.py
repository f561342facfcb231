"""Hub ids (``ORG/NAME``, optional revision) resolved through a Hugging Face cache built offline in a
temporary HF_HOME (the ``hub`` fixture of conftest.py), on every entry point: the API, ``dpad
generate``, ``dpad eval``, ``dpad serve`` and the lm-eval model; plus the one-line errors."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import GOLDEN_DIR, HUB_MODELS

import dpad
from dpad.cli import main as dpad_main
from dpad.errors import CheckpointError
from dpad.eval.methods import EMBEDDED_PARALLEL
from dpad.models import LoadedModel, download_command
from dpad.models import load as load_checkpoint
from dpad.synthetic import arith

Q = arith.generate("test", 1, 0)[0].question
FAST = ["--gen-length", "32", "--block-length", "32", "--threshold", "0.9", "--cache", "prefix", "--threads", "1"]


def snapshot(cache: Path, repo_id: str, commit: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit


def same_weights(a: LoadedModel, b: LoadedModel) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------------ API
@pytest.mark.parametrize("name", ["llada-tiny", "dream-tiny"])
def test_load_golden_model_by_id(hub: Path, name: str, tiny_models: dict) -> None:
    repo_id = f"dpad-test/{name}"
    lm = load_checkpoint(repo_id, dtype="float64")
    assert lm.path == snapshot(hub, repo_id, HUB_MODELS[repo_id][1])
    assert lm.tokenizer is None and lm.args == tiny_models[name].args
    assert same_weights(lm, tiny_models[name])


def test_api_load_embedded_by_id_decodes_the_same(hub: Path) -> None:
    by_id = dpad.load("dpad-test/embedded", device="cpu", dtype="float32")
    by_path = dpad.load(device="cpu", dtype="float32")
    assert by_id.path == snapshot(hub, "dpad-test/embedded", "e" * 40) and by_id.tokenizer is not None
    assert same_weights(by_id, by_path)
    cfg = dpad.DecodeConfig(gen_length=32, block_length=32, threshold=0.9, cache="prefix")
    assert dpad.generate(by_id, Q, cfg).response_ids == dpad.generate(by_path, Q, cfg).response_ids


def test_revision_picks_the_snapshot(hub: Path) -> None:
    assert load_checkpoint("dpad-test/tiny").args.arch.lower() == "llada"  # main
    for rev in ("dream", "d" * 40):  # a tag and a commit hash
        lm = load_checkpoint("dpad-test/tiny", revision=rev)
        assert lm.args.arch.lower() == "dream" and lm.path == snapshot(hub, "dpad-test/tiny", "d" * 40)
    with pytest.raises(CheckpointError, match="--revision v9") as e:
        load_checkpoint("dpad-test/tiny", revision="v9")
    assert "\n" not in str(e.value)


def test_missing_model_is_one_line_naming_the_download(hub: Path) -> None:
    with pytest.raises(CheckpointError) as e:
        dpad.load("dpad-test/absent")
    msg = str(e.value)
    assert "\n" not in msg and download_command("dpad-test/absent") in msg and str(hub) in msg
    assert "HF_HUB_OFFLINE" in msg


@pytest.mark.parametrize("bad", ["a/b/c", "", "  ", "org/", "/org", "no-slash", "a//b", "org/na me"])
def test_bad_ids_are_clear(hub: Path, bad: str) -> None:
    with pytest.raises(CheckpointError) as e:
        dpad.load(bad)
    msg = str(e.value)
    assert "\n" not in msg and ("ORG/NAME" in msg or "does not exist" in msg)


def test_revision_needs_an_id(hub: Path) -> None:
    with pytest.raises(dpad.DpadError, match="hub id"):
        dpad.load(revision="main")
    with pytest.raises(CheckpointError, match="local path"):
        load_checkpoint(GOLDEN_DIR / "llada-tiny", revision="main")


def test_local_directory_beats_an_id(hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = tmp_path / "dpad-test" / "llada-tiny"  # same name as the cached id, other contents
    shutil.copytree(GOLDEN_DIR / "dream-tiny", local)
    monkeypatch.chdir(tmp_path)
    lm = load_checkpoint("dpad-test/llada-tiny")
    assert lm.args.arch.lower() == "dream" and lm.path == Path("dpad-test/llada-tiny")
    monkeypatch.chdir(tmp_path / "dpad-test")  # elsewhere the id resolves to the cache again
    assert load_checkpoint("dpad-test/llada-tiny").args.arch.lower() == "llada"


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_generate_by_id(hub: Path, capsys: pytest.CaptureFixture) -> None:
    assert dpad_main(["generate", "--model", "dpad-test/embedded", "--prompt", Q, "--json", *FAST]) == 0
    by_id = json.loads(capsys.readouterr().out)
    assert dpad_main(["generate", "--prompt", Q, "--json", *FAST]) == 0
    assert by_id["response_ids"] == json.loads(capsys.readouterr().out)["response_ids"]
    ids = "5,6,7,8,9,10"  # the golden model has no tokenizer
    tiny = ["--prompt-ids", ids, "--dtype", "float64", "--json", *FAST]
    assert dpad_main(["generate", "--model", "dpad-test/tiny", "--revision", "dream", *tiny]) == 0
    by_id = json.loads(capsys.readouterr().out)
    assert dpad_main(["generate", "--model", str(GOLDEN_DIR / "dream-tiny"), *tiny]) == 0
    assert by_id["generated_ids"] == json.loads(capsys.readouterr().out)["generated_ids"]


def test_cli_missing_model_exits_2_with_one_line(hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv in (["generate", "--model", "dpad-test/absent", "--prompt", "hi"],
                 ["eval", "--task", "arith", "--model", "dpad-test/absent", "--limit", "1", "--no-progress"],
                 ["bench", "--model", "dpad-test/absent", "--n", "1", "--gen-lengths", "32", "--out", str(tmp_path / "b")],
                 ["serve", "--model", "dpad-test/absent"],
                 ["analyze", "attention", "--model", "dpad-test/absent", "--out", str(tmp_path / "a")],
                 ["generate", "--model", "a/b/c", "--prompt", "hi"]):
        assert dpad_main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dpad: error: "), err
    assert dpad_main(["generate", "--model", "dpad-test/absent", "--revision", "r1", "--prompt", "hi"]) == 2
    assert download_command("dpad-test/absent", "r1") in capsys.readouterr().err


def test_cli_eval_by_id(hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = dpad_main(["eval", "--task", "arith", "--model", "dpad-test/embedded", "--method", "parallel+prefix",
                    "--gen-length", "32", "--block-length", "32", "--limit", "2", "--out", str(tmp_path),
                    "--no-progress", "--threads", "1"])
    assert rc == 0
    summary = json.loads(next(tmp_path.glob("arith_*.json")).read_text())
    assert summary["model"] == "dpad-test/embedded" and summary["model_revision"] is None
    assert summary["summary"]["n"] == 2 and summary["summary"]["response_tokens"] > 0
    assert "| arith | parallel+prefix | 32 | 2 |" in capsys.readouterr().out
    # the embedded model named by id is recognised as the embedded model: its own parallel rule
    assert summary["config"]["threshold"] == EMBEDDED_PARALLEL["threshold"]


def test_embedded_copy_by_id_gets_the_embedded_family(hub: Path) -> None:
    from dpad.eval.methods import model_family
    from dpad.models.loading import read_config

    assert model_family("dpad-test/embedded", read_config("dpad-test/embedded")) == "embedded"
    assert model_family("dpad-test/tiny", read_config("dpad-test/tiny")) == "llada-instruct"


def test_cli_serve_by_id(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from dpad.serve import ServerThread

    apps: list = []
    import dpad.serve.app

    monkeypatch.setattr(dpad.serve.app, "run_server", lambda app, sock, **kw: apps.append(app))
    texts = {}
    for model in ("dpad-test/embedded", None):  # by id, then the embedded model by path
        assert dpad_main(["serve", *(["--model", model] if model else []), "--port", "0", "--max-batch-size", "2",
                          *FAST]) == 0
        served = model or "dpad-embedded"
        with ServerThread(apps[-1]) as url:
            assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == [served]
            r = httpx.post(url + "/v1/completions", json={"model": served, "prompt": Q, "max_tokens": 32},
                           timeout=60)
        assert r.status_code == 200 and r.json()["model"] == served
        texts[served] = r.json()["choices"][0]["text"]
    assert texts["dpad-test/embedded"] == texts["dpad-embedded"] and "105" in texts["dpad-embedded"]


# ------------------------------------------------------------------------------------------------ lm-eval
@pytest.fixture()
def lm_eval_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    """:mod:`dpad.eval.lm_eval_model` on the real lm-eval, or, where lm-eval is not installed, on a
    minimal stand-in for the two names it imports (``LM`` and ``model_registry``), dropped after."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        class LM:
            def __init__(self) -> None:
                pass

        class Registry(dict):
            def register(self, name: str):  # noqa: ANN202
                return lambda cls: self.__setitem__(name, cls) or cls

        mods = {n: types.ModuleType(n) for n in ("lm_eval", "lm_eval.api", "lm_eval.api.model",
                                                  "lm_eval.api.registry", "lm_eval.models")}
        mods["lm_eval.api.model"].LM = LM
        mods["lm_eval.api.registry"].model_registry = Registry()
        for name, mod in mods.items():
            monkeypatch.setitem(sys.modules, name, mod)
        monkeypatch.setitem(sys.modules, "dpad.eval.lm_eval_model", None)  # restored (removed) after the test
        del sys.modules["dpad.eval.lm_eval_model"]
    yield importlib.import_module("dpad.eval.lm_eval_model")


def test_lm_eval_model_args_resolve_ids(hub: Path, lm_eval_model: types.ModuleType) -> None:
    model = lm_eval_model.DpadLM(pretrained="dpad-test/embedded", device="cpu", gen_length=32)
    assert model.pretrained == "dpad-test/embedded"
    assert model.lm.path == snapshot(hub, "dpad-test/embedded", "e" * 40)
    tiny = lm_eval_model.DpadLM(pretrained="dpad-test/tiny", revision="dream", device="cpu", dtype="float64")
    assert tiny.lm.args.arch.lower() == "dream" and tiny.config.gen_length > 0
    with pytest.raises(CheckpointError, match="hf download|huggingface-cli download"):
        lm_eval_model.DpadLM(pretrained="dpad-test/absent", device="cpu")
