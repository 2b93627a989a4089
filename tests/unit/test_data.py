"""Record conventions, stable splits, and the appended-JSONL source."""

import json

import pytest

from asrl.data.live import LiveDataset
from asrl.data.records import parse_line, parse_record, split_of
from asrl.data.sources import JsonlFile
from asrl.errors import RecordError


def test_record_conventions_normalise_to_one_schema():
    a = parse_record({"prompt": "2+2?", "response": "4", "answer": 4})
    assert a.messages == ({"role": "user", "content": "2+2?"},) and a.answer == "4"
    b = parse_record(
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    )
    assert b.response == "4" and len(b.messages) == 1
    c = parse_record(
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "completion": [{"role": "assistant", "content": "4"}],
        }
    )
    assert c.response == "4"
    assert a.id == b.id == c.id  # no id: identity from content, same across conventions


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"prompt": "q"}', "missing 'response'"),
        (b'{"prompt": 3, "response": "a"}', "'prompt' must be"),
        (b'{"prompt": "q", "response": "  "}', "empty response"),
        (b"[1, 2]", "JSON object"),
        (b'{"messages": [{"role": "user", "content": "q"}]}', "no final assistant"),
        (b'{"messages": "not a list", "response": "r"}', "'messages' must be a non-empty list"),
        (b'{"prompt": "", "response": "r"}', "empty prompt"),
        (b'{"prompt": [{"role": "user", "content": " "}], "response": "r"}', "empty prompt"),
        (b'{"prompt": "q", "response": "r", "answer": 1e999}', "number out of range"),
    ],
)
def test_bad_records_say_why(raw, reason):
    with pytest.raises(RecordError, match=reason):
        parse_line(raw)


def test_blank_lines_are_skipped_and_counted_and_a_bom_is_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    rec = lambda i: json.dumps({"id": f"r{i}", "prompt": f"q{i}", "response": "a"})  # noqa: E731
    blanks = ["", "   ", "\t", "\r", "\u00a0", "\u3000 \u2003"]
    text = "\ufeff" + rec(0) + "\n" + "\n".join(blanks) + "\n" + rec(1) + "\r\n"
    path.write_text(text + "\ufeff" + rec(2) + "\n", encoding="utf-8")  # a BOM mid-file: bad
    src = JsonlFile(path)
    ds = LiveDataset([src], quarantine=tmp_path / "q.jsonl")
    res = ds.refresh()
    assert (res.new, res.rejected, res.blank_lines) == (2, 1, len(blanks))
    assert sorted(e.id for part in ds.splits.values() for e in part) == ["r0", "r1"]
    (where, reason) = res.rejects[0]
    assert where == f"d.jsonl:{len(blanks) + 3}" and "BOM" in reason
    with path.open("a") as f:  # blank lines appended later are skipped too
        f.write("\n  \n" + rec(3) + "\n")
    res = ds.refresh()
    assert (res.new, res.rejected, res.blank_lines) == (1, 0, 2)


def test_split_is_stable_and_close_to_fractions():
    ids = [f"r{i}" for i in range(5000)]
    splits = [split_of(i, [0.8, 0.1, 0.1]) for i in ids]
    assert splits == [split_of(i, [0.8, 0.1, 0.1]) for i in ids]  # a function of identity only
    frac_train = splits.count("train") / len(ids)
    assert 0.77 < frac_train < 0.83


def test_jsonl_tail_leaves_partial_line_and_grows(tmp_path):
    path = tmp_path / "d.jsonl"
    rec = lambda i: json.dumps({"id": f"r{i}", "prompt": f"q{i}", "response": f"a{i}"})  # noqa: E731
    path.write_text(rec(0) + "\n" + rec(1) + "\n" + rec(2)[:10])  # last line mid-write
    ds = LiveDataset([JsonlFile(path)], quarantine=tmp_path / "q.jsonl")
    assert ds.refresh().new == 2 and len(ds) == 2
    held_out = {e.id for s in ("val", "test") for e in ds.splits[s]}
    with path.open("a") as f:  # the writer finishes the line, adds a bad one and a duplicate
        f.write(rec(2)[10:] + "\n" + "{oops\n" + rec(0) + "\n")
        for i in range(3, 200):
            f.write(rec(i) + "\n")
    res = ds.refresh()
    assert (res.new, res.rejected, res.duplicates) == (198, 1, 1)
    assert len(ds) == 200 and ds.version == 2
    assert held_out <= {e.id for s in ("val", "test") for e in ds.splits[s]}  # nothing moved
    quarantined = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert quarantined[0]["where"] == "d.jsonl:4" and "invalid JSON" in quarantined[0]["reason"]
    assert ds.refresh().new == 0 and ds.version == 2


def test_replay_until_cursor_rebuilds_the_same_dataset(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "response": "a"}) + "\n" for i in range(50))
    )
    src = JsonlFile(path)
    ds = LiveDataset([src])
    ds.refresh()
    cursor = src.state()
    with path.open("a") as f:
        f.write(json.dumps({"prompt": "late", "response": "a"}) + "\n")
    src2 = JsonlFile(path)
    src2.restore_until(cursor)
    ds2 = LiveDataset([src2])
    ds2.refresh()
    assert [e.id for e in ds2.train] == [e.id for e in ds.train]
    assert ds2.refresh().new == 1  # the late record arrives at the next look, once


def test_eval_selection_shares_slots_across_types_and_admits_new_patterns():
    from asrl.config import EvalConfig
    from asrl.train.evaluation import eval_examples
    from asrl.types import Example

    def ex(i, t):
        return Example(f"{t}{i}", ({"role": "user", "content": "q"},), "a", None, t)

    old = [ex(i, "simple") for i in range(30)] + [ex(i, "complex") for i in range(30)]
    cfg = EvalConfig(max_examples=10)
    first = eval_examples(old, cfg)
    assert [e.id for e in first if e.type == "simple"] == [f"simple{i}" for i in range(5)]
    grown = old + [ex(i, "new_pattern") for i in range(6)]  # a new style arrives at the end
    second = eval_examples(grown, cfg)
    assert len(second) == 10 and sum(e.type == "new_pattern" for e in second) >= 3
    # an old type's selection stays a prefix of what it was: comparable across epochs
    ids = [e.id for e in second if e.type == "simple"]
    assert ids == [f"simple{i}" for i in range(len(ids))]
