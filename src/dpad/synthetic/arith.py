"""Synthetic grade-school word problems in GSM8K answer format.

Every problem is a short story with 2 to 4 reasoning steps.  The solution
writes one calculation per line, GSM8K style (``Mia buys 3*5=15 apples.``),
and ends with ``#### N``.  Arithmetic is kept small and regular so that a tiny
model can learn it:

* ``a+b=c`` / ``a-b=c``: operands below 1000, result in ``[0, 999]``;
* ``a*b=c``: one factor in ``2..12`` and the product below 1000;
* ``a/b=c``: exact division by a divisor in ``2..12``.

Each operand of a calculation appears in the question or is the result of an
earlier line, so the numbers must be copied from the question.

Splits are disjoint by construction: a candidate problem belongs to the split
that a stable hash of its question text selects (:func:`split_of`); a
generator for one split simply skips candidates of the other splits, so no
question text of the test split can ever be produced for training.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

__all__ = [
    "SPLITS",
    "Problem",
    "generate",
    "iter_problems",
    "split_of",
    "num_templates",
    "template_names",
    "vocabulary_words",
    "parse_calculations",
    "stats",
]

SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Share of the hash space (out of 100) given to each held-out split.
_TEST_BUCKETS = 5  # hash % 100 in [0, 5)   -> test
_VALID_BUCKETS = 5  # hash % 100 in [5, 10) -> validation


@dataclass(frozen=True)
class Problem:
    """One word problem: question text, step-by-step solution and the integer answer."""

    question: str
    solution: str
    answer: int


def split_of(question: str) -> str:
    """Return the split (``train``/``validation``/``test``) a question text belongs to."""
    digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % 100
    if bucket < _TEST_BUCKETS:
        return "test"
    if bucket < _TEST_BUCKETS + _VALID_BUCKETS:
        return "validation"
    return "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are {', '.join(SPLITS)}")


# ---------------------------------------------------------------------------
# Vocabulary of the stories
# ---------------------------------------------------------------------------

_FEMALE = (
    "Mia", "Emma", "Olivia", "Ava", "Sofia", "Lily", "Grace", "Chloe", "Zoe", "Nora",
    "Ella", "Ruby", "Anna", "Lucy", "Sara", "Maya", "Hannah", "Leah", "Julia", "Rosa",
)  # fmt: skip
_MALE = (
    "Leo", "Tom", "Sam", "Ben", "Max", "Jack", "Noah", "Liam", "Owen", "Luke",
    "Adam", "Ryan", "Eli", "Omar", "Ivan", "Hugo", "Finn", "Carl", "Dev", "Jose",
)  # fmt: skip

# Countable things (plural forms only; the stories never need the singular).
_OBJECTS = (
    "apples", "oranges", "pears", "bananas", "lemons", "peaches", "plums", "mangoes",
    "cherries", "cookies", "cupcakes", "muffins", "candies", "crackers", "marbles",
    "stickers", "pencils", "crayons", "markers", "erasers", "books", "cards", "stamps",
    "shells", "stones", "buttons", "beads", "balloons", "blocks", "coins", "flowers",
    "eggs", "nuts", "seeds", "feathers", "socks", "toys", "puzzles", "candles", "kites",
)  # fmt: skip
_BAKED = ("cookies", "cupcakes", "muffins", "brownies", "rolls", "pies", "tarts", "biscuits")
_PLANTS = ("carrots", "tulips", "roses", "potatoes", "tomatoes", "onions", "beans", "sunflowers", "peppers")
# (singular, plural)
_CONTAINERS = (
    ("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("pack", "packs"),
    ("crate", "crates"), ("jar", "jars"), ("tray", "trays"), ("bucket", "buckets"),
    ("carton", "cartons"), ("bowl", "bowls"), ("tin", "tins"), ("sack", "sacks"),
)  # fmt: skip
_THINGS = (
    "bike",
    "game",
    "lamp",
    "watch",
    "ball",
    "jacket",
    "backpack",
    "doll",
    "radio",
    "hat",
    "scarf",
    "clock",
)
_PLACES = ("zoo", "museum", "fair", "circus", "aquarium", "show", "concert", "park")
_INSTRUMENTS = ("piano", "guitar", "violin", "flute", "drums", "trumpet")
_PETS = (("dog", "dogs"), ("cat", "cats"), ("rabbit", "rabbits"), ("horse", "horses"), ("goat", "goats"))
_DISTANCE_UNITS = ("km", "miles")
_LENGTH_UNITS = ("cm", "meters", "inches")
_CORDS = ("ribbon", "rope", "string", "wire")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_RELATIVES = ("grandmother", "grandfather", "aunt", "uncle", "mother", "father")
_VEHICLES = ("bus", "train", "boat", "tram")
_SPORTS_UNITS = ("points", "goals", "baskets", "runs")

_FILLER_WORDS: tuple[str, ...] = (
    _FEMALE + _MALE + _OBJECTS + _BAKED + _PLANTS + tuple(w for pair in _CONTAINERS for w in pair)
    + _THINGS + _PLACES + _INSTRUMENTS + tuple(w for pair in _PETS for w in pair) + _DISTANCE_UNITS
    + _LENGTH_UNITS + _CORDS + _DAYS + _RELATIVES + _VEHICLES + _SPORTS_UNITS
)  # fmt: skip


class _Reject(Exception):
    """Raised by a template when a sampled instance breaks a constraint."""


@dataclass(frozen=True)
class _Person:
    name: str
    he: str  # "he" / "she"
    him: str  # "him" / "her"
    his: str  # "his" / "her"

    @property
    def He(self) -> str:
        return self.he.capitalize()

    @property
    def His(self) -> str:
        return self.his.capitalize()


_PEOPLE = tuple(_Person(n, "she", "her", "her") for n in _FEMALE) + tuple(
    _Person(n, "he", "him", "his") for n in _MALE
)


def _people(rng: random.Random, k: int) -> list[_Person]:
    return rng.sample(_PEOPLE, k)


def _calc(a: int, op: str, b: int) -> tuple[str, int]:
    """Compute ``a op b`` under the task's arithmetic rules; return ``("a op b=c", c)``."""
    if op == "+":
        c = a + b
        ok = a < 1000 and b < 1000 and 0 <= c <= 999
    elif op == "-":
        c = a - b
        ok = a < 1000 and b < 1000 and 0 <= c <= 999
    elif op == "*":
        c = a * b
        ok = (2 <= a <= 12 or 2 <= b <= 12) and a >= 1 and b >= 1 and c < 1000
    elif op == "/":
        ok = 2 <= b <= 12 and a % b == 0 and a > 0
        c = a // b
    else:  # pragma: no cover - programming error
        raise ValueError(op)
    if not ok:
        raise _Reject
    return f"{a}{op}{b}={c}", c


_Template = Callable[[random.Random], tuple[str, list[str], int]]
_TEMPLATES: dict[str, _Template] = {}


def _template(fn: _Template) -> _Template:
    _TEMPLATES[fn.__name__.lstrip("_")] = fn
    return fn


# ---------------------------------------------------------------------------
# Story templates.  Each returns (question, solution lines without the final
# "#### N" line, answer) or raises _Reject.
# ---------------------------------------------------------------------------


@_template
def _buy_bags_give(rng: random.Random) -> tuple[str, list[str], int]:
    n, m = _people(rng, 2)
    o = rng.choice(_OBJECTS)
    c1, cs = rng.choice(_CONTAINERS)
    a, b, c = rng.randint(2, 60), rng.randint(2, 9), rng.randint(2, 12)
    e1, x = _calc(b, "*", c)
    e2, y = _calc(a, "+", x)
    d = rng.randint(1, y - 1)
    e3, z = _calc(y, "-", d)
    q = (
        f"{n.name} has {a} {o}. {n.He} buys {b} {cs} with {c} {o} in each {c1}. "
        f"Then {n.he} gives {d} {o} to {m.name}. How many {o} does {n.name} have now?"
    )
    lines = [
        f"{n.name} buys {e1} {o}.",
        f"{n.He} has {e2} {o}.",
        f"After giving some away {n.he} has {e3} {o}.",
    ]
    return q, lines, z


@_template
def _shopping_change(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    o1, o2 = rng.sample(_OBJECTS, 2)
    a, p1 = rng.randint(2, 9), rng.randint(2, 12)
    b, p2 = rng.randint(2, 9), rng.randint(2, 12)
    e1, x = _calc(a, "*", p1)
    e2, y = _calc(b, "*", p2)
    e3, t = _calc(x, "+", y)
    r = rng.choice([r for r in (20, 50, 100, 200, 500) if r > t] or [999])
    e4, ch = _calc(r, "-", t)
    q = (
        f"{n.name} buys {a} {o1} for {p1} dollars each and {b} {o2} for {p2} dollars each. "
        f"{n.He} pays with {r} dollars. How many dollars of change does {n.he} get?"
    )
    lines = [
        f"The {o1} cost {e1} dollars.",
        f"The {o2} cost {e2} dollars.",
        f"In total {n.he} spends {e3} dollars.",
        f"{n.He} gets {e4} dollars in change.",
    ]
    return q, lines, ch


@_template
def _find_and_share(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    o = rng.choice(_OBJECTS)
    k, each = rng.randint(2, 12), rng.randint(2, 30)
    s = k * each
    a = rng.randint(1, s - 1)
    b = s - a
    e1, s = _calc(a, "+", b)
    e2, r = _calc(s, "/", k)
    q = (
        f"{n.name} has {a} {o}. {n.He} finds {b} more {o}. {n.He} shares all of them equally "
        f"among {k} friends. How many {o} does each friend get?"
    )
    lines = [f"{n.name} has {e1} {o} in total.", f"Each friend gets {e2} {o}."]
    return q, lines, r


@_template
def _reading(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    a, d = rng.randint(3, 40), rng.randint(2, 12)
    e1, x = _calc(a, "*", d)
    if rng.random() < 0.5:
        b = rng.randint(2, 40)
        e2, y = _calc(x, "+", b)
        t = y + rng.randint(5, 200)
        e3, z = _calc(t, "-", y)
        q = (
            f"{n.name} is reading a book with {t} pages. {n.He} reads {a} pages every day for {d} days. "
            f"Then {n.he} reads {b} more pages. How many pages are left to read?"
        )
        lines = [
            f"{n.name} reads {e1} pages in {d} days.",
            f"{n.He} has read {e2} pages.",
            f"There are {e3} pages left.",
        ]
    else:
        t = x + rng.randint(5, 200)
        e2, z = _calc(t, "-", x)
        q = (
            f"{n.name} is reading a book with {t} pages. {n.He} reads {a} pages every day for {d} days. "
            "How many pages are left to read?"
        )
        lines = [f"{n.name} reads {e1} pages in {d} days.", f"There are {e2} pages left."]
    return q, lines, z


@_template
def _garden_rows(rng: random.Random) -> tuple[str, list[str], int]:
    n, m = _people(rng, 2)
    pl = rng.choice(_PLANTS)
    r, c = rng.randint(2, 12), rng.randint(2, 20)
    e1, x = _calc(r, "*", c)
    k = rng.randint(2, 50)
    e2, y = _calc(x, "+", k)
    j = rng.randint(1, min(y - 1, 60))
    e3, z = _calc(y, "-", j)
    q = (
        f"{n.name} plants {r} rows of {pl} with {c} {pl} in each row. {m.name} plants {k} more {pl}. "
        f"Then rabbits eat {j} of the {pl}. How many {pl} are left in the garden?"
    )
    lines = [
        f"{n.name} plants {e1} {pl}.",
        f"Together they plant {e2} {pl}.",
        f"After the rabbits eat some there are {e3} {pl} left.",
    ]
    return q, lines, z


@_template
def _practice(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    ins = rng.choice(_INSTRUMENTS)
    a, d, w = rng.randint(5, 40), rng.randint(2, 7), rng.randint(2, 5)
    e1, x = _calc(a, "*", d)
    e2, y = _calc(x, "*", w)
    q = (
        f"{n.name} practices the {ins} for {a} minutes a day, {d} days a week. "
        f"How many minutes does {n.he} practice in {w} weeks?"
    )
    lines = [f"{n.name} practices {e1} minutes each week.", f"In {w} weeks {n.he} practices {e2} minutes."]
    return q, lines, y


@_template
def _saving(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    rel, thing = rng.choice(_RELATIVES), rng.choice(_THINGS)
    a, w = rng.randint(2, 50), rng.randint(2, 12)
    e1, x = _calc(a, "*", w)
    g = rng.randint(2, 60)
    e2, y = _calc(x, "+", g)
    b = rng.randint(1, y - 1)
    e3, z = _calc(y, "-", b)
    q = (
        f"{n.name} saves {a} dollars every week for {w} weeks. {n.His} {rel} gives {n.him} {g} dollars more. "
        f"Then {n.he} spends {b} dollars on a {thing}. How many dollars does {n.he} have left?"
    )
    lines = [
        f"{n.name} saves {e1} dollars.",
        f"With the gift {n.he} has {e2} dollars.",
        f"After buying the {thing} {n.he} has {e3} dollars left.",
    ]
    return q, lines, z


@_template
def _school_teams(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    g, s, t = rng.randint(2, 9), rng.randint(5, 30), rng.randint(2, 6)
    e1, x = _calc(g, "*", s)
    k = x % t + t * rng.randint(0, 3)
    if k < 1 or k >= x:
        raise _Reject
    e2, y = _calc(x, "-", k)
    e3, z = _calc(y, "/", t)
    q = (
        f"A school has {g} classes with {s} students in each class. {k} students are sick today. "
        f"Coach {n.name} puts the other students into teams of {t}. How many teams are there?"
    )
    lines = [
        f"The school has {e1} students.",
        f"Today {e2} students are at school.",
        f"Coach {n.name} makes {e3} teams.",
    ]
    return q, lines, z


@_template
def _baking_boxes(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    f = rng.choice(_BAKED)
    a, c, b = rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 12)
    e1, x = _calc(a, "*", c)
    e = x % b + b * rng.randint(0, 2)
    if e < 1:
        e = b
    e2, y = _calc(x, "-", e)
    if y < b:
        raise _Reject
    e3, z = _calc(y, "/", b)
    q = (
        f"{n.name} bakes {a} trays of {f} with {c} {f} on each tray. {n.He} eats {e} of them and puts "
        f"the rest into boxes of {b}. How many boxes does {n.he} fill?"
    )
    lines = [
        f"{n.name} bakes {e1} {f}.",
        f"After eating some {n.he} has {e2} {f} left.",
        f"{n.He} fills {e3} boxes.",
    ]
    return q, lines, z


@_template
def _three_friends(rng: random.Random) -> tuple[str, list[str], int]:
    n, m, k = _people(rng, 3)
    o = rng.choice(_OBJECTS)
    a, b, t = rng.randint(2, 50), rng.randint(2, 30), rng.randint(2, 5)
    e1, x = _calc(a, "+", b)
    e2, y = _calc(x, "*", t)
    e3, s = _calc(a, "+", x)
    e4, total = _calc(s, "+", y)
    q = (
        f"{n.name} has {a} {o}. {m.name} has {b} more {o} than {n.name}. {k.name} has {t} times as many "
        f"{o} as {m.name}. How many {o} do the three of them have in total?"
    )
    lines = [
        f"{m.name} has {e1} {o}.",
        f"{k.name} has {e2} {o}.",
        f"{n.name} and {m.name} have {e3} {o}.",
        f"Together they have {e4} {o}.",
    ]
    return q, lines, total


@_template
def _running(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    u = rng.choice(_DISTANCE_UNITS)
    a, b, d = rng.randint(1, 12), rng.randint(1, 12), rng.randint(2, 12)
    e1, x = _calc(a, "+", b)
    e2, y = _calc(x, "*", d)
    q = f"{n.name} runs {a} {u} every morning and {b} {u} every evening. How many {u} does {n.he} run in {d} days?"
    lines = [f"{n.name} runs {e1} {u} each day.", f"In {d} days {n.he} runs {e2} {u}."]
    return q, lines, y


@_template
def _shop_stock(rng: random.Random) -> tuple[str, list[str], int]:
    o = rng.choice(_OBJECTS)
    c1, cs = rng.choice(_CONTAINERS)
    a = rng.randint(40, 300)
    b = rng.randint(5, a // 3)
    e1, x = _calc(a, "-", b)
    c = rng.randint(5, x // 2)
    e2, y = _calc(x, "-", c)
    d, per = rng.randint(2, 9), rng.randint(2, 12)
    e3, w = _calc(d, "*", per)
    e4, z = _calc(y, "+", w)
    q = (
        f"A shop has {a} {o}. In the morning it sells {b} {o} and in the afternoon it sells {c} {o}. "
        f"Then a delivery brings {d} {cs} with {per} {o} in each {c1}. How many {o} does the shop have now?"
    )
    lines = [
        f"After the morning the shop has {e1} {o}.",
        f"After the afternoon it has {e2} {o}.",
        f"The delivery brings {e3} {o}.",
        f"Now the shop has {e4} {o}.",
    ]
    return q, lines, z


@_template
def _ribbon(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    cord, unit = rng.choice(_CORDS), rng.choice(_LENGTH_UNITS)
    k, piece = rng.randint(3, 12), rng.randint(2, 40)
    length = k * piece
    u = rng.randint(2, k - 1)
    e1, pc = _calc(length, "/", k)
    e2, used = _calc(pc, "*", u)
    e3, left = _calc(length, "-", used)
    q = (
        f"{n.name} has a {cord} that is {length} {unit} long. {n.He} cuts it into {k} equal pieces and uses "
        f"{u} pieces to wrap a gift. How many {unit} of {cord} does {n.he} have left?"
    )
    lines = [
        f"Each piece is {e1} {unit} long.",
        f"{n.He} uses {e2} {unit} of {cord}.",
        f"{n.He} has {e3} {unit} left.",
    ]
    return q, lines, left


@_template
def _ages_future(rng: random.Random) -> tuple[str, list[str], int]:
    n, m = _people(rng, 2)
    a, b, c = rng.randint(3, 40), rng.randint(2, 30), rng.randint(2, 20)
    e1, x = _calc(a, "+", b)
    e2, y = _calc(x, "+", c)
    q = f"{n.name} is {a} years old. {m.name} is {b} years older than {n.name}. How old will {m.name} be in {c} years?"
    lines = [f"{m.name} is {e1} years old now.", f"In {c} years {m.name} will be {e2} years old."]
    return q, lines, y


@_template
def _ages_times(rng: random.Random) -> tuple[str, list[str], int]:
    n, m, k = _people(rng, 3)
    a = rng.randint(8, 60)
    b = rng.randint(1, a - 2)
    t = rng.randint(2, 6)
    e1, x = _calc(a, "-", b)
    e2, y = _calc(x, "*", t)
    q = (
        f"{n.name} is {a} years old. {m.name} is {b} years younger than {n.name}. "
        f"{k.name} is {t} times as old as {m.name}. How old is {k.name}?"
    )
    lines = [f"{m.name} is {e1} years old.", f"{k.name} is {e2} years old."]
    return q, lines, y


@_template
def _wheels(rng: random.Random) -> tuple[str, list[str], int]:
    (big1, bigs), big_w = rng.choice(((("car", "cars"), 4), (("truck", "trucks"), 6)))
    (small1, smalls), small_w = rng.choice(((("bike", "bikes"), 2), (("tricycle", "tricycles"), 3)))
    c, b = rng.randint(2, 60), rng.randint(2, 60)
    e1, x = _calc(c, "*", big_w)
    e2, y = _calc(b, "*", small_w)
    e3, z = _calc(x, "+", y)
    q = (
        f"A parking lot has {c} {bigs} and {b} {smalls}. Each {big1} has {big_w} wheels and each "
        f"{small1} has {small_w} wheels. How many wheels are in the parking lot?"
    )
    lines = [
        f"The {bigs} have {e1} wheels.",
        f"The {smalls} have {e2} wheels.",
        f"There are {e3} wheels in total.",
    ]
    return q, lines, z


@_template
def _collecting(rng: random.Random) -> tuple[str, list[str], int]:
    n, m = _people(rng, 2)
    o = rng.choice(_OBJECTS)
    i = rng.randint(0, len(_DAYS) - 3)
    d1, d2, d3 = _DAYS[i : i + 3]
    a, k = rng.randint(2, 40), rng.randint(2, 5)
    e1, x = _calc(a, "*", k)
    e2, s = _calc(a, "+", x)
    g = rng.randint(1, s - 1)
    e3, z = _calc(s, "-", g)
    q = (
        f"{n.name} collects {a} {o} on {d1} and {k} times as many {o} on {d2}. On {d3} {n.he} gives "
        f"{g} {o} to {m.name}. How many {o} does {n.name} have left?"
    )
    lines = [
        f"On {d2} {n.name} collects {e1} {o}.",
        f"{n.He} collects {e2} {o} in total.",
        f"After giving some to {m.name} {n.he} has {e3} {o} left.",
    ]
    return q, lines, z


@_template
def _bus_stops(rng: random.Random) -> tuple[str, list[str], int]:
    v = rng.choice(_VEHICLES)
    a = rng.randint(10, 80)
    b = rng.randint(1, a - 1)
    e1, x = _calc(a, "-", b)
    c = rng.randint(1, 40)
    e2, y = _calc(x, "+", c)
    d = rng.randint(1, y - 1)
    e3, z = _calc(y, "-", d)
    q = (
        f"A {v} has {a} passengers. At the first stop {b} people get off and {c} people get on. "
        f"At the second stop {d} people get off. How many passengers are on the {v} now?"
    )
    lines = [
        f"After some people get off there are {e1} passengers.",
        f"After some people get on there are {e2} passengers.",
        f"After the second stop there are {e3} passengers.",
    ]
    return q, lines, z


@_template
def _party_bags(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    o1, o2 = rng.sample(_OBJECTS, 2)
    k, a, b = rng.randint(2, 12), rng.randint(1, 9), rng.randint(1, 9)
    e1, x = _calc(a, "+", b)
    e2, y = _calc(x, "*", k)
    h = rng.randint(1, y - 1)
    e3, z = _calc(y, "-", h)
    q = (
        f"{n.name} is making party bags for {k} friends. Each bag gets {a} {o1} and {b} {o2}. "
        f"{n.He} already has {h} items. How many more items does {n.he} need?"
    )
    lines = [
        f"Each bag has {e1} items.",
        f"For all the bags {n.he} needs {e2} items.",
        f"{n.He} needs {e3} more items.",
    ]
    return q, lines, z


@_template
def _weekend_pay(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    thing = rng.choice(_THINGS)
    r, h, g = rng.randint(5, 20), rng.randint(2, 6), rng.randint(2, 6)
    e1, x = _calc(h, "+", g)
    e2, y = _calc(x, "*", r)
    s = rng.randint(1, y - 1)
    e3, z = _calc(y, "-", s)
    q = (
        f"{n.name} earns {r} dollars an hour. {n.He} works {h} hours on Saturday and {g} hours on Sunday. "
        f"Then {n.he} spends {s} dollars on a {thing}. How many dollars does {n.he} have left?"
    )
    lines = [f"{n.name} works {e1} hours.", f"{n.He} earns {e2} dollars.", f"{n.He} has {e3} dollars left."]
    return q, lines, z


@_template
def _tickets(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    place = rng.choice(_PLACES)
    a, c = rng.randint(5, 30), rng.randint(2, 12)
    x, y = rng.randint(2, 9), rng.randint(2, 9)
    e1, u = _calc(x, "*", a)
    e2, v = _calc(y, "*", c)
    e3, t = _calc(u, "+", v)
    lines = [
        f"The adult tickets cost {e1} dollars.",
        f"The child tickets cost {e2} dollars.",
        f"{n.name} spends {e3} dollars.",
    ]
    if rng.random() < 0.5:
        q = (
            f"Tickets to the {place} cost {a} dollars for adults and {c} dollars for children. "
            f"{n.name} buys {x} adult tickets and {y} child tickets. How many dollars does {n.he} spend?"
        )
        return q, lines, t
    m = t + rng.randint(1, 150)
    e4, z = _calc(m, "-", t)
    q = (
        f"{n.name} has {m} dollars. Tickets to the {place} cost {a} dollars for adults and {c} dollars for "
        f"children. {n.He} buys {x} adult tickets and {y} child tickets. How many dollars does {n.he} have left?"
    )
    lines.append(f"{n.He} has {e4} dollars left.")
    return q, lines, z


@_template
def _repack(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    o = rng.choice(_OBJECTS)
    (c1, cs), (d1, ds) = rng.sample(_CONTAINERS, 2)
    j, w = rng.randint(2, 12), rng.randint(2, 20)
    e1, x = _calc(j, "*", w)
    divisors = [b for b in range(2, 13) if x % b == 0 and b != j]
    if not divisors:
        raise _Reject
    b = rng.choice(divisors)
    e2, y = _calc(x, "/", b)
    q = (
        f"{n.name} fills {j} {cs} with {w} {o} in each {c1}. Then {n.he} puts all the {o} into {b} {ds} "
        f"with the same number in each {d1}. How many {o} are in each {d1}?"
    )
    lines = [f"{n.name} has {e1} {o}.", f"Each {d1} gets {e2} {o}."]
    return q, lines, y


@_template
def _pet_food(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    pet, pets = rng.choice(_PETS)
    d, a, w = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 12)
    e1, x = _calc(a, "*", d)
    e2, y = _calc(x, "*", w)
    q = f"{n.name} has {d} {pets}. Each {pet} eats {a} cups of food a day. How many cups of food do the {pets} eat in {w} days?"
    lines = [f"The {pets} eat {e1} cups each day.", f"In {w} days they eat {e2} cups."]
    return q, lines, y


@_template
def _library(rng: random.Random) -> tuple[str, list[str], int]:
    s, b = rng.randint(2, 12), rng.randint(5, 60)
    e1, x = _calc(s, "*", b)
    k = rng.randint(1, x - 1)
    e2, y = _calc(x, "-", k)
    r = rng.randint(1, k)
    e3, z = _calc(y, "+", r)
    day = rng.choice(_DAYS)
    q = (
        f"A library has {s} shelves with {b} books on each shelf. On {day} {k} books are borrowed and "
        f"{r} books are returned. How many books are on the shelves now?"
    )
    lines = [
        f"The library has {e1} books.",
        f"After the loans there are {e2} books.",
        f"After the returns there are {e3} books.",
    ]
    return q, lines, z


@_template
def _chores(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    a, b, c, d = rng.randint(5, 40), rng.randint(5, 40), rng.randint(5, 40), rng.randint(2, 7)
    e1, x = _calc(a, "+", b)
    e2, y = _calc(x, "+", c)
    e3, z = _calc(y, "*", d)
    q = (
        f"Every day {n.name} spends {a} minutes washing dishes, {b} minutes cleaning {n.his} room and "
        f"{c} minutes walking the dog. How many minutes does {n.he} spend on chores in {d} days?"
    )
    lines = [
        f"{n.name} spends {e1} minutes on dishes and cleaning.",
        f"Each day {n.he} spends {e2} minutes on chores.",
        f"In {d} days {n.he} spends {e3} minutes.",
    ]
    return q, lines, z


@_template
def _at_the_start(rng: random.Random) -> tuple[str, list[str], int]:
    n, m = _people(rng, 2)
    o = rng.choice(_OBJECTS)
    s, b = rng.randint(2, 80), rng.randint(2, 40)
    c = rng.randint(1, s + b - 1)
    e = s + b - c
    e1, x = _calc(e, "+", c)
    e2, start = _calc(x, "-", b)
    q = (
        f"{n.name} buys {b} {o} and then gives {c} {o} to {m.name}. Now {n.he} has {e} {o}. "
        f"How many {o} did {n.name} have at the start?"
    )
    lines = [f"Before giving some away {n.name} had {e1} {o}.", f"At the start {n.he} had {e2} {o}."]
    return q, lines, start


@_template
def _pizza(rng: random.Random) -> tuple[str, list[str], int]:
    n, m = _people(rng, 2)
    p, s = rng.randint(2, 9), rng.randint(4, 12)
    e1, x = _calc(p, "*", s)
    a = rng.randint(1, max(1, x // 3))
    b = rng.randint(1, max(1, x // 3))
    e2, y = _calc(a, "+", b)
    e3, z = _calc(x, "-", y)
    q = (
        f"{n.name} orders {p} pizzas and each pizza is cut into {s} slices. {n.name} eats {a} slices and "
        f"{m.name} eats {b} slices. How many slices are left?"
    )
    lines = [
        f"There are {e1} slices.",
        f"{n.name} and {m.name} eat {e2} slices.",
        f"There are {e3} slices left.",
    ]
    return q, lines, z


@_template
def _piles(rng: random.Random) -> tuple[str, list[str], int]:
    n, m = _people(rng, 2)
    o = rng.choice(_OBJECTS)
    k, per = rng.randint(3, 12), rng.randint(2, 30)
    a = k * per
    t = rng.randint(2, k - 1)
    e1, x = _calc(a, "/", k)
    e2, y = _calc(x, "*", t)
    q = (
        f"{n.name} has {a} {o}. {n.He} puts them into {k} equal piles. {m.name} takes {t} of the piles. "
        f"How many {o} does {m.name} take?"
    )
    lines = [f"Each pile has {e1} {o}.", f"{m.name} takes {e2} {o}."]
    return q, lines, y


@_template
def _water_tank(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    b, liters = rng.randint(2, 12), rng.randint(2, 20)
    e1, x = _calc(b, "*", liters)
    leak = rng.randint(1, x - 1)
    e2, y = _calc(x, "-", leak)
    cap = y + rng.randint(5, 200)
    e3, z = _calc(cap, "-", y)
    q = (
        f"A tank holds {cap} liters of water. {n.name} pours in {b} buckets with {liters} liters in each bucket, "
        f"but {leak} liters leak out. How many more liters are needed to fill the tank?"
    )
    lines = [
        f"{n.name} pours in {e1} liters.",
        f"After the leak the tank has {e2} liters.",
        f"The tank needs {e3} more liters.",
    ]
    return q, lines, z


@_template
def _game_scores(rng: random.Random) -> tuple[str, list[str], int]:
    n, m = _people(rng, 2)
    unit = rng.choice(_SPORTS_UNITS)
    a, g = rng.randint(2, 30), rng.randint(2, 12)
    e1, x = _calc(a, "*", g)
    bonus = rng.randint(1, 30)
    e2, y = _calc(x, "+", bonus)
    b = rng.randint(1, y - 1)
    e3, z = _calc(y, "-", b)
    q = (
        f"{n.name} scores {a} {unit} in each of {g} games and gets {bonus} bonus {unit}. {m.name} scores {b} "
        f"{unit} in total. How many more {unit} does {n.name} score than {m.name}?"
    )
    lines = [
        f"{n.name} scores {e1} {unit} in the games.",
        f"With the bonus {n.name} has {e2} {unit}.",
        f"{n.name} scores {e3} more {unit} than {m.name}.",
    ]
    return q, lines, z


@_template
def _fruit_sale(rng: random.Random) -> tuple[str, list[str], int]:
    (n,) = _people(rng, 1)
    o = rng.choice(_OBJECTS)
    c1, cs = rng.choice(_CONTAINERS)
    b, per, price = rng.randint(2, 9), rng.randint(2, 12), rng.randint(2, 9)
    e1, x = _calc(b, "*", per)
    kept = rng.randint(1, x - 1)
    e2, y = _calc(x, "-", kept)
    e3, z = _calc(y, "*", price)
    lines = [
        f"{n.name} picks {e1} {o}.",
        f"{n.He} sells {e2} {o}.",
        f"{n.He} makes {e3} dollars.",
    ]
    if rng.random() < 0.5:
        q = (
            f"{n.name} picks {b} {cs} of {o} with {per} {o} in each {c1}. {n.He} keeps {kept} {o} and sells "
            f"the rest for {price} dollars each. How many dollars does {n.he} make?"
        )
        return q, lines, z
    cost = rng.randint(1, z - 1)
    e4, w = _calc(z, "-", cost)
    q = (
        f"{n.name} picks {b} {cs} of {o} with {per} {o} in each {c1}. {n.He} keeps {kept} {o} and sells "
        f"the rest for {price} dollars each. Then {n.he} pays {cost} dollars for a new {c1}. "
        f"How many dollars does {n.he} have now?"
    )
    lines.append(f"After paying for the {c1} {n.he} has {e4} dollars.")
    return q, lines, w


# ---------------------------------------------------------------------------
# Validation and public API
# ---------------------------------------------------------------------------

_NUM_RE = re.compile(r"\d+")
_CALC_RE = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")
_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b,
}


def parse_calculations(solution: str) -> list[tuple[int, str, int, int]]:
    """Return every ``a op b=c`` calculation in a solution text as ``(a, op, b, c)``."""
    return [(int(a), op, int(b), int(c)) for a, op, b, c in _CALC_RE.findall(solution)]


def _validate(question: str, lines: list[str], answer: int) -> None:
    """Internal consistency check of one rendered problem (a failure is a template bug)."""
    known = {int(x) for x in _NUM_RE.findall(question)}
    if not 2 <= len(lines) <= 4:
        raise AssertionError(f"bad step count: {lines}")
    last = None
    for line in lines:
        calcs = parse_calculations(line)
        if len(calcs) != 1:
            raise AssertionError(f"expected one calculation in {line!r}")
        a, op, b, c = calcs[0]
        if a not in known or b not in known:
            raise AssertionError(f"operand not in question or earlier steps: {line!r} / {question!r}")
        if _OPS[op](a, b) != c or (op == "/" and a % b):
            raise AssertionError(f"wrong arithmetic: {line!r}")
        known.add(c)
        last = c
    if last != answer:
        raise AssertionError("answer is not the last computed value")


def _sample_candidate(rng: random.Random, template: _Template | None = None) -> tuple[str, list[str], int]:
    templates = list(_TEMPLATES.values())
    while True:
        fn = template if template is not None else templates[rng.randrange(len(templates))]
        try:
            return fn(rng)
        except _Reject:
            continue


def _make_problem(question: str, lines: list[str], answer: int) -> Problem:
    _validate(question, lines, answer)
    return Problem(question=question, solution="\n".join([*lines, f"#### {answer}"]), answer=answer)


def iter_problems(split: str, seed: int = 0) -> Iterator[Problem]:
    """Infinite, deterministic stream of problems of one split."""
    _check_split(split)
    # the seed string keeps the package's former name so the splits stay the same problems
    rng = random.Random(f"dpad.tasks.arith:{split}:{seed}")
    while True:
        question, lines, answer = _sample_candidate(rng)
        if split_of(question) != split:
            continue
        yield _make_problem(question, lines, answer)


def generate(split: str, n: int, seed: int = 0) -> list[Problem]:
    """The first ``n`` problems of ``iter_problems(split, seed)``."""
    _check_split(split)
    if n < 0:
        raise ValueError("n must be non-negative")
    it = iter_problems(split, seed)
    return [next(it) for _ in range(n)]


def num_templates() -> int:
    """Number of distinct story templates."""
    return len(_TEMPLATES)


def template_names() -> list[str]:
    return list(_TEMPLATES)


def vocabulary_words(samples_per_template: int = 200) -> list[str]:
    """Every word (maximal run of ASCII letters) the generator can emit, sorted.

    The union of all filler words (names, objects, units, ...) and the fixed words
    of each template, collected by rendering every template many times with a
    fixed seed (so every branch is visited).
    """
    words = set(_FILLER_WORDS)
    for name, fn in _TEMPLATES.items():
        rng = random.Random(f"vocab:{name}")
        for _ in range(samples_per_template):
            q, lines, _ = _sample_candidate(rng, fn)
            words.update(re.findall(r"[A-Za-z]+", q))
            for line in lines:
                words.update(re.findall(r"[A-Za-z]+", line))
    # Pronouns appear capitalised at the start of sentences.
    for w in ("she", "he", "her", "his", "him"):
        words.update((w, w.capitalize()))
    return sorted(words)


def stats(problems: Iterable[Problem]) -> dict[str, float]:
    """Summary statistics: count, mean question/solution characters, step histogram, answer range."""
    probs = list(problems)
    if not probs:
        return {"n": 0}
    steps = Counter(len(p.solution.split("\n")) - 1 for p in probs)
    out: dict[str, float] = {
        "n": len(probs),
        "mean_question_chars": sum(len(p.question) for p in probs) / len(probs),
        "mean_solution_chars": sum(len(p.solution) for p in probs) / len(probs),
        "mean_steps": sum(k * v for k, v in steps.items()) / len(probs),
        "min_answer": min(p.answer for p in probs),
        "max_answer": max(p.answer for p in probs),
    }
    for k in sorted(steps):
        out[f"frac_steps_{k}"] = steps[k] / len(probs)
    return out
