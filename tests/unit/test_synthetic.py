"""Tests for the deterministic synthetic record generator."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from asrl.data.format import ThinkingFormat
from asrl.data.synthetic import (
    MIXES,
    PATTERNS,
    format_number,
    generate_records,
    make_record,
)

FMT = ThinkingFormat()


@pytest.fixture(scope="module")
def paper() -> list[dict]:
    return generate_records(2000, seed=0)


def test_same_seed_index_same_record() -> None:
    assert make_record(3, 17, FMT) == make_record(3, 17, FMT)
    assert generate_records(5, seed=1) == generate_records(5, seed=1)


def test_resume_at_start_continues_stream() -> None:
    assert generate_records(10, start=5) == generate_records(15)[5:]
    assert (
        generate_records(4, seed=2, mix="percent", start=3)
        == generate_records(7, seed=2, mix="percent")[3:]
    )


def test_different_seeds_differ() -> None:
    a = [(r["prompt"] if "prompt" in r else r["messages"]) for r in generate_records(50, seed=0)]
    b = [(r["prompt"] if "prompt" in r else r["messages"]) for r in generate_records(50, seed=1)]
    assert a != b
    assert sum(x != y for x, y in zip(a, b, strict=True)) > 25


def test_ids_unique_and_named(paper: list[dict]) -> None:
    ids = [r["id"] for r in paper]
    assert len(set(ids)) == len(ids)
    assert ids[7] == "syn-paper-0-7"


def test_record_shape_and_json(paper: list[dict]) -> None:
    for r in paper:
        assert json.loads(json.dumps(r)) == r
        assert set(r) in (
            {"id", "prompt", "response", "answer", "type"},
            {"id", "messages", "response", "answer", "type"},
        )
        if "messages" in r:
            assert [m["role"] for m in r["messages"]] == ["user", "assistant", "user"]
            assert all(m["content"] for m in r["messages"])


def test_final_answer_matches_and_well_formed(paper: list[dict]) -> None:
    for r in paper:
        assert FMT.final_answer(r["response"]) == r["answer"], r
        assert r["answer"] and r["answer"] == r["answer"].strip()
        if FMT.think_open in r["response"]:
            assert FMT.is_well_formed(r["response"]), r
            assert r["response"].startswith(FMT.think_open)
        else:
            assert r["response"] == r["answer"]
            assert "no thinking" in r["prompt"].lower()
        assert len(r["response"]) <= 260, r


def test_direct_records_have_no_thinking() -> None:
    recs = generate_records(200, mix="direct")
    assert all(r["type"] == "mixed" for r in recs)
    for r in recs:
        assert FMT.think_open not in r["response"]
        assert r["response"] == r["answer"]


def test_paper_mix_proportions(paper: list[dict]) -> None:
    counts = Counter(r["type"] for r in paper)
    target = {"simple": 30, "complex": 25, "multi_turn": 20, "mixed": 25}
    assert set(counts) == set(target)
    for kind, pct in target.items():
        assert abs(100 * counts[kind] / len(paper) - pct) <= 5, (kind, counts)
    mixed = [r for r in paper if r["type"] == "mixed"]
    no_think = sum(FMT.think_open not in r["response"] for r in mixed)
    assert 0.4 <= no_think / len(mixed) <= 0.6


def test_answer_style(paper: list[dict]) -> None:
    number = re.compile(r"^-?\d+(\.\d*[1-9])?$")
    for r in paper:
        a = r["answer"]
        assert number.match(a) or re.fullmatch(r"[A-Za-z]+", a), a
        if not number.match(a) and a not in ("yes", "no"):  # a name from the question
            text = r.get("prompt") or " ".join(m["content"] for m in r["messages"])
            assert a in text


def test_arithmetic_answers_are_correct() -> None:
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}
    recs = generate_records(300, mix="arithmetic")
    assert {r["type"] for r in recs} == {"simple"}
    seen = set()
    for r in recs:
        m = re.fullmatch(r"What is (\d+) ([+\-×]) (\d+)\?", r["prompt"])
        assert m, r["prompt"]
        seen.add(m.group(2))
        assert r["answer"] == str(ops[m.group(2)](int(m.group(1)), int(m.group(3))))
        assert int(r["answer"]) >= 0
    assert seen == set(ops)


def test_percent_answers_are_correct() -> None:
    recs = generate_records(300, mix="percent")
    assert {r["type"] for r in recs} == {"new_pattern"}
    for r in recs:
        m = re.fullmatch(r"What is (\d+)% of (\d+)\?", r["prompt"])
        assert m, r["prompt"]
        p, n = int(m.group(1)), int(m.group(2))
        assert p * n % 100 == 0
        assert r["answer"] == str(p * n // 100)


def test_percent_not_in_paper_mix(paper: list[dict]) -> None:
    assert "percent" not in {name for name, _ in MIXES["paper"]}
    assert all(r["type"] != "new_pattern" for r in paper)


def test_unit_conversion_values() -> None:
    factors = {
        ("kilometers", "meter"): 1000,
        ("kilograms", "gram"): 1000,
        ("hours", "minute"): 60,
        ("meters", "centimeter"): 100,
    }
    for r in generate_records(200, mix="unit_conversion"):
        m = re.fullmatch(r"How many (\w+) is ([\d.]+) (\w+?)s?\?", r["prompt"])
        assert m, r["prompt"]
        to, x, frm = m.group(1), float(m.group(2)), m.group(3)
        down = (to, frm) in factors  # small unit -> big unit divides
        expect = x / factors[to, frm] if down else x * factors[frm + "s", to[:-1]]
        assert r["answer"] == format_number(expect), r


def test_format_number() -> None:
    assert format_number(42) == "42"
    assert format_number(2.50) == "2.5"
    assert format_number(3.0) == "3"
    assert format_number(0.75) == "0.75"
    assert format_number(-0.0) == "0"


def test_custom_format_tags() -> None:
    fmt = ThinkingFormat.from_pairs([["[CLAIM]", "[/CLAIM]"], ["[EVIDENCE]", "[/EVIDENCE]"]])
    recs = generate_records(100, fmt=fmt)
    for r in recs:
        assert "[LOGIC]" not in r["response"] and "[INTUITION]" not in r["response"]
        assert fmt.final_answer(r["response"]) == r["answer"]
        if fmt.think_open in r["response"]:
            assert fmt.is_well_formed(r["response"])
            assert "[CLAIM]" in r["response"] and "[EVIDENCE]" in r["response"]
    # Same stream content apart from the tags.
    plain = generate_records(100)
    assert [r["answer"] for r in recs] == [r["answer"] for r in plain]


@pytest.mark.parametrize("n_sections", [1, 3])
def test_other_section_counts(n_sections: int) -> None:
    pairs = [[f"[S{i}]", f"[/S{i}]"] for i in range(n_sections)]
    fmt = ThinkingFormat.from_pairs(pairs)
    for r in generate_records(50, fmt=fmt, mix="arithmetic"):
        assert fmt.is_well_formed(r["response"])
        assert fmt.final_answer(r["response"]) == r["answer"]
        assert f"[S{n_sections}]" not in r["response"]


def test_every_pattern_has_a_mix() -> None:
    for name in PATTERNS:
        assert MIXES[name] == [(name, 1.0)]
        r = make_record(0, 0, FMT, mix=name)
        assert r["id"] == f"syn-{name}-0-0"
    assert abs(sum(w for _, w in MIXES["paper"]) - 1.0) < 1e-9


def test_unknown_mix_raises() -> None:
    with pytest.raises(ValueError, match="paper"):
        generate_records(3, mix="nope")
    with pytest.raises(ValueError, match="unknown mix"):
        make_record(0, 0, FMT, mix="nope")
