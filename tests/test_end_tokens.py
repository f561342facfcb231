"""LLaDA's end-token options (``logits_eos_inf``, ``confidence_eos_eot_inf``): validation, CLI flags,
the token ids taken from the checkpoint, and the API path using them. Token-for-token parity with
the reference sampler is in test_golden_parity.py (``cases_llada_eos.json``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import dpad
from dpad.cli import build_parser
from dpad.config import DecodeConfig
from dpad.engine import decode
from dpad.errors import ConfigError
from dpad.flags import decode_config_from_args
from dpad.models.loading import end_of_turn_id

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"


@pytest.mark.parametrize("name", ["logits_eos_inf", "confidence_eos_eot_inf"])
def test_flags_are_validated(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        DecodeConfig(**{name: "yes"})
    assert getattr(DecodeConfig(**{name: True}), name) is True


def test_cli_flags() -> None:
    ns = build_parser().parse_args(["generate", "--prompt-ids", "1,2", "--logits-eos-inf",
                                    "--confidence-eos-eot-inf"])
    cfg = decode_config_from_args(ns)
    assert cfg.logits_eos_inf and cfg.confidence_eos_eot_inf
    ns = build_parser().parse_args(["generate", "--prompt-ids", "1,2", "--no-logits-eos-inf"])
    assert not decode_config_from_args(ns).logits_eos_inf


def _tiny_tokenizer(specials: list[str]):  # noqa: ANN202
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(specials + ["a", "b", "c"])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token=specials[0]))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token=specials[0])


def test_end_of_turn_id_from_the_tokenizer() -> None:
    assert end_of_turn_id(_tiny_tokenizer(["<unk>", "<|eot_id|>"])) == 1
    assert end_of_turn_id(_tiny_tokenizer(["<unk>", "x", "<|im_end|>"])) == 2
    assert end_of_turn_id(_tiny_tokenizer(["<unk>"])) is None


@pytest.fixture(scope="module")
def llada_with_ends(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """llada-tiny with eos 1 and eot 68 in config.json (the ids of cases_llada_eos.json)."""
    d = tmp_path_factory.mktemp("llada-ends")
    shutil.copy(GOLDEN / "llada-tiny" / "model.safetensors", d / "model.safetensors")
    cfg = json.loads((GOLDEN / "llada-tiny" / "config.json").read_text())
    cfg.update(eos_token_id=1, eot_token_id=68)
    (d / "config.json").write_text(json.dumps(cfg))
    return dpad.load(str(d), dtype="float64")


def test_ids_come_from_the_checkpoint(llada_with_ends) -> None:  # noqa: ANN001
    assert (llada_with_ends.eos_token_id, llada_with_ends.eot_token_id) == (1, 68)


def test_api_uses_the_checkpoint_ids(llada_with_ends) -> None:  # noqa: ANN001
    """Reference cases through dpad.generate, the ids read from config.json: the reference's tokens."""
    cases = json.loads((GOLDEN / "cases_llada_eos.json").read_text())
    for c in cases[:3]:
        a = c["args"]
        cfg = DecodeConfig(gen_length=a["gen_length"], block_length=a["block_length"], steps=a["steps"],
                           logits_eos_inf=a["logits_eos_inf"], confidence_eos_eot_inf=a["confidence_eos_eot_inf"])
        assert dpad.generate(llada_with_ends, c["prompt_ids"], cfg).generated_ids == c["generated_ids"]
    # the gen-96 case, where the EoT id matters (without it the option treats EOS alone)
    case = next(c for c in cases if c["args"]["gen_length"] == 96)
    a = case["args"]
    cfg = DecodeConfig(gen_length=96, block_length=a["block_length"], steps=a["steps"], confidence_eos_eot_inf=True)
    torch.set_num_threads(1)
    out = dpad.generate(llada_with_ends, case["prompt_ids"], cfg)
    assert out.generated_ids == case["generated_ids"]
    # and without the EoT id the confidence option treats EOS alone, which decodes differently here
    plain = decode(llada_with_ends.model, case["prompt_ids"], cfg, mask_id=250, eos_id=1)
    assert plain.generated != case["generated_ids"]
