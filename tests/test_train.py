"""The training loop: runs, saves an official-layout checkpoint, and resumes deterministically."""

import json

import pytest
import torch

from dpad.models import load
from dpad.train.trainer import TrainConfig, score_outputs, sft_loss, train

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


# ----------------------------------------------------------------------------- the SFT objective
# LLaDA's SFT loss (its paper's SFT objective and the guidelines in its public repository): only
# response tokens are masked, each with probability t (one t per row, t = eps + (1 - eps) * u with
# u uniform), and the loss is
#   (1 / B) * sum_rows (1 / L_row) * sum_{masked response positions} CE / t_row
# where L_row counts the row's response positions (the EOS padding after the answer included).
# The expectation below is computed here from what the model was given: no call into sft_loss'
# arithmetic.
MASK, EOS = 250, 251


def _sft_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows of length 20: prompts of 5, 9 and 3 tokens, responses padded with EOS."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 240, (3, 20), generator=g)
    resp = torch.zeros(3, 20, dtype=torch.bool)
    for b, (p, r) in enumerate([(5, 8), (9, 11), (3, 4)]):
        ids[b, p + r:] = EOS
        resp[b, p:] = True
    return ids, resp


def _seen_input(model, fn):  # noqa: ANN001, ANN202
    """Runs ``fn``; returns its result and the token ids the model's forward received."""
    seen = []
    h = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        out = fn()
    finally:
        h.remove()
    assert len(seen) == 1
    return out, seen[0]


def _expected_sft_loss(model, ids, x, resp, t) -> float:  # noqa: ANN001
    """The formula above in float64 from the noisy input ``x`` and the rows' mask ratios ``t``."""
    with torch.no_grad():
        logp = torch.log_softmax(model(x).double(), dim=-1)
    total = 0.0
    for b in range(ids.shape[0]):
        length = int(resp[b].sum())
        masked = [j for j in range(ids.shape[1]) if x[b, j] == MASK]
        total += sum(-float(logp[b, j, ids[b, j]]) / float(t[b]) for j in masked) / length
    return total / ids.shape[0]


def test_sft_loss_without_noise_floor_is_the_mean_response_cross_entropy(llada_tiny) -> None:  # noqa: ANN001
    """eps = 1: t = 1 for every row, so every response token is masked (the prompt never is) and
    the loss is the mean over rows of each row's mean cross-entropy over its response."""
    model = llada_tiny.model
    ids, resp = _sft_batch()
    (loss, _), x = _seen_input(model, lambda: sft_loss(model, ids, resp, MASK, EOS, 1.0,
                                                          torch.Generator().manual_seed(0)))
    assert torch.equal(x == MASK, resp) and torch.equal(x[~resp], ids[~resp])
    want = _expected_sft_loss(model, ids, x, resp, torch.ones(3))
    assert float(loss) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sft_loss_is_the_llada_sft_objective(llada_tiny, seed: int) -> None:  # noqa: ANN001
    """A sampled mask: the prompt is never masked, each row's masked share fits its t, and the loss
    equals the formula with the 1/t weights. The rows' t are drawn as sft_loss draws them (its
    documented stratified draw from the generator), and the mask they imply is the one the model
    was actually given."""
    model = llada_tiny.model
    ids, resp = _sft_batch()
    eps = 0.05
    (loss, _), x = _seen_input(model, lambda: sft_loss(model, ids, resp, MASK, EOS, eps,
                                                       torch.Generator().manual_seed(seed)))
    masked = x == MASK
    assert not masked[~resp].any() and torch.equal(x[~masked], ids[~masked])
    # the draws: one u per stratum [i/B, (i+1)/B), shuffled over the rows, then u < t per token
    g = torch.Generator().manual_seed(seed)
    B, T = ids.shape
    u = (torch.arange(B, dtype=torch.float32) + torch.rand(B, generator=g)) / B
    t = eps + (1 - eps) * u[torch.randperm(B, generator=g)]
    assert torch.equal(masked, (torch.rand(B, T, generator=g) < t[:, None]) & resp)
    assert ((t >= eps) & (t <= 1)).all() and sorted(((t - eps) / (1 - eps) * B).floor().tolist()) == [0, 1, 2]
    want = _expected_sft_loss(model, ids, x, resp, t)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    # the 1/t weight matters: the same masked tokens without it give another number
    assert float(loss) != pytest.approx(_expected_sft_loss(model, ids, x, resp, torch.ones(B)), rel=1e-3)
