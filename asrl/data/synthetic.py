"""Deterministic synthetic training records in the thinking format, with verifiable answers.

Every record is a plain JSON-able dict::

    {"id": str, "prompt": str, "response": str, "answer": str, "type": str}

or, for multi-turn records, ``"messages"`` (the conversation before the final assistant reply)
instead of ``"prompt"``. ``answer`` is the bare ground truth and is exactly the text that
follows the thinking block in ``response``, so correctness can be scored automatically.

Record ``index`` depends only on ``(seed, mix, index)``, so a generator that appends records
can resume at ``start`` and reproduce the same stream. Responses are kept short (a tiny model
trains on them on CPU) and all tags come from the :class:`ThinkingFormat`, never literals.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from fractions import Fraction

from asrl.data.format import ThinkingFormat

Maker = Callable[[random.Random, ThinkingFormat], dict]

_NAMES = ["Sara", "Tom", "Mia", "Leo", "Ana", "Ben", "Zoe", "Max", "Eva", "Sam"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "coins"]
_WORDS = [
    "banana", "apple", "letter", "coffee", "balloon", "pepper", "cherry", "hello", "tomato",
    "rabbit", "summer", "bottle", "little", "paper", "sheep", "kitten", "butter", "yellow",
]  # fmt: skip
_CATEGORIES = {
    "fruits": ["apple", "pear", "plum", "grape", "lemon", "mango", "peach", "kiwi"],
    "animals": ["dog", "cat", "horse", "mouse", "lion", "goat", "duck", "frog"],
    "colors": ["red", "blue", "green", "pink", "black", "white", "brown", "gray"],
}
_UNITS = [  # (small unit, big unit, factor, denominators giving clean values)
    ("meters", "kilometers", 1000, (1, 2, 4, 10)),
    ("grams", "kilograms", 1000, (1, 2, 4, 10)),
    ("minutes", "hours", 60, (1, 2, 4)),
    ("centimeters", "meters", 100, (1, 2, 4, 10)),
]
_DIRECT = ("Answer with just the number, no thinking.", "No thinking, reply with only the number.")
_PERCENTS = [5, 10, 15, 20, 25, 30, 40, 50, 60, 75]


def format_number(x: int | float | Fraction) -> str:
    """Canonical text of a number: ``42``, ``2.5``, ``0.75`` (no trailing zeros, no ``-0``)."""
    if isinstance(x, int):
        return str(x)
    if float(x).is_integer():
        return str(int(x))
    s = f"{float(x):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def _think(fmt: ThinkingFormat, logic: str, gut: str, answer: str) -> str:
    """Render a thinking response: logic, gut check, then short restatements for extra sections."""
    n = len(fmt.sections)
    texts = [logic, gut][:n] + [f"The answer is {answer}."] * max(0, n - 2)
    return fmt.render(texts, answer)


def _gut(v: int) -> str:
    """A brief magnitude check for an integer result."""
    if v < 10:
        return "A small number, under 10."
    step = 10 if v < 200 else 100
    r = (v + step // 2) // step * step
    if v == r:
        return f"Exactly {r}, a round number."
    return f"About {r}, a bit {'more' if v > r else 'less'}."


def _unit(plural: str, value: int | Fraction) -> str:
    return plural[:-1] if value == 1 else plural


def _rec(
    fmt: ThinkingFormat, prompt: str | list[dict], logic: str, gut: str, ans: int | str, kind: str
) -> dict:
    """A thinking-format record; ``prompt`` may be a message list (multi-turn)."""
    answer = ans if isinstance(ans, str) else format_number(ans)
    key = "prompt" if isinstance(prompt, str) else "messages"
    return {
        key: prompt,
        "response": _think(fmt, logic, gut, answer),
        "answer": answer,
        "type": kind,
    }


def arithmetic(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """``What is 17 + 25?`` with small operands (+, -, ×)."""
    op = rng.choice("+-×")
    if op == "+":
        a, b = rng.randint(10, 60), rng.randint(5, 40)
        v = a + b
    elif op == "-":
        a = rng.randint(20, 99)
        b = rng.randint(5, a - 1)
        v = a - b
    else:
        a, b = rng.randint(2, 12), rng.randint(3, 15)
        v = a * b
    return _rec(fmt, f"What is {a} {op} {b}?", f"{a} {op} {b} = {v}", _gut(v), v, "simple")


def comparison(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """``Which is larger, 37 or 52?``, the smaller variant, or a yes/no question."""
    a, b = rng.sample(range(10, 100), 2)
    hi, lo = max(a, b), min(a, b)
    form = rng.randrange(3)
    if form == 0:
        prompt, ans, gut = f"Which is larger, {a} or {b}?", hi, f"{hi} is the bigger one."
    elif form == 1:
        prompt, ans, gut = f"Which is smaller, {a} or {b}?", lo, f"{lo} is the smaller one."
    else:
        prompt, ans = f"Is {a} larger than {b}?", "yes" if a > b else "no"
        gut = f"{hi} is the bigger one."
    return _rec(fmt, prompt, f"{lo} < {hi}" if form == 1 else f"{hi} > {lo}", gut, ans, "simple")


def counting(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """Count a letter in a short word, or the items of one category in a short list."""
    if rng.random() < 0.5:
        word = rng.choice(_WORDS)
        letter = rng.choice(sorted(set(word)))
        pos = [str(i + 1) for i, c in enumerate(word) if c == letter]
        prompt = f'How many times does the letter "{letter}" appear in "{word}"?'
        logic = f"{letter} at position{'s' if len(pos) > 1 else ''} {', '.join(pos)}, so {len(pos)}"
        gut = "Just once." if len(pos) == 1 else f"{len(pos)} fits a {len(word)}-letter word."
        return _rec(fmt, prompt, logic, gut, len(pos), "simple")
    cat, other = rng.sample(sorted(_CATEGORIES), 2)
    hits = rng.sample(_CATEGORIES[cat], rng.randint(1, 5))
    extra = rng.sample(_CATEGORIES[other], rng.randint(0, 2))
    items = hits + extra
    rng.shuffle(items)
    kept = [x for x in items if x in hits]
    prompt = f"How many {cat} are in this list: {', '.join(items)}?"
    logic = f"{cat.capitalize()}: {', '.join(kept)} = {len(kept)}"
    gut = "Only one." if len(kept) == 1 else f"{len(kept)} of the {len(items)} items."
    return _rec(fmt, prompt, logic, gut, len(kept), "simple")


def unit_conversion(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """m<->km, g<->kg, minutes<->hours, cm<->m with clean values."""
    small_u, big_u, factor, dens = rng.choice(_UNITS)
    d = rng.choice(dens)
    big = Fraction(rng.randint(1, 5 * d), d)
    small, b = int(big * factor), format_number(big)
    if rng.random() < 0.5:
        prompt = f"How many {big_u} is {small} {_unit(small_u, small)}?"
        logic, gut, ans = f"{small} / {factor} = {b}", "Bigger unit, so a smaller number.", b
    else:
        prompt = f"How many {small_u} is {b} {_unit(big_u, big)}?"
        logic, gut, ans = f"{b} × {factor} = {small}", "Smaller unit, so a bigger number.", small
    return _rec(fmt, prompt, logic, gut, ans, "simple")


def multi_step(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """Two or three chained operations, e.g. ``Compute (12 + 8) × 3.``"""
    form = rng.randrange(5)
    if form == 0:
        a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 5)
        expr, steps, v = f"({a} + {b}) × {c}", [f"{a} + {b} = {a + b}"], (a + b) * c
        steps.append(f"{a + b} × {c} = {v}")
    elif form == 1:
        a, b, c = rng.randint(2, 12), rng.randint(2, 9), rng.randint(1, 30)
        expr, v = f"{a} × {b} + {c}", a * b + c
        steps = [f"{a} × {b} = {a * b}", f"{a * b} + {c} = {v}"]
    elif form == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        c = rng.randint(1, a * b - 1)
        expr, v = f"{a} × {b} - {c}", a * b - c
        steps = [f"{a} × {b} = {a * b}", f"{a * b} - {c} = {v}"]
    elif form == 3:
        c, q = rng.randint(2, 6), rng.randint(2, 10)
        a = rng.randint(1, c * q - 1)
        b = c * q - a
        expr, v = f"({a} + {b}) / {c}", q
        steps = [f"{a} + {b} = {a + b}", f"{a + b} / {c} = {q}"]
    else:
        a, b, c = rng.randint(2, 15), rng.randint(2, 15), rng.randint(2, 4)
        m = (a + b) * c
        d = rng.randint(1, m - 1)
        expr, v = f"({a} + {b}) × {c} - {d}", m - d
        steps = [f"{a} + {b} = {a + b}", f"{a + b} × {c} = {m}", f"{m} - {d} = {v}"]
    return _rec(fmt, f"Compute {expr}.", "; ".join(steps), _gut(v), v, "complex")


def word_problem(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """A one-sentence story problem with a number or a name as the answer."""
    name, name2 = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    form = rng.randrange(6)
    if form == 0:
        a = rng.randint(8, 40)
        b = rng.randint(1, a - 1)
        prompt = f"{name} has {a} {item} and gives away {b}. How many are left?"
        logic, gut, v = f"{a} - {b} = {a - b}", f"Less than {a}, makes sense.", a - b
    elif form == 1:
        a, b = rng.randint(5, 40), rng.randint(2, 30)
        prompt = f"{name} has {a} {item} and buys {b} more. How many does {name} have now?"
        logic, gut, v = f"{a} + {b} = {a + b}", f"More than {a}, makes sense.", a + b
    elif form == 2:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        prompt = f"{name} buys {a} bags with {b} {item} each. How many {item} in total?"
        logic, gut, v = f"{a} × {b} = {a * b}", _gut(a * b), a * b
    elif form == 3:
        a, b = rng.randint(2, 12), rng.randint(2, 6)
        prompt = f"{name} shares {a * b} {item} equally among {b} friends. How many does each get?"
        logic, gut, v = f"{a * b} / {b} = {a}", f"{a} × {b} = {a * b}, checks out.", a
    elif form == 4:
        s, h = rng.choice([30, 40, 50, 60, 70, 80]), rng.randint(2, 5)
        prompt = f"A car drives {s} km per hour for {h} hours. How many km does it travel?"
        logic, gut, v = f"{s} × {h} = {s * h}", _gut(s * h), s * h
    else:
        a, b = rng.sample(range(3, 40), 2)
        prompt = f"{name} has {a} {item} and {name2} has {b}. Who has more?"
        v, lo, hi = (name, b, a) if a > b else (name2, a, b)
        logic, gut = f"{hi} > {lo}", f"{v} has more."
    return _rec(fmt, prompt, logic, gut, v, "complex")


def multi_turn(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """User states a fact, the assistant acknowledges, the user asks a follow-up."""
    item = rng.choice(_ITEMS)
    form = rng.randrange(4)
    a = rng.randint(8, 40)
    if form == 0:
        b = rng.randint(2, 20)
        fact, ack, ask = f"I have {a} {item}.", f"Got it, {a} {item}.", f"I buy {b} more."
        ask += " How many do I have now?"
        logic, gut, v = f"{a} + {b} = {a + b}", f"More than {a}, makes sense.", a + b
    elif form == 1:
        b = rng.randint(1, a - 1)
        fact, ack, ask = f"I have {a} {item}.", f"Got it, {a} {item}.", f"I give {b} to a friend."
        ask += " How many are left?"
        logic, gut, v = f"{a} - {b} = {a - b}", f"Fewer than {a}, makes sense.", a - b
    elif form == 2:
        a, d = rng.randint(2, 15), rng.randint(2, 7)
        fact, ack = f"I read {a} pages a day.", f"Nice, {a} pages a day."
        ask = f"How many pages do I read in {d} days?"
        logic, gut, v = f"{a} × {d} = {a * d}", _gut(a * d), a * d
    else:
        n1, n2 = rng.sample(_NAMES, 2)
        a, b = rng.sample(range(3, 40), 2)
        fact = f"My sister {n1} is {a} and my brother {n2} is {b}."
        ack, ask = f"Noted, {n1} is {a} and {n2} is {b}.", "Who is older?"
        v, hi, lo = (n1, a, b) if a > b else (n2, b, a)
        logic, gut = f"{hi} > {lo}", f"{v} is older."
    turns = [("user", fact), ("assistant", ack), ("user", ask)]
    return _rec(fmt, [{"role": r, "content": c} for r, c in turns], logic, gut, v, "multi_turn")


_SIMPLE = ["arithmetic", "comparison", "counting", "unit_conversion"]


def direct(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """A simple question that asks for no reasoning; the response is only the bare answer."""
    rec = PATTERNS[rng.choice(_SIMPLE)](rng, fmt)
    yes_no = rec["answer"] in ("yes", "no")
    suffix = "Answer with just yes or no, no thinking." if yes_no else rng.choice(_DIRECT)
    ans = rec["answer"]
    return {"prompt": f"{rec['prompt']} {suffix}", "response": ans, "answer": ans, "type": "mixed"}


def mixed_thinking(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """An ordinary thinking-format simple record, typed ``mixed`` (the mix's thinking half)."""
    return {**PATTERNS[rng.choice(_SIMPLE)](rng, fmt), "type": "mixed"}


def percent(rng: random.Random, fmt: ThinkingFormat) -> dict:
    """``What is 25% of 80?`` with whole-number results (a pattern not in the paper mix)."""
    p = rng.choice(_PERCENTS)
    step = Fraction(p, 100).denominator  # smallest n giving a whole result
    n = step * rng.randint(max(1, 10 // step), max(1, 200 // step))
    v = n * p // 100
    half = "Exactly half." if p == 50 else f"{'Less' if p < 50 else 'More'} than half of {n}."
    return _rec(fmt, f"What is {p}% of {n}?", f"{n} × {p} / 100 = {v}", half, v, "new_pattern")


PATTERNS: dict[str, Maker] = {
    "arithmetic": arithmetic,
    "comparison": comparison,
    "counting": counting,
    "unit_conversion": unit_conversion,
    "multi_step": multi_step,
    "word_problem": word_problem,
    "multi_turn": multi_turn,
    "direct": direct,
    "mixed_thinking": mixed_thinking,
    "percent": percent,
}

MIXES: dict[str, list[tuple[str, float]]] = {
    "paper": [(p, 0.30 / 4) for p in _SIMPLE]
    + [("multi_step", 0.125), ("word_problem", 0.125), ("multi_turn", 0.20)]
    + [("direct", 0.125), ("mixed_thinking", 0.125)],
    **{name: [(name, 1.0)] for name in PATTERNS},
}


def _check_mix(mix: str) -> list[tuple[str, float]]:
    if mix not in MIXES:
        raise ValueError(f"unknown mix {mix!r}; known mixes: {', '.join(sorted(MIXES))}")
    return MIXES[mix]


def make_record(seed: int, index: int, fmt: ThinkingFormat, mix: str = "paper") -> dict:
    """Record ``index`` of the stream ``(seed, mix)``; depends on nothing else."""
    weights = _check_mix(mix)
    rng = random.Random(f"{seed}:{mix}:{index}")
    x = rng.random() * sum(w for _, w in weights)
    name = weights[-1][0]
    for pattern, w in weights:
        if x < w:
            name = pattern
            break
        x -= w
    return {"id": f"syn-{mix}-{seed}-{index}", **PATTERNS[name](rng, fmt)}


def generate_records(
    n: int,
    seed: int = 0,
    fmt: ThinkingFormat | None = None,
    mix: str = "paper",
    start: int = 0,
) -> list[dict]:
    """Records ``start .. start + n - 1`` of the stream ``(seed, mix)``."""
    _check_mix(mix)
    fmt = fmt or ThinkingFormat()
    return [make_record(seed, i, fmt, mix) for i in range(start, start + n)]
