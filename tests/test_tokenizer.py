from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from dpad.synthetic.arith import Problem, generate  # noqa: E402
from dpad.synthetic.tokenizer import (  # noqa: E402
    ASSISTANT_TOKEN,
    EOS_TOKEN,
    MASK_TOKEN,
    SPECIAL_TOKENS,
    UNK_TOKEN,
    USER_TOKEN,
    build_tokenizer,
    format_example,
    format_prompt,
    load_tokenizer,
)


@cache
def _problems(split: str, n: int) -> tuple[Problem, ...]:
    return tuple(generate(split, n, seed=0))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def raw_tok(tok_dir: Path):
    return load_tokenizer(tok_dir)


@pytest.fixture(scope="module")
def hf_tok(tok_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


def test_files_and_specials(tok_dir: Path, raw_tok) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok_dir / f).is_file()
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert cfg["eos_token"] == cfg["pad_token"] == EOS_TOKEN
    assert cfg["mask_token"] == MASK_TOKEN and cfg["unk_token"] == UNK_TOKEN
    assert "chat_template" in cfg and cfg["model_max_length"] > 0
    assert [raw_tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert raw_tok.get_vocab_size() < 1000
    for d in "0123456789":
        assert raw_tok.token_to_id(d) is not None


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_no_unk_and_exact_round_trip(raw_tok, split: str) -> None:
    unk = raw_tok.token_to_id(UNK_TOKEN)
    for p in _problems(split, 3000):
        text = format_example(p.question, p.solution)
        ids = raw_tok.encode(text).ids
        assert unk not in ids, text
        assert raw_tok.decode(ids, skip_special_tokens=False) == text


def test_digits_are_single_tokens_and_numbers_copy(raw_tok) -> None:
    for p in _problems("train", 300):
        for part in (p.question, p.solution):
            for t in raw_tok.encode(part).tokens:
                if any(ch.isdigit() for ch in t):
                    assert len(t) == 1, t
        # A number written in the question is the same token sequence in the solution.
        for num in set(re.findall(r"\d+", p.question)):
            if re.search(rf"(?<!\d){num}(?!\d)", p.solution):
                assert raw_tok.encode(num).tokens == list(num)
    assert raw_tok.encode("has 12").tokens == ["has", " ", "1", "2"]
    assert raw_tok.encode("=12").tokens == ["=", "1", "2"]
    assert raw_tok.encode("Mia has 12+15=27 apples.\n#### 27").tokens == [
        "Mia", " has", " ", "1", "2", "+", "1", "5", "=", "2", "7", " apples", ".", "\n", "####", " ", "2", "7",
    ]  # fmt: skip


def test_lengths(raw_tok) -> None:
    probs = _problems("train", 2000)
    sol = [len(raw_tok.encode(p.solution).ids) for p in probs]
    q = [len(raw_tok.encode(format_prompt(p.question)).ids) for p in probs]
    assert sum(sol) / len(sol) >= 30
    assert max(q) + max(sol) + 1 < 256


def test_hf_tokenizer_offline(hf_tok) -> None:
    assert hf_tok.mask_token_id == 1
    assert hf_tok.eos_token_id == 0 and hf_tok.pad_token_id == 0
    assert hf_tok.unk_token_id == 2
    assert hf_tok.convert_tokens_to_ids(USER_TOKEN) == 3
    assert hf_tok.convert_tokens_to_ids(ASSISTANT_TOKEN) == 4
    assert len(hf_tok) < 1000


def test_chat_template_matches_format_prompt(hf_tok) -> None:
    for p in _problems("test", 20):
        msgs = [{"role": "user", "content": p.question}]
        rendered = hf_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert rendered == format_prompt(p.question)
        assert rendered == f"{USER_TOKEN}\n{p.question}\n{ASSISTANT_TOKEN}\n"
        full = hf_tok.apply_chat_template(
            [*msgs, {"role": "assistant", "content": p.solution}], add_generation_prompt=False, tokenize=False
        )
        assert full == format_example(p.question, p.solution)


def test_hf_encode_decode(hf_tok, raw_tok) -> None:
    for p in _problems("validation", 50):
        text = format_example(p.question, p.solution)
        ids = hf_tok(text, add_special_tokens=True)["input_ids"]
        assert ids == raw_tok.encode(text).ids
        assert ids[0] == hf_tok.convert_tokens_to_ids(USER_TOKEN) and ids[-1] == hf_tok.eos_token_id
        assert hf_tok.decode(ids) == text
        plain = hf_tok.decode(ids, skip_special_tokens=True)
        assert plain == f"\n{p.question}\n\n{p.solution}"
        for marker in (EOS_TOKEN, MASK_TOKEN, USER_TOKEN, ASSISTANT_TOKEN):
            assert marker not in plain
    masked = [hf_tok.mask_token_id] * 3 + hf_tok("#### 5")["input_ids"] + [hf_tok.eos_token_id]
    assert hf_tok.decode(masked, skip_special_tokens=True) == "#### 5"
    assert hf_tok.decode(masked) == f"{MASK_TOKEN * 3}#### 5{EOS_TOKEN}"


def test_custom_corpus(tmp_path: Path) -> None:
    out = build_tokenizer(tmp_path / "t", corpus=["Zebras jump over 7 fences!"])
    tok = load_tokenizer(out)
    unk = tok.token_to_id(UNK_TOKEN)
    assert unk not in tok.encode("Zebras jump over 7 fences!").ids
    p = _problems("train", 1)[0]
    assert unk not in tok.encode(p.question + "\n" + p.solution).ids
