"""Fuzzing the data path: whatever arrives, each line is accepted or quarantined with a reason.

Random bytes, random JSON values (nested, with the schema's own keys mixed in so the deeper
checks are reached) and structured hostile lines (deep nesting, lines over the size cap,
huge numbers, NUL bytes, lone surrogates, BOMs, Unicode blanks) go through ``parse_line``,
``LiveDataset.refresh`` over a JSONL file, a JSONL directory and a SQLite table, ``asrl data
add`` (called in-process) and a real ``asrl train``. Nothing may raise but ``RecordError``
inside, and the counts must add up.
"""

import argparse
import contextlib
import io
import json
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asrl.data.commands import cmd_add
from asrl.data.live import LiveDataset
from asrl.data.records import (
    BOM,
    MAX_DEPTH,
    RecordError,
    nesting_depth,
    parse_line,
    parse_record,
)
from asrl.data.source_base import RawRecord
from asrl.data.sources import JsonlDir, JsonlFile, SqliteTable
from asrl.types import Example

KEYS = ["id", "prompt", "messages", "response", "completion", "answer", "type", "role", "content"]
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)
# a line: raw bytes, or some JSON value serialised (newlines inside would make two lines)
random_lines = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")) | json_values.map(
    lambda v: json.dumps(v).encode()
)

# ---- structured hostile lines: what a buggy or malicious writer appends
CAP = 4096  # the line-size cap the sources below run with (the default is 1 MiB)


def record_with(field: str, raw: bytes) -> bytes:
    """A valid-looking record whose ``field`` holds the raw JSON text ``raw``."""
    base = {"id": "h", "prompt": "q", "response": "r"}
    head = json.dumps({k: v for k, v in base.items() if k != field})[:-1].encode()
    return head + b', "' + field.encode() + b'": ' + raw + b"}"


fields = st.sampled_from(["id", "prompt", "response", "answer", "type", "extra", "messages"])
deep = st.builds(
    lambda n, open_, close, where: (
        record_with(where, open_ * n + close * n) if where else open_ * n + close * n
    ),
    st.integers(MAX_DEPTH - 2, 100_000),
    st.sampled_from([b"[", b'{"a":[']),
    st.sampled_from([b"", b"]", b"]}"]),  # unclosed, or closed (wrongly, for {"a":[)
    st.none() | fields,
)
huge_lines = st.builds(
    lambda n, fill: record_with("response", b'"' + fill * n + b'"'),
    st.integers(CAP, 50_000),
    st.sampled_from([b"a", b"[", b"\\u0000", b"\xe2\x82\xac"]),
)
huge_numbers = st.builds(
    lambda f, num: record_with(f, num),
    fields,
    st.one_of(
        st.integers(309, 10**6).map(lambda e: f"1e{e}".encode()),
        st.integers(309, 10**6).map(lambda e: f"-2.5E+{e}".encode()),
        st.integers(4301, 20_000).map(lambda n: b"9" * n),
        st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e-999999"]),
    ),
)
nul_bytes = st.one_of(
    st.just(b"\x00" * 16),
    st.builds(lambda f: record_with(f, b'"q\x00"'), fields),  # raw NUL in a string: invalid
    st.builds(lambda f: record_with(f, b'"q\\u0000"'), fields),  # an escaped NUL: valid JSON
    st.just(b'{"prompt": "q", "response": "r"}\x00'),
)
surrogates = st.builds(
    lambda f, cp, raw: record_with(
        f,
        b'"x'
        + (chr(cp).encode("utf-8", "surrogatepass") if raw else f"\\u{cp:04x}".encode())
        + b'"',
    ),
    fields,
    st.integers(0xD800, 0xDFFF),
    st.booleans(),  # the escape \udXXX, or the surrogate's (invalid) UTF-8 bytes
)
odd_text = st.sampled_from(
    [BOM + b'{"prompt": "q", "response": "r"}', BOM, "\u00a0\u3000 ".encode(), b"\r", b"\t \x0b"]
)
hostile_lines = st.one_of(deep, huge_lines, huge_numbers, nul_bytes, surrogates, odd_text)
lines = random_lines | hostile_lines
FAST = settings(max_examples=200, deadline=None)


def blank(x: bytes) -> bool:
    """A JSONL reader skips it: nothing but (Unicode) whitespace, after a CR."""
    try:
        return not x.decode("utf-8").rstrip("\r").strip()
    except UnicodeDecodeError:
        return False


def nonblank(ls: list[bytes]) -> int:
    # a BOM at the very start of the file belongs to no line
    return sum(
        1
        for i, x in enumerate(ls)
        if not blank(x[len(BOM) :] if i == 0 and x.startswith(BOM) else x)
    )


def accepted_text_is_utf8(ex: Example) -> None:
    for text in [ex.id, ex.response, ex.type, *(m["content"] for m in ex.messages)]:
        text.encode("utf-8")  # what the tokenizer and our files need


@FAST
@given(lines)
def test_parse_line_accepts_or_raises_record_error(line):
    try:
        ex = parse_line(line)
    except RecordError as e:
        assert str(e)  # the reason a quarantine entry carries
    else:
        assert isinstance(ex, Example)
        accepted_text_is_utf8(ex)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"[" * 100_000, f"nested 100000 levels deep (max {MAX_DEPTH})"),
        (b'{"a":' * 100_000, "nested 100000 levels deep"),
        (record_with("extra", b"[" * 5000 + b"]" * 5000), "nested 5001 levels deep"),  # {+5000
        (record_with("answer", b"1e999999"), "number out of range: 1e999999"),
        (record_with("answer", b"9" * 100_000), "number too large"),
        (record_with("answer", b"NaN"), "NaN is not a JSON number"),
        (record_with("prompt", b'"q\x00"'), "invalid JSON: Invalid control character at column"),
        (record_with("prompt", b'"q\\ud800"'), "lone surrogate"),
        (record_with("extra", b'"\\udfff"'), "lone surrogate"),
        (record_with("prompt", b'"q\xed\xa0\x80"'), "not UTF-8"),
    ],
)
def test_hostile_lines_get_a_reason(line, reason):
    with pytest.raises(RecordError, match=re.escape(reason)):
        parse_line(line)


def depth_of(value) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


tricky_text = st.text(alphabet='[]{}"\\\\ab', max_size=8)  # brackets, quotes, escapes
deep_values = st.recursive(
    tricky_text | st.integers(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky_text, inner, max_size=3),
    max_leaves=200,
)


@FAST
@given(deep_values, st.integers(0, 80))
def test_nesting_depth_is_the_depth_json_sees(value, extra):
    for _ in range(extra):  # past the cap too
        value = [value]
    line = json.dumps(value).encode()
    got, true = nesting_depth(line), depth_of(value)
    # 0 means "too few brackets to exceed the cap, not measured"
    assert got == true or (got == 0 and true <= MAX_DEPTH)


def test_brackets_inside_strings_are_not_nesting():
    ex = parse_line(record_with("prompt", b'"' + b"[{" * 50_000 + b'"'))
    assert ex.messages[0]["content"] == "[{" * 50_000
    assert (
        parse_line(record_with("prompt", b'"\\ud83d\\ude00 ok"')).messages[0]["content"]
        == "\U0001f600 ok"
    )


def check_refresh(ds: LiveDataset, quarantine: Path, expected: int) -> None:
    """Every input became a record, a duplicate or a quarantined entry with a reason."""
    res = ds.refresh()
    assert res.new + res.rejected + res.duplicates == expected
    assert len(ds) == res.new
    for ex in (e for part in ds.splits.values() for e in part):
        accepted_text_is_utf8(ex)
    q = [json.loads(x) for x in quarantine.read_text().splitlines()] if res.rejected else []
    assert len(q) == res.rejected and all(e["reason"] and e["where"] for e in q)


@FAST
@given(st.lists(lines, max_size=12))
def test_live_dataset_accepts_or_quarantines_every_line(ls):
    with tempfile.TemporaryDirectory() as d:
        path, quarantine = Path(d) / "data.jsonl", Path(d) / "q.jsonl"
        path.write_bytes(b"".join(x + b"\n" for x in ls))
        check_refresh(
            LiveDataset([JsonlFile(path, CAP)], quarantine=quarantine), quarantine, nonblank(ls)
        )


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(lines, max_size=6), min_size=1, max_size=3))
def test_jsonl_dir_accepts_or_quarantines_every_line(files):
    with tempfile.TemporaryDirectory() as d:
        root, quarantine = Path(d) / "data", Path(d) / "q.jsonl"
        root.mkdir()
        for i, ls in enumerate(files):
            (root / f"{i}.jsonl").write_bytes(b"".join(x + b"\n" for x in ls))
        ds = LiveDataset([JsonlDir(root, max_line_bytes=CAP)], quarantine=quarantine)
        check_refresh(ds, quarantine, sum(nonblank(ls) for ls in files))


cells = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),  # inf stays inf in SQLite; NaN becomes NULL
    st.binary(max_size=20),  # a BLOB, or text that is not UTF-8
    hostile_lines.map(lambda b: b[:200_000]),  # as a BLOB: raw hostile bytes
    hostile_lines.map(lambda b: b.decode("utf-8", "surrogatepass") if b.isascii() else b),
)
row_values = st.fixed_dictionaries(
    {c: cells for c in ("id", "prompt", "messages", "response", "answer", "type")}
)


@settings(max_examples=100, deadline=None)
@given(st.lists(row_values, max_size=6))
def test_sqlite_rows_are_accepted_or_quarantined(rows):
    with tempfile.TemporaryDirectory() as d:
        db, quarantine = Path(d) / "x.db", Path(d) / "q.jsonl"
        con = sqlite3.connect(db)
        cols = ("id", "prompt", "messages", "response", "answer", "type")
        con.execute(f"CREATE TABLE records ({', '.join(cols)})")  # no types: any value as given
        con.executemany(
            f"INSERT INTO records VALUES ({', '.join('?' * len(cols))})",
            [tuple(r[c] for c in cols) for r in rows],
        )
        con.commit()
        con.close()
        check_refresh(LiveDataset([SqliteTable(db)], quarantine=quarantine), quarantine, len(rows))


class Rows:
    """A source of Python rows, as Hugging Face and reasoning-gym sources yield them."""

    name = "rows"

    def __init__(self, rows):
        self.rows = rows

    def poll(self):
        for i, row in enumerate(self.rows):
            yield RawRecord(row, f"rows:row {i}")


def nested(n):
    value = []
    for _ in range(n):
        value = [value]
    return value


def test_python_rows_anything_is_a_record_or_a_reason(tmp_path):
    q = tmp_path / "q.jsonl"
    table = [
        {"prompt": "q", "response": "r", "id": 10**5000},  # int too long to print: ValueError
        {"prompt": "q", "response": "r", "answer": 10**5000},
        {"prompt": "q", "response": "r", "answer": float("inf")},
        {"prompt": "q\ud800", "response": "r"},
        {"messages": "not a list", "response": "r"},  # a text column: read as JSON, as SQL's
        {"prompt": "", "response": "r"},
        {"prompt": "q", "response": "r", "deep": nested(100_000)},  # preview cannot print it
        {"prompt": "ok", "response": "r"},
    ]
    ds = LiveDataset([Rows(table)], quarantine=q)
    res = ds.refresh()
    assert (res.new, res.rejected) == (2, 6)  # the deep extra column is kept, as columns are
    got = {e["where"]: e["reason"] for e in map(json.loads, q.read_text().splitlines())}
    assert "ValueError" in got["rows:row 0"] and "ValueError" in got["rows:row 1"]
    assert "finite" in got["rows:row 2"] and "lone surrogate" in got["rows:row 3"]
    assert "column 'messages' is not JSON" in got["rows:row 4"]
    assert "empty prompt" in got["rows:row 5"]
    with pytest.raises(RecordError, match="'messages' must be a non-empty list"):
        parse_record({"messages": "not a list", "response": "r"})
    with pytest.raises(RecordError, match="empty prompt"):
        parse_record({"prompt": "   ", "response": "r"})


def test_a_line_over_the_cap_is_skipped_unread_and_reading_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr("asrl.data.sources.READ_CHUNK", 1000)  # the long line spans chunks
    path, q = tmp_path / "d.jsonl", tmp_path / "q.jsonl"
    good = [json.dumps({"id": f"g{i}", "prompt": "q", "response": "r"}).encode() for i in range(3)]
    long = record_with("response", b'"' + b"x" * 50_000 + b'"')
    path.write_bytes(b"\n".join([good[0], long, good[1], b"[" * 20_000, good[2]]) + b"\n")
    src = JsonlFile(path, max_line_bytes=CAP)
    ds = LiveDataset([src], quarantine=q)
    res = ds.refresh()
    assert (res.new, res.rejected) == (3, 2) and src.state()["line_no"] == 5
    got = [json.loads(x) for x in q.read_text().splitlines()]
    assert got[0]["where"] == "d.jsonl:2"
    assert got[0]["reason"].startswith(f"line longer than {CAP} bytes ({len(long)} bytes)")
    assert len(got[0]["raw"]) <= 4096  # a preview, not the line
    assert got[1]["where"] == "d.jsonl:4" and "line longer than" in got[1]["reason"]
    # an over-long last line still being written is left for the next look, not judged
    with path.open("ab") as f:
        f.write(b"y" * 10_000)
    assert ds.refresh().rejected == 0 and src.state()["line_no"] == 5
    with path.open("ab") as f:
        f.write(b"\n" + good[0] + b"\n")
    res = ds.refresh()
    assert (res.rejected, res.duplicates) == (1, 1) and src.state()["line_no"] == 7


@settings(max_examples=60, deadline=None)  # each call takes a lock and fsyncs
@given(st.lists(lines, max_size=8), st.lists(lines, max_size=4))
def test_data_add_counts_add_up(existing, new):
    with tempfile.TemporaryDirectory() as d:
        src, dataset = Path(d) / "new.jsonl", Path(d) / "data.jsonl"
        dataset.write_bytes(b"".join(x + b"\n" for x in existing))
        src.write_bytes(b"".join(x + b"\n" for x in new))
        had = LiveDataset([JsonlFile(dataset, CAP)]).refresh().new
        args = argparse.Namespace(
            file=str(src), to=str(dataset), max_chars=20_000, max_line_bytes=CAP
        )
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cmd_add(args)
        # "added A record(s) to X; B bad (not added), S already present (skipped)"
        m = re.search(r"added (\d+) .*; (\d+) bad .*, (\d+) already present", out.getvalue())
        added, bad, skipped = map(int, m.groups())
        assert added + bad + skipped == nonblank(new)
        assert rc == (1 if bad else 0) and len(err.getvalue().splitlines()) == bad
        # exactly the accepted new records were appended: the trainer absorbs each once
        assert LiveDataset([JsonlFile(dataset, CAP)]).refresh().new == had + added


def test_training_quarantines_hostile_lines_and_trains_on_the_rest(tmp_path):
    """A real ``asrl train`` (tiny model) over a data file with hostile lines in it."""
    data, out = tmp_path / "data.jsonl", tmp_path / "out"
    gen = [sys.executable, "-m", "asrl", "data", "generate", "--to", str(data), "--count", "40"]
    subprocess.run(gen, check=True, capture_output=True, timeout=120)
    hostile = {
        "[" * 100_000: "nested 100000 levels deep",
        record_with("response", b'"' + b"x" * 2_000_000 + b'"'): "line longer than 1048576 bytes",
        record_with("answer", b"1e999999"): "number out of range",
        record_with("answer", b"9" * 100_000): "number too large",
        record_with("prompt", b'"q\\ud800"'): "lone surrogate",
        b"\x00" * 64: "invalid JSON",
        record_with("messages", b'"not a list"'): "'messages' must be a non-empty list",
        record_with("prompt", b'""'): "empty prompt",
    }
    hostile = {k if isinstance(k, bytes) else k.encode(): v for k, v in hostile.items()}
    text = data.read_bytes().splitlines()
    body = [BOM + text[0], b"", "\u00a0".encode(), *text[1:20], *hostile, *text[20:]]
    body.append(record_with("prompt", b'"NUL \\u0000 inside"'))  # valid: trained on
    data.write_bytes(b"\n".join(body) + b"\n")
    cmd = [sys.executable, "-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(out)]
    cmd += ["--set", f"data.path={data}", "--set", "schedule.epochs=1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"{len(hostile)} bad record(s) quarantined" in done.stdout + done.stderr
    q = [json.loads(x) for x in (out / "quarantine.jsonl").read_text().splitlines()]
    first_hostile = 1 + 2 + 19 + 1  # BOM line, two blank lines, 19 records, then 1-based
    assert [e["where"] for e in q] == [
        f"data.jsonl:{first_hostile + i}" for i in range(len(hostile))
    ]
    for entry, reason in zip(q, hostile.values()):
        assert reason in entry["reason"], entry
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    data0 = metrics[0]
    assert data0["data/rejected"] == len(hostile)
    assert data0["data/new_examples"] == 41  # the 40 generated (the BOM one too) + the NUL one
    assert (out / "summary.json").is_file() and (out / "checkpoints" / "epoch-0001").is_dir()
