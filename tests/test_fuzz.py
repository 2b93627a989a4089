"""Fuzzing the data path: whatever arrives, each line is accepted or quarantined with a reason.

Random bytes and random JSON values (nested, with the schema's own keys mixed in so the
deeper checks are reached) go through ``parse_line``, ``LiveDataset.refresh`` over a JSONL
file, and ``asrl data add`` (called in-process). Nothing may raise but ``RecordError``
inside, and the counts must add up.
"""

import argparse
import contextlib
import io
import json
import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from asrl.data.commands import cmd_add
from asrl.data.live import LiveDataset
from asrl.data.records import RecordError, parse_line
from asrl.data.sources import JsonlFile
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
lines = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b" ")) | json_values.map(
    lambda v: json.dumps(v).encode()
)
FAST = settings(max_examples=200, deadline=None)


def nonblank(ls: list[bytes]) -> int:
    return sum(1 for x in ls if x.strip())


@FAST
@given(lines)
def test_parse_line_accepts_or_raises_record_error(line):
    try:
        assert isinstance(parse_line(line), Example)
    except RecordError as e:
        assert str(e)  # the reason a quarantine entry carries


@FAST
@given(st.lists(lines, max_size=12))
def test_live_dataset_accepts_or_quarantines_every_line(ls):
    with tempfile.TemporaryDirectory() as d:
        path, quarantine = Path(d) / "data.jsonl", Path(d) / "q.jsonl"
        path.write_bytes(b"".join(x + b"\n" for x in ls))
        ds = LiveDataset([JsonlFile(path)], quarantine=quarantine)
        res = ds.refresh()
        assert res.new + res.rejected + res.duplicates == nonblank(ls)
        assert len(ds) == res.new
        q = [json.loads(x) for x in quarantine.read_text().splitlines()] if res.rejected else []
        assert len(q) == res.rejected and all(e["reason"] for e in q)


@settings(max_examples=60, deadline=None)  # each call takes a lock and fsyncs
@given(st.lists(lines, max_size=8), st.lists(lines, max_size=4))
def test_data_add_counts_add_up(existing, new):
    with tempfile.TemporaryDirectory() as d:
        src, dataset = Path(d) / "new.jsonl", Path(d) / "data.jsonl"
        dataset.write_bytes(b"".join(x + b"\n" for x in existing))
        src.write_bytes(b"".join(x + b"\n" for x in new))
        had = LiveDataset([JsonlFile(dataset)]).refresh().new
        args = argparse.Namespace(file=str(src), to=str(dataset), max_chars=20_000)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cmd_add(args)
        # "added A record(s) to X; B bad (not added), S already present (skipped)"
        m = re.search(r"added (\d+) .*; (\d+) bad .*, (\d+) already present", out.getvalue())
        added, bad, skipped = map(int, m.groups())
        assert added + bad + skipped == nonblank(new)
        assert rc == (1 if bad else 0) and len(err.getvalue().splitlines()) == bad
        # exactly the accepted new records were appended: the trainer absorbs each once
        assert LiveDataset([JsonlFile(dataset)]).refresh().new == had + added
