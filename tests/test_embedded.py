"""The shipped embedded model: loads offline and solves a fixed held-out problem."""

import subprocess
import sys

import dpad
from dpad.synthetic import arith

# A fixed problem from the held-out test split (asserted below to be a test-split problem).
QUESTION = ("Hannah practices the guitar for 15 minutes a day, 7 days a week. "
            "How many minutes does she practice in 5 weeks?")


def test_question_is_held_out():
    assert arith.split_of(QUESTION) != "train"


def test_embedded_model_loads_with_tokenizer():
    lm = dpad.load(device="cpu")
    assert lm.tokenizer is not None
    assert lm.tokenizer.mask_token_id == lm.mask_token_id
    assert lm.tokenizer.eos_token_id == lm.eos_token_id
    assert lm.args.arch == "llada"


def test_cli_generate_default_model_solves_fixed_problem():
    # vanilla decoding: one token per step, block 32, gen length 64 (the response is ~30 tokens)
    r = subprocess.run([sys.executable, "-m", "dpad.cli", "generate", "--prompt", QUESTION, "--gen-length", "64",
                        "--device", "cpu", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("#### 525"), r.stdout
    assert "=105" in r.stdout and "=525" in r.stdout


def test_dpad_parallel_prefix_solves_fixed_problem():
    lm = dpad.load(device="cpu")
    out = dpad.generate(lm, QUESTION, dpad.preset("llada-instruct-gsm8k-parallel", window=64, cache="prefix"))
    assert out.text.endswith("#### 525")
    assert out.stats["nfe"] < 10
