"""Answer extraction/scoring. Expected GSM8K values are worked out by hand from the
lm-eval 0.4.x gsm8k.yaml rules (strict: first ``#### (-?[0-9.,]+)``; flexible: last
``(-?[$0-9.,]{2,})|(-?[0-9]+)``; then remove ``,`` ``$`` ``(?s).*#### `` ``\\.$`` and lower-case)."""

from __future__ import annotations

import pytest

from dpad.scoring import (
    GSM8K_INVALID,
    extract_code_block,
    gsm8k_extract_flexible,
    gsm8k_extract_strict,
    gsm8k_normalize,
    gsm8k_score,
    humaneval_postprocess,
    last_boxed,
    math_equivalent,
    math_score,
    mbpp_postprocess,
    normalize_math_answer,
    truncate_at_stop,
)

GOLD_72 = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)

# (output, gold answer field, strict_pred, flexible_pred, strict_ok, flexible_ok)
GSM8K_CASES = [
    # plain, well-formed
    ("48/2 = 24, 24 + 48 = 72.\n#### 72", GOLD_72, "72", "72", True, True),
    # thousands separator: both filters keep the comma, the metric drops it
    ("Total is 1,234 apples.\n#### 1,234", "#### 1234", "1,234", "1,234", True, True),
    # dollar sign after ####: strict regex cannot match, flexible finds "$18"
    ("It costs $18.\n#### $18", "#### 18", GSM8K_INVALID, "$18", False, True),
    # trailing period is captured by both filters, then removed by `\.$`
    ("So the answer is 42.\n#### 42.", "#### 42", "42.", "42.", True, True),
    # several ####: strict takes the first, flexible the last number
    ("#### 10\nWait, I made a mistake.\n#### 12", "#### 12", "10", "12", False, True),
    # no number at all
    ("I do not know the answer.", "#### 5", GSM8K_INVALID, GSM8K_INVALID, False, False),
    # negative numbers
    ("It drops to -7 degrees.\n#### -7", "#### -7", "-7", "-7", True, True),
    ("#### -7", "#### 7", "-7", "-7", False, False),
    # decimals: compared as strings, so 2.50 != 2.5
    ("Each costs 2.50 dollars.\n#### 2.50", "#### 2.5", "2.50", "2.50", False, False),
    ("Half of one is 0.5\n#### 0.5", "#### 0.5", "0.5", "0.5", True, True),
    # flexible takes the LAST number even when it is not the answer
    ("The answer is 7. Check: 7 * 2 = 14", "#### 7", GSM8K_INVALID, "14", False, False),
    # an ellipsis is a flexible match ("..." has >= 2 chars of [$0-9.,])
    ("So 12 apples...", "#### 12", GSM8K_INVALID, "...", False, False),
    # "####" without the space does not satisfy the strict regex
    ("####12", "#### 12", GSM8K_INVALID, "12", False, True),
    # trailing comma inside the strict capture is removed by the "," ignore
    ("#### 1,234,", "#### 1234", "1,234,", "1,234,", True, True),
    # a dollar amount with cents and a trailing period
    ("She pays $1,050.\n", "#### 1050", GSM8K_INVALID, "$1,050.", False, True),
    # only a single digit: matched by the second flexible alternative
    ("x = 5", "#### 5", GSM8K_INVALID, "5", False, True),
]


@pytest.mark.parametrize("output,gold,strict_pred,flex_pred,strict_ok,flex_ok", GSM8K_CASES)
def test_gsm8k_lm_eval_rules(output, gold, strict_pred, flex_pred, strict_ok, flex_ok):
    assert gsm8k_extract_strict(output) == strict_pred
    assert gsm8k_extract_flexible(output) == flex_pred
    score = gsm8k_score(output, gold)
    assert score["strict_pred"] == strict_pred
    assert score["flexible_pred"] == flex_pred
    assert score["strict"] is strict_ok
    assert score["flexible"] is flex_ok


def test_gsm8k_gold_normalization():
    assert gsm8k_normalize(GOLD_72) == "72"
    assert gsm8k_normalize("Ann pays $3,000.\n#### 3,000") == "3000"
    assert gsm8k_normalize("[invalid]") == "[invalid]"
    assert gsm8k_score("#### 72", GOLD_72)["gold"] == "72"


def test_last_boxed():
    assert last_boxed(r"so \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{{a}+\sqrt{b}}") == r"{a}+\sqrt{b}"
    assert last_boxed(r"\boxed{3} and finally \fbox{4}") == "4"
    assert last_boxed(r"\fbox{4} but \boxed{5}") == "5"
    assert last_boxed(r"The answer is \boxed 7$.") == "7"
    assert last_boxed(r"\boxed{}") == ""
    assert last_boxed(r"truncated \boxed{\frac{1}{2") is None
    assert last_boxed("no box here") is None


def test_math_equivalent_and_score():
    assert math_equivalent("0.5", r"\frac{1}{2}")
    assert math_equivalent(r"\dfrac{5}{6}", r"\frac{5}{6}")
    assert math_equivalent("x = 7", "7")
    assert math_equivalent("1,000", "1000")
    assert not math_equivalent("8", "7")
    assert not math_equivalent(None, "7")
    result = math_score(r"... so the sum is $\boxed{\frac{5}{6}}$.", r"Thus $\boxed{\dfrac{5}{6}}$.")
    assert result == {"correct": True, "pred": r"\frac{5}{6}", "gold": r"\dfrac{5}{6}"}
    minerva = "Final Answer: The final answer is $7$. I hope it is correct."
    assert math_score(minerva, "7")["correct"]
    assert not math_score("no final answer", "7")["correct"]


def test_math_fallback_without_math_verify(monkeypatch):
    import dpad.scoring as metrics

    monkeypatch.setattr(metrics, "_math_verify_equivalent", lambda pred, gold: None)
    assert metrics.math_equivalent("0.5", r"\frac{1}{2}")
    assert metrics.math_equivalent(r"\frac12", r"\frac{1}{2}")
    assert metrics.math_equivalent("10\\%", "10")
    assert not metrics.math_equivalent("3", "4")
    assert normalize_math_answer(r"\left( 1, 2 \right)") == "(1,2)"
    assert normalize_math_answer(r"\text{5 cm}.") == "5cm"


def test_math_equivalent_in_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_equivalent, "0.5", r"\frac{1}{2}").result()


PROMPT = 'def add(a, b):\n    """Return a + b."""\n'


def test_humaneval_postprocess_stop_strings():
    raw = "    return a + b\n\n\ndef main():\n    pass\n"
    assert humaneval_postprocess(PROMPT, raw) == "    return a + b\n\n"
    assert humaneval_postprocess(PROMPT, "    return a + b\n# test\nprint(add(1, 2))") == "    return a + b"
    assert (
        humaneval_postprocess(PROMPT, "    return a + b\nif __name__ == '__main__':\n    pass")
        == "    return a + b"
    )
    # indented code is not a stop
    body = "    def helper(x):\n        return x\n    # comment\n    return helper(a) + b\n"
    assert humaneval_postprocess(PROMPT, body) == body
    # closing fence emitted after the body (prompt opened the block)
    assert humaneval_postprocess(PROMPT, "    return a + b\n```\nExplanation") == "    return a + b"


def test_humaneval_postprocess_fenced_full_function():
    raw = (
        "Here is the solution:\n```python\ndef add(a, b):\n    return helper(a) + b\n\n"
        "def helper(x):\n    return x\n\nprint(add(1, 2))\n```\nIt adds."
    )
    completion = humaneval_postprocess(PROMPT, raw)
    assert "def helper" in completion and "print(" not in completion and "```" not in completion
    namespace: dict = {}
    exec(PROMPT + completion, namespace)
    assert namespace["add"](2, 3) == 5


def test_humaneval_postprocess_fenced_body_and_unfenced_def():
    assert humaneval_postprocess(PROMPT, "```python\n    return a + b\n```") == "    return a + b\n"
    completion = humaneval_postprocess(PROMPT, "def add(a, b):\n    return a + b\n")
    namespace: dict = {}
    exec(PROMPT + completion, namespace)
    assert namespace["add"](1, 1) == 2


def test_extract_code_block_and_mbpp_postprocess():
    assert extract_code_block("text\n```python\nx = 1\n```\nmore\n```\ny = 2\n```") == "x = 1\n"
    assert extract_code_block("```js\nlet a\n```\n```\nz = 3\n```") == "z = 3\n"
    assert extract_code_block("```python\nunclosed = True\n") == "unclosed = True\n"
    assert extract_code_block("plain = 1") == "plain = 1"
    assert mbpp_postprocess("\ndef f():\r\n    return 1\n[DONE]\nextra") == "def f():\r\n    return 1\n"
    assert (
        mbpp_postprocess("[BEGIN]\n```python\ndef f():\n    return 2\n```\n[DONE]")
        == "def f():\n    return 2\n"
    )
    assert truncate_at_stop("abc[DONE]def", ["[DONE]", "c"]) == "ab"
