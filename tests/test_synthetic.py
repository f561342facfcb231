from __future__ import annotations

import random
import re
from functools import cache
from itertools import islice

import pytest

from dpad.synthetic import arith
from dpad.synthetic.arith import Problem, generate, iter_problems, parse_calculations, split_of

NUM_RE = re.compile(r"\d+")
ALL_NAMES = set(arith._FEMALE + arith._MALE)


@cache
def _problems(split: str, n: int, seed: int = 0) -> tuple[Problem, ...]:
    return tuple(generate(split, n, seed=seed))


def test_invalid_split() -> None:
    with pytest.raises(ValueError, match="train, validation, test"):
        generate("dev", 3)
    with pytest.raises(ValueError, match="valid splits"):
        next(iter_problems("eval"))


def test_generate_basic() -> None:
    probs = generate("train", 5)
    assert len(probs) == 5 and all(isinstance(p, Problem) for p in probs)
    assert generate("test", 0) == []
    with pytest.raises(AttributeError):
        probs[0].answer = 3  # type: ignore[misc]  # frozen


def test_determinism() -> None:
    a = generate("train", 100, seed=0)
    assert a == generate("train", 100, seed=0)
    assert a != generate("train", 100, seed=1)
    assert list(islice(iter_problems("train", seed=0), 100)) == a
    t = generate("test", 20, seed=3)
    assert t == generate("test", 20, seed=3)
    assert t != generate("test", 20, seed=4)


def test_splits_disjoint_by_construction() -> None:
    train = _problems("train", 2000)
    test = _problems("test", 2000)
    valid = _problems("validation", 300)
    tr_q = {p.question for p in train}
    te_q = {p.question for p in test}
    va_q = {p.question for p in valid}
    assert not tr_q & te_q
    assert not tr_q & va_q
    assert not te_q & va_q
    assert all(split_of(q) == "train" for q in tr_q)
    assert all(split_of(q) == "test" for q in te_q)
    assert all(split_of(q) == "validation" for q in va_q)
    # Questions are diverse: few exact duplicates inside a split.
    assert len(te_q) > 0.98 * len(test)


def test_split_of_is_stable_and_balanced() -> None:
    assert split_of("Mia has 3 apples.") == split_of("Mia has 3 apples.")
    rng = random.Random(0)
    counts = {s: 0 for s in arith.SPLITS}
    for _ in range(2000):
        counts[split_of(f"question {rng.random()}")] += 1
    assert counts["train"] > 1600
    assert counts["test"] > 40 and counts["validation"] > 40


def _check_problem(p: Problem) -> None:
    lines = p.solution.split("\n")
    assert lines[-1] == f"#### {p.answer}"
    steps = lines[:-1]
    assert 2 <= len(steps) <= 4, p.solution
    q_nums = [int(x) for x in NUM_RE.findall(p.question)]
    known = set(q_nums)
    last = None
    for i, line in enumerate(steps):
        calcs = parse_calculations(line)
        assert len(calcs) == 1, line
        a, op, b, c = calcs[0]
        if i == 0:
            # The first calculation copies its numbers from the question.
            assert a in q_nums and b in q_nums, (line, p.question)
        assert a in known and b in known, (line, p.question)
        if op == "+":
            assert a + b == c and a < 1000 and b < 1000 and 0 <= c <= 999
        elif op == "-":
            assert a - b == c and a < 1000 and b < 1000 and 0 <= c <= 999
        elif op == "*":
            assert a * b == c and c < 1000 and (2 <= a <= 12 or 2 <= b <= 12)
        else:
            assert op == "/" and 2 <= b <= 12 and a % b == 0 and a // b == c
        known.add(c)
        last = c
    assert last == p.answer
    assert p.answer >= 0
    # Names in the solution come from the question.
    q_names = set(re.findall(r"[A-Za-z]+", p.question)) & ALL_NAMES
    s_names = set(re.findall(r"[A-Za-z]+", p.solution)) & ALL_NAMES
    assert s_names <= q_names, (p.question, p.solution)


@pytest.mark.parametrize("split", ["train", "test"])
def test_solutions_are_correct(split: str) -> None:
    for p in _problems(split, 2000):
        _check_problem(p)


def test_every_template_is_valid() -> None:
    assert arith.num_templates() >= 20
    assert len(set(arith.template_names())) == arith.num_templates()
    steps_seen = set()
    for name, fn in arith._TEMPLATES.items():
        rng = random.Random(name)
        for _ in range(30):
            q, lines, ans = arith._sample_candidate(rng, fn)
            p = arith._make_problem(q, lines, ans)
            _check_problem(p)
            steps_seen.add(len(lines))
    assert steps_seen == {2, 3, 4}


def test_variety() -> None:
    assert len(ALL_NAMES) >= 40
    assert len(set(arith._OBJECTS)) >= 40
    probs = _problems("train", 2000)
    names = {w for p in probs for w in re.findall(r"[A-Za-z]+", p.question)} & ALL_NAMES
    assert len(names) >= 35
    objects = {w for p in probs for w in re.findall(r"[a-z]+", p.question)} & set(arith._OBJECTS)
    assert len(objects) >= 35
    st = arith.stats(probs)
    assert st["n"] == 2000
    assert 2.4 <= st["mean_steps"] <= 3.4
    assert st["max_answer"] <= 999 and st["min_answer"] >= 0


def test_vocabulary_words_cover_output() -> None:
    words = set(arith.vocabulary_words())
    for p in _problems("test", 2000):
        assert set(re.findall(r"[A-Za-z]+", p.question + " " + p.solution)) <= words
