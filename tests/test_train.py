"""The training loop: runs, saves an official-layout checkpoint, and resumes deterministically."""

import json

import torch

from dpad.models import load
from dpad.train.trainer import TrainConfig, score_outputs, train

TINY = dict(dim=32, layers=2, heads=2, hidden=64, batch_tokens=2048, pool_size=400, eval_every_s=1e9,
            eval_n=4, eval_gen=32, final_test_n=0, long_max=200, warmup=2, threads=1, ckpt_every_s=1e9)


def _weights(path):
    return {k: v.clone() for k, v in load(path, tokenizer=False).model.state_dict().items()}


def test_interrupted_then_resumed_run_equals_straight_run(tmp_path):
    train(TrainConfig(out=str(tmp_path / "a"), max_steps=8, **TINY))
    paused = train(TrainConfig(out=str(tmp_path / "b"), max_steps=8, stop_after_steps=4, **TINY))
    assert paused["paused"] and paused["step"] == 4
    train(TrainConfig(out=str(tmp_path / "b"), max_steps=8, resume=str(tmp_path / "b"), **TINY))
    assert json.loads((tmp_path / "b" / "train_history.json").read_text())["step"] == 8
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a), "resume must continue the exact same run"


def test_same_seed_same_weights(tmp_path):
    for name in ("x", "y"):
        train(TrainConfig(out=str(tmp_path / name), max_steps=3, **TINY))
    a, b = _weights(tmp_path / "x"), _weights(tmp_path / "y")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_is_official_llada_layout(tmp_path):
    train(TrainConfig(out=str(tmp_path / "m"), max_steps=1, **TINY))
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["d_model"] == 32
    lm = load(tmp_path / "m")  # tokenizer files are copied beside the weights
    assert lm.tokenizer is not None and lm.tokenizer.mask_token_id == lm.mask_token_id


def test_score_outputs_counts_copy_and_equations():
    probs = [("Tom has 3 bags of 4 apples.", "", 12), ("Ann has 5 and 6.", "", 11)]
    res = score_outputs(["He has 3*4=12 apples.\n#### 12", "She has 5+6=12.\n#### 12"], probs)
    assert res["accuracy"] == 0.5 and res["copy_rate"] == 1.0 and res["equation_accuracy"] == 0.5
