"""Word-level tokenizer for the synthetic arithmetic task.

Pre-tokenization (one regex, applied identically to questions and answers):

* ``####`` is one token (the GSM8K answer marker);
* a word is a maximal run of ASCII letters, with its single leading space
  attached (``" apples"`` and ``"Mia"`` are tokens);
* every digit is its own token, and a space in front of a digit is a token of
  its own, so a number is always the same digit tokens wherever it appears
  (``" 12"`` -> ``" "``, ``"1"``, ``"2"``; ``"3*12=36"`` -> ``"3"``, ``"*"``, ``"1"``, ``"2"``, ...);
* newline, space and every other character are single tokens.

The decoder concatenates tokens, so ``decode(encode(text)) == text`` exactly.

The vocabulary is built (not learned) from the pieces of a corpus plus every
word :func:`dpad.synthetic.arith.vocabulary_words` can emit, each with and without a
leading space, so no generator output maps to ``<|unk|>``.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

__all__ = [
    "EOS_TOKEN",
    "MASK_TOKEN",
    "UNK_TOKEN",
    "USER_TOKEN",
    "ASSISTANT_TOKEN",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "MODEL_MAX_LENGTH",
    "PRETOKENIZE_PATTERN",
    "build_tokenizer",
    "load_tokenizer",
    "format_prompt",
    "format_example",
    "default_corpus",
]

EOS_TOKEN = "<|eos|>"
MASK_TOKEN = "<|mask|>"
UNK_TOKEN = "<|unk|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
# Ids 0..4, in this order.
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, MASK_TOKEN, UNK_TOKEN, USER_TOKEN, ASSISTANT_TOKEN)

MODEL_MAX_LENGTH = 4096

PRETOKENIZE_PATTERN = r"####| ?[A-Za-z]+|[0-9]|\n| |[^ \nA-Za-z0-9]"

# user -> "<|user|>\n{content}\n"; assistant -> "<|assistant|>\n{content}<|eos|>";
# add_generation_prompt -> "<|assistant|>\n".  Other roles render like "user".
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|assistant|>\\n' + message['content'] + '<|eos|>' -}}"
    "{%- else -%}"
    "{{- '<|user|>\\n' + message['content'] + '\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|assistant|>\\n' -}}"
    "{%- endif -%}"
)


def format_prompt(question: str) -> str:
    """The chat-template rendering of one user message with the generation prompt."""
    return f"{USER_TOKEN}\n{question}\n{ASSISTANT_TOKEN}\n"


def format_example(question: str, solution: str) -> str:
    """Prompt plus target: ``format_prompt(question) + solution + EOS`` (a user/assistant pair)."""
    return format_prompt(question) + solution + EOS_TOKEN


def default_corpus(n_problems: int = 3000, seed: int = 0) -> list[str]:
    """Questions and solutions of ``n_problems`` train problems."""
    from dpad.synthetic.arith import generate

    out: list[str] = []
    for p in generate("train", n_problems, seed=seed):
        out.append(p.question)
        out.append(p.solution)
    return out


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated", invert=False)


def _build_vocab(corpus: Iterable[str]) -> dict[str, int]:
    from dpad.synthetic.arith import vocabulary_words

    pieces: set[str] = set()
    for w in vocabulary_words():
        pieces.add(w)
        pieces.add(" " + w)
    pieces.update(string.digits)
    pieces.update(string.punctuation)
    pieces.update((" ", "\n", "####"))
    pre = _pre_tokenizer()
    for text in corpus:
        pieces.update(piece for piece, _ in pre.pre_tokenize_str(text))
    pieces.difference_update(SPECIAL_TOKENS)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for piece in sorted(pieces):
        vocab[piece] = len(vocab)
    return vocab


def build_tokenizer(out_dir: str | Path, corpus: Iterable[str] | None = None) -> Path:
    """Build the word-level tokenizer and save it in ``out_dir`` in Hugging Face format.

    ``corpus`` defaults to :func:`default_corpus`; the generator's full word list is
    always included.  Writes ``tokenizer.json``, ``tokenizer_config.json`` and
    ``special_tokens_map.json``; ``transformers.AutoTokenizer.from_pretrained(out_dir)``
    loads the result offline.  Returns ``out_dir`` as a :class:`~pathlib.Path`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = _build_vocab(default_corpus() if corpus is None else corpus)

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(
        [
            AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
            for t in SPECIAL_TOKENS
        ]
    )
    tok.save(str(out / "tokenizer.json"))

    special_map = {
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "mask_token": MASK_TOKEN,
        "unk_token": UNK_TOKEN,
        "additional_special_tokens": [USER_TOKEN, ASSISTANT_TOKEN],
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "model_max_length": MODEL_MAX_LENGTH,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return out


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load the raw :class:`tokenizers.Tokenizer` (no transformers needed).

    ``path`` is a directory written by :func:`build_tokenizer` or a ``tokenizer.json`` file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    return Tokenizer.from_file(str(p))
