"""Answer extraction and scoring for GSM8K, MATH and code benchmarks.

Nothing in this module depends on a model: every function maps generated text
(and a reference) to a score, so results can be recomputed offline from saved
generations. Both :mod:`dpad.eval` (the benchmark tasks) and :mod:`dpad.analysis` score
with it.

GSM8K
    Re-implements the two filters of lm-evaluation-harness 0.4.x
    (``lm_eval/tasks/gsm8k/gsm8k.yaml``, task version 3.0):

    * ``strict-match``: regex ``#### (\\-?[0-9\\.\\,]+)``, first match, group 1;
    * ``flexible-extract``: regex ``(-?[$0-9.,]{2,})|(-?[0-9]+)``, *last* match
      (``group_select: -1``); for a tuple of groups the non-empty one is used;

    both followed by ``str.strip()`` and falling back to ``"[invalid]"`` when
    nothing matches. The metric is ``exact_match`` with ``ignore_case=True``,
    ``ignore_punctuation=False`` and ``regexes_to_ignore`` = ``,``, ``\\$``,
    ``(?s).*#### `` and ``\\.$`` applied, in that order, to both the
    prediction and the full gold ``answer`` field (which turns the gold field
    into the text after its last ``#### ``). The comparison is a plain string
    comparison: ``2.50`` does not match ``2.5``.

MATH
    :func:`last_boxed` extracts the content of the last ``\\boxed{...}`` /
    ``\\fbox{...}``; :func:`math_equivalent` uses ``math_verify`` (parse +
    verify) when it is importable and a normalised string comparison otherwise.

HumanEval / MBPP
    :func:`humaneval_postprocess` follows the lm-evaluation-harness 0.4.x
    HumanEval convention (the one Fast-dLLM's evaluation inherits, where the
    stop strings are applied post hoc to a fixed-length generation): the
    completion is cut at the earliest of :data:`HUMANEVAL_STOP_STRINGS`
    (``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``) plus a closing
    Markdown fence (newline followed by three backticks). Because every stop string starts with a newline followed
    directly by the keyword, only *top-level* statements end the completion;
    indented helper code inside the function body is kept. If the model wrapped
    its answer in a Markdown fence, the fenced code is used instead (see
    :func:`humaneval_postprocess`).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from typing import Any

__all__ = [
    "GSM8K_FLEXIBLE_PATTERN",
    "GSM8K_IGNORE_REGEXES",
    "GSM8K_INVALID",
    "GSM8K_STRICT_PATTERN",
    "HUMANEVAL_STOP_STRINGS",
    "MBPP_STOP_STRINGS",
    "extract_code_block",
    "gsm8k_exact_match",
    "gsm8k_extract_flexible",
    "gsm8k_extract_strict",
    "gsm8k_normalize",
    "gsm8k_score",
    "humaneval_postprocess",
    "last_boxed",
    "math_equivalent",
    "math_extract_answer",
    "math_score",
    "mbpp_postprocess",
    "normalize_math_answer",
    "truncate_at_stop",
]

# --------------------------------------------------------------------------- GSM8K

GSM8K_STRICT_PATTERN = r"#### (\-?[0-9\.\,]+)"
GSM8K_FLEXIBLE_PATTERN = r"(-?[$0-9.,]{2,})|(-?[0-9]+)"
GSM8K_IGNORE_REGEXES: tuple[str, ...] = (",", r"\$", r"(?s).*#### ", r"\.$")
GSM8K_INVALID = "[invalid]"

_STRICT_RE = re.compile(GSM8K_STRICT_PATTERN)
_FLEXIBLE_RE = re.compile(GSM8K_FLEXIBLE_PATTERN)
_IGNORE_RES = tuple(re.compile(p) for p in GSM8K_IGNORE_REGEXES)


def _regex_filter(text: str, pattern: re.Pattern[str], group_select: int) -> str:
    """lm-eval's ``RegexFilter``: ``findall``, pick one match, first non-empty group, strip."""
    found = pattern.findall(text)
    if not found:
        return GSM8K_INVALID
    picked = found[group_select]
    if isinstance(picked, tuple):
        picked = next(group for group in picked if group)
    return picked.strip()


def gsm8k_extract_strict(text: str) -> str:
    """``strict-match`` filter: group 1 of the first ``#### <number>`` match, else ``[invalid]``."""
    return _regex_filter(text, _STRICT_RE, 0)


def gsm8k_extract_flexible(text: str) -> str:
    """``flexible-extract`` filter: the last number-like span in ``text``, else ``[invalid]``.

    Note the lm-eval quirk kept on purpose: the first alternative also matches
    runs such as ``...`` or ``$.``, so an output ending in an ellipsis yields
    ``"..."``.
    """
    return _regex_filter(text, _FLEXIBLE_RE, -1)


def gsm8k_normalize(text: str) -> str:
    """Apply the ``regexes_to_ignore`` of the GSM8K metric in order, then lower-case."""
    for pattern in _IGNORE_RES:
        text = pattern.sub("", text)
    return text.lower()


def gsm8k_exact_match(prediction: str, gold_answer_field: str) -> bool:
    """``exact_match`` as configured in lm-eval's gsm8k task (no numeric tolerance)."""
    return gsm8k_normalize(prediction) == gsm8k_normalize(gold_answer_field)


def gsm8k_score(output: str, gold_answer_field: str) -> dict[str, Any]:
    """Score one generation against a GSM8K ``answer`` field.

    Returns ``{"strict": bool, "flexible": bool, "strict_pred": str,
    "flexible_pred": str, "gold": str}`` where the ``*_pred`` values are the raw
    filter outputs (``"[invalid]"`` when nothing matched) and ``gold`` is the
    normalised reference.
    """
    strict_pred = gsm8k_extract_strict(output)
    flexible_pred = gsm8k_extract_flexible(output)
    return {
        "strict": gsm8k_exact_match(strict_pred, gold_answer_field),
        "flexible": gsm8k_exact_match(flexible_pred, gold_answer_field),
        "strict_pred": strict_pred,
        "flexible_pred": flexible_pred,
        "gold": gsm8k_normalize(gold_answer_field),
    }


# --------------------------------------------------------------------------- MATH

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text`` (``None`` if absent).

    Nested braces are balanced (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``).
    The brace-less form ``\\boxed 5`` gives the token after the space. An
    unbalanced ``\\boxed{`` (truncated generation) gives ``None``.
    """
    start = -1
    command = ""
    for cmd in _BOX_COMMANDS:
        pos = text.rfind(cmd)
        if pos > start:
            start, command = pos, cmd
    if start < 0:
        return None
    rest = text[start + len(command) :]
    if rest.startswith(" "):
        token = re.match(r"\s+([^\s$]+)", rest)
        return token.group(1).rstrip(".") if token else None
    brace = rest.find("{")
    if brace < 0 or rest[:brace].strip():
        return None
    depth = 0
    for i in range(brace, len(rest)):
        ch = rest[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return rest[brace + 1 : i]
    return None


_FINAL_ANSWER_RE = re.compile(
    r"final answer is\s*\$?(.+?)\$?\s*(?:\.\s*I hope it is correct|\.?\s*$)", re.I | re.S
)


def math_extract_answer(output: str) -> str | None:
    """Best-effort final answer of a MATH solution.

    Order: last ``\\boxed``/``\\fbox``; then the Minerva form ``Final Answer:
    The final answer is X. I hope it is correct.``; otherwise ``None``.
    """
    boxed = last_boxed(output)
    if boxed is not None:
        return boxed
    match = _FINAL_ANSWER_RE.search(output)
    if match:
        return match.group(1).strip()
    return None


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}`` and ``\\frac1{2}`` -> ``\\frac{1}{2}``."""
    s = re.sub(r"\\frac([0-9a-zA-Z])([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    return re.sub(r"\\frac([0-9a-zA-Z])\{", r"\\frac{\1}{", s)


def normalize_math_answer(answer: str) -> str:
    """String normalisation used when ``math_verify`` is unavailable or inconclusive.

    Removes whitespace, ``\\left``/``\\right``, ``\\!``, dollar signs, degree
    marks, percent signs and ``\\text{}``/``\\mbox{}`` wrappers; maps
    ``\\dfrac``/``\\tfrac`` to ``\\frac`` and ``\\frac12`` to ``\\frac{1}{2}``;
    drops a short ``x =`` prefix, thousands separators and a trailing period;
    writes simple ``a/b`` as ``\\frac{a}{b}`` and ``0.5``-style leading dots as
    ``0.5``.
    """
    s = answer.strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\,", "").replace("\\;", "")
    s = re.sub(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right)\b", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    s = s.replace(" ", "")
    if s.endswith("."):
        s = s[:-1]
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0]) <= 2:
        s = parts[1]
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(^|[^0-9])\.(\d)", r"\g<1>0.\2", s)
    s = _fix_fracs(s)
    frac = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if frac:
        s = f"\\frac{{{frac.group(1)}}}{{{frac.group(2)}}}"
    return s


def _as_number(s: str) -> float | None:
    frac = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(\d+(?:\.\d+)?)\}", s)
    try:
        if frac:
            value = float(frac.group(2)) / float(frac.group(3))
            return -value if frac.group(1) else value
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def _math_verify_equivalent(pred: str, gold: str) -> bool | None:
    """``True``/``False`` from math_verify, ``None`` when it is missing or cannot parse."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    # math_verify's timeouts use SIGALRM, which only works in the main thread.
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return None
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:
        return None


def math_equivalent(pred: str | None, gold: str) -> bool:
    """Whether two final answers (e.g. ``\\boxed`` contents) are mathematically equal.

    Equal normalised strings are accepted first; otherwise ``math_verify``
    decides when importable; otherwise numbers are compared with a relative
    tolerance of 1e-6.
    """
    if pred is None:
        return False
    norm_pred, norm_gold = normalize_math_answer(pred), normalize_math_answer(gold)
    if norm_pred == norm_gold and norm_gold != "":
        return True
    verdict = _math_verify_equivalent(pred, gold)
    if verdict is not None:
        return verdict
    a, b = _as_number(norm_pred), _as_number(norm_gold)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return False


def math_score(output: str, gold_solution_or_answer: str) -> dict[str, Any]:
    """Score a generated MATH solution.

    ``gold_solution_or_answer`` is either a full reference solution (its last
    ``\\boxed{}`` is used) or a bare answer. Returns ``{"correct": bool, "pred":
    str | None, "gold": str}``.
    """
    gold = last_boxed(gold_solution_or_answer)
    if gold is None:
        gold = gold_solution_or_answer.strip()
    pred = math_extract_answer(output)
    return {"correct": math_equivalent(pred, gold), "pred": pred, "gold": gold}


# --------------------------------------------------------------------------- code

HUMANEVAL_STOP_STRINGS: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n```")
"""lm-eval 0.4.x HumanEval ``until`` list plus a closing Markdown fence."""

MBPP_STOP_STRINGS: tuple[str, ...] = ("[DONE]",)
"""lm-eval MBPP ``until`` list."""

# Top-level lines a model tends to append after a full solution (self-tests, demos).
_FULL_PROGRAM_STOPS: tuple[str, ...] = ("\nif __name__", "\nprint(", "\nassert ", "\n# Test", "\n# Example")

_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.S | re.M)
_PY_LANGS = {"python", "py", "python3", "py3", ""}


def truncate_at_stop(text: str, stops: Sequence[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (post-hoc ``until``)."""
    cut = len(text)
    for stop in stops:
        pos = text.find(stop)
        if 0 <= pos < cut:
            cut = pos
    return text[:cut]


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]


def _find_code_block(text: str) -> str | None:
    """The first Python (or untagged) fenced block, else the first block, else ``None``.

    A lone fence at the very end (the prompt opened the block, the model closed
    it) is not an opening fence: the text before it is returned.
    """
    first = text.find("```")
    if first < 0:
        return None
    if not text[first + 3 :].strip():
        return text[:first]
    blocks = _fenced_blocks(text)
    if not blocks:
        return None
    for lang, body in blocks:
        if lang in _PY_LANGS:
            return body
    return blocks[0][1]


def extract_code_block(text: str) -> str:
    """Code from a model answer.

    Returns the first ```` ```python ```` (or untagged) fenced block, else the
    first fenced block of any language, else ``text`` itself. MBPP markers
    (``[BEGIN]``, and anything from ``[DONE]`` on) are removed. An unclosed
    fence (truncated generation) extends to the end of the text.
    """
    text = truncate_at_stop(text, MBPP_STOP_STRINGS).replace("[BEGIN]", "")
    block = _find_code_block(text)
    return block if block is not None else text


def _defines_top_level(code: str) -> bool:
    return re.search(r"^(?:def|class|import|from|async def)\s", code, re.M) is not None


def humaneval_postprocess(prompt: str, completion: str) -> str:
    """Turn a raw HumanEval generation into the text to append to ``prompt``.

    The program to test is ``prompt + humaneval_postprocess(prompt, completion)``
    (then the problem's ``test`` and ``check(entry_point)``).

    * First non-blank line indented (the usual base-model case: the completion
      continues the function body): cut at the earliest of
      :data:`HUMANEVAL_STOP_STRINGS` (lm-eval 0.4.x / Fast-dLLM convention; a
      closing fence also ends it).
    * Otherwise, a fenced answer (```` ```python ... ``` ````) is unwrapped and
      used without the lm-eval stop strings, so helper functions after the entry
      point survive. If it has top-level definitions/imports it is a full
      re-definition, appended after a blank line (it shadows the prompt's
      docstring-only function); otherwise it is taken as the body. Trailing
      top-level self-tests (``if __name__``, ``print(``, ``assert``) are dropped.
    * An unfenced completion starting with a top-level ``def``/``import`` is
      handled like a fenced full re-definition.
    * Anything else is cut at the stop strings as in the first case.
    """
    first_line = next((line for line in completion.split("\n") if line.strip()), "")
    if first_line[:1] in (" ", "\t"):
        # continuation of the function body (the usual case, also when the prompt opened a fence)
        return truncate_at_stop(completion, HUMANEVAL_STOP_STRINGS)
    block = _find_code_block(completion)
    if block is None and re.match(r"(?:[ \t]*\n)*(?:def|import|from|class)\s", completion):
        block = completion.lstrip("\n")
    if block is None:
        return truncate_at_stop(completion, HUMANEVAL_STOP_STRINGS)
    if _defines_top_level(block):
        code = truncate_at_stop(block, _FULL_PROGRAM_STOPS)
        sep = "" if prompt.endswith("\n") else "\n"
        return sep + "\n" + code.rstrip() + "\n"
    return truncate_at_stop(block, HUMANEVAL_STOP_STRINGS)


def mbpp_postprocess(completion: str) -> str:
    """Code of an MBPP generation: cut at ``[DONE]``, drop ``[BEGIN]``, unwrap a fence."""
    return extract_code_block(completion).strip("\n") + "\n"
