"""Dream-v0-Instruct-7B handling on a tiny stand-in built here: the dream-tiny weights plus a
Qwen2-style byte-level BPE tokenizer declared as ``DreamTokenizer`` (remote code in the real
checkpoint) with a ``<|im_start|>role ... <|im_end|>`` chat template. Nothing is downloaded.

Checked: the tokenizer loads without remote code; the instruct checkpoint is told apart from the
base one by its chat template (and a ``base`` name), not by path alone; prompts, ``dpad eval`` and
the lm-eval model use the chat format for the instruct checkpoint only; the model-card presets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import dpad
from dpad.api import encode_prompt
from dpad.config import preset
from dpad.eval.methods import default_params, model_family

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]
# a Qwen2-style template (default system turn, <|im_start|>role\n...<|im_end|>\n turns)
TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _tokenizer_files(d: Path, template: str | None) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # the alphabet of a few sentences only, so every id stays below dream-tiny's mask id (250)
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(["You are a helpful assistant.", "system user assistant", "What is 2 + 3?",
                             "Question: Answer: hi 0123456789 = - * / , . ? ! \n"] * 4, trainer)
    assert tok.get_vocab_size() <= 250  # below dream-tiny's mask id
    tok.save(str(d / "tokenizer.json"))
    cfg = {"tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
           "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": None, "bos_token": None,
           "mask_token": "<|mask|>", "model_max_length": 4096}
    if template is not None:
        cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


def _checkpoint(root: Path, name: str, template: str | None = TEMPLATE) -> Path:
    d = root / name
    d.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(GOLDEN / "dream-tiny" / f, d / f)
    _tokenizer_files(d, template)
    return d


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dream-chat")
    return {"instruct": _checkpoint(root, "Dream-v0-Instruct-7B-tiny"),
            "base": _checkpoint(root, "Dream-v0-Base-7B-tiny"),
            "plain": _checkpoint(root, "dream-no-template", template=None)}


@pytest.fixture(scope="module")
def instruct(dirs: dict[str, Path]):  # noqa: ANN201
    return dpad.load(str(dirs["instruct"]), dtype="float64")


def test_dream_tokenizer_loads_without_remote_code(instruct, capfd) -> None:  # noqa: ANN001
    tok = instruct.tokenizer
    assert "Qwen2" in type(tok).__name__
    assert tok.chat_template == TEMPLATE
    assert instruct.eot_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert "custom code" not in capfd.readouterr().err


def test_instruct_is_told_apart_from_base(dirs: dict[str, Path], instruct) -> None:  # noqa: ANN001
    assert instruct.is_chat
    base = dpad.load(str(dirs["base"]), dtype="float64")
    assert base.tokenizer.chat_template and not base.is_chat  # same template, but a base checkpoint
    assert not dpad.load(str(dirs["plain"]), dtype="float64").is_chat
    cfg = json.loads((dirs["instruct"] / "config.json").read_text())
    assert model_family(str(dirs["instruct"]), cfg) == "dream-instruct"
    assert model_family(str(dirs["base"]), cfg) == "dream-base"
    assert model_family(str(dirs["plain"]), cfg) == "dream-base"
    # a base name given in config.json counts as well; folders above the checkpoint do not
    from dpad.models.chat import is_chat_checkpoint, names_base

    assert not is_chat_checkpoint(dirs["instruct"], {"_name_or_path": "Dream-org/Dream-v0-Base-7B"})
    assert names_base("/hub/models--Dream-org--Dream-v0-Base-7B/snapshots/0123abc")
    assert not names_base("/hub/models--Dream-org--Dream-v0-Instruct-7B/snapshots/0123abc")
    assert not names_base("/data/base_models/Dream-v0-Instruct-7B")
    assert not names_base("/data/database-dream")


def test_prompts_use_the_chat_format(dirs: dict[str, Path], instruct) -> None:  # noqa: ANN001
    tok = instruct.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                   tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    ids = encode_prompt(instruct, "What is 2 + 3?")
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert encode_prompt(instruct, "What is 2 + 3?", chat=False) == tok("What is 2 + 3?")["input_ids"]
    base = dpad.load(str(dirs["base"]), dtype="float64")
    assert encode_prompt(base, "What is 2 + 3?") == tok("What is 2 + 3?")["input_ids"]


def test_presets_from_the_model_card() -> None:
    card = preset("dream-instruct")
    assert (card.gen_length, card.block_length, card.steps) == (512, 512, 512)
    assert (card.confidence, card.schedule, card.temperature, card.top_p, card.alg_temp) == \
        ("entropy", "dream", 0.2, 0.95, 0.0)
    chat = preset("dream-instruct-chat")
    assert (chat.gen_length, chat.block_length, chat.steps, chat.alg_temp) == (128, 32, 128, 0.1)
    assert default_params("dream-instruct", "gsm8k") == default_params("dream-base", "gsm8k")


def test_dpad_eval_uses_chat_for_the_instruct_checkpoint(dirs: dict[str, Path], tmp_path: Path) -> None:
    from dpad.eval.runner import run_eval
    from dpad.eval.tasks import get_task

    torch.set_num_threads(1)
    for kind, family, chat in (("instruct", "dream-instruct", True), ("base", "dream-base", False)):
        res = run_eval(task=get_task("arith"), model=str(dirs[kind]), method="vanilla", limit=1, dtype="float64",
                       overrides={"gen_length": 16, "block_length": 16}, out=tmp_path / kind, progress=False)
        assert (res["model_family"], res["chat"]) == (family, chat)


def test_lm_eval_model_uses_chat_for_the_instruct_checkpoint(dirs: dict[str, Path], instruct) -> None:  # noqa: ANN001
    pytest.importorskip("lm_eval")
    from dpad.eval.lm_eval_model import DpadLM

    class Req:
        def __init__(self, context: str) -> None:
            self.args = (context, {"until": []})

    torch.set_num_threads(1)
    args = dict(dtype="float64", device="cpu", gen_length=16, block_length=16)
    lm = DpadLM(pretrained=str(dirs["instruct"]), **args)
    cfg = lm.config
    got = lm.generate_until([Req("What is 2 + 3?")], disable_tqdm=True)
    assert got == [dpad.generate(instruct, "What is 2 + 3?", cfg, chat=True).text]
    assert got != [dpad.generate(instruct, "What is 2 + 3?", cfg, chat=False).text]
    # lm-eval formatting the contexts itself (--apply_chat_template): no second template
    lm.apply_chat_template([{"role": "user", "content": "hi"}])
    templated = lm.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}])
    assert lm.generate_until([Req(templated)], disable_tqdm=True) == \
        [dpad.generate(instruct, templated, cfg, chat=False).text]
    base = DpadLM(pretrained=str(dirs["base"]), **args)
    assert base.generate_until([Req("What is 2 + 3?")], disable_tqdm=True) == \
        [dpad.generate(base.lm, "What is 2 + 3?", cfg, chat=False).text]
