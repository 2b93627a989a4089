"""Live sources on real files, directories, SQLite databases and writer processes."""

import json
import sqlite3
import subprocess
import sys
import time

import pytest

from asrl.data.live import LiveDataset
from asrl.data.sources import JsonlDir, JsonlFile, SqliteTable, open_source


def rec(i, **kw):
    return {"id": f"r{i}", "prompt": f"q{i}", "response": f"a{i}", **kw}


def line(obj):
    return json.dumps(obj) + "\n"


def write(path, records, mode="w"):
    with open(path, mode) as f:
        f.writelines(line(r) for r in records)


def quarantined(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def all_ids(ds):
    return [e.id for part in ds.splits.values() for e in part]


def _watch(proc, ds, deadline_s=30):
    """Refresh while the writer runs; returns how many refreshes found something new."""
    growing, t_end = 0, time.monotonic() + deadline_s
    while proc.poll() is None and time.monotonic() < t_end:
        growing += ds.refresh().new > 0
        time.sleep(0.03)
    assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
    ds.refresh()  # whatever the writer finished after our last look
    return growing


def test_absorbs_a_live_generator_process_exactly_once(tmp_path):
    path = tmp_path / "live.jsonl"
    ds = LiveDataset([JsonlFile(path)], quarantine=tmp_path / "q.jsonl")
    cmd = [sys.executable, "-m", "asrl", "data", "generate", "--to", str(path)]
    proc = subprocess.Popen([*cmd, "--rate", "20/s", "--count", "40"], stderr=subprocess.PIPE)
    growing = _watch(proc, ds)
    assert growing >= 5  # it really was absorbed while being written, not all at the end
    assert sorted(all_ids(ds)) == sorted(f"syn-paper-0-{i}" for i in range(40))
    assert len(ds) == 40 and ds.rejected_total == 0
    assert not (tmp_path / "q.jsonl").exists()


def test_a_writer_splitting_lines_never_yields_a_partial_record(tmp_path):
    # a careless writer (no lock, each line in two writes with a pause between): the tail
    # must wait for the newline instead of parsing half a record
    path = tmp_path / "slow.jsonl"
    script = (
        "import json, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        "for i in range(30):\n"
        "    b = (json.dumps({'id': f'r{i}', 'prompt': 'q', 'response': 'a' * 50}) + '\\n').encode()\n"
        "    os.write(fd, b[:20]); time.sleep(0.02); os.write(fd, b[20:]); time.sleep(0.01)\n"
    )
    ds = LiveDataset([JsonlFile(path)], quarantine=tmp_path / "q.jsonl")
    proc = subprocess.Popen([sys.executable, "-c", script, str(path)])
    assert _watch(proc, ds) >= 3
    assert sorted(all_ids(ds), key=lambda x: int(x[1:])) == [f"r{i}" for i in range(30)]
    assert ds.rejected_total == 0


def test_each_kind_of_bad_record_is_quarantined_with_reason_and_position(tmp_path):
    path, qpath = tmp_path / "d.jsonl", tmp_path / "q.jsonl"
    lines = [
        line(rec(0)),
        b"{not json\n",  # line 2
        line({"id": "x3", "prompt": "q"}),  # 3: missing response
        line({"id": "x4", "prompt": 7, "response": "a"}),  # 4: wrong type
        b'{"id": "x5", "prompt": "\xff\xfe", "response": "a"}\n',  # 5: not UTF-8
        line(rec(6)),
        line({"id": "x7", "prompt": "q", "response": "a" * 20_001}),  # 7: over-length
        line({"id": "x8", "prompt": "q", "response": "   "}),  # 8: empty response
        line(rec(9)),
    ]
    path.write_bytes(b"".join(x if isinstance(x, bytes) else x.encode() for x in lines))
    ds = LiveDataset([JsonlFile(path)], quarantine=qpath)
    res = ds.refresh()
    assert (res.new, res.rejected) == (3, 6)
    assert sorted(all_ids(ds)) == ["r0", "r6", "r9"]
    got = {q["where"]: q["reason"] for q in quarantined(qpath)}
    expected = {
        2: "invalid JSON",
        3: "missing 'response'",
        4: "'prompt' must be",
        5: "not UTF-8",
        7: "too long: 20002 characters",
        8: "empty response",
    }
    assert sorted(got) == sorted(f"d.jsonl:{n}" for n in expected)
    for n, reason in expected.items():
        assert reason in got[f"d.jsonl:{n}"]
    assert [w for w, _ in res.rejects] == [f"d.jsonl:{n}" for n in expected]


def test_max_chars_is_a_setting():
    ds = LiveDataset([], max_chars=None)
    assert ds.max_chars is None  # no limit: the SFT max_length token filter still applies


def test_duplicates_by_id_and_by_content_are_absorbed_once(tmp_path):
    path = tmp_path / "d.jsonl"
    same_content = {"prompt": "2+2?", "response": "4"}
    write(
        path,
        [
            rec(1),
            {"id": "r1", "prompt": "other", "response": "other"},  # same id, first one wins
            same_content,
            dict(same_content),  # an exact copy without an id: same content hash
            {"messages": [{"role": "user", "content": "2+2?"}], "response": "4"},  # same again
            {"prompt": "2+2?", "response": "5"},  # different content: a new record
        ],
    )
    ds = LiveDataset([JsonlFile(path)])
    res = ds.refresh()
    assert (res.new, res.duplicates, res.rejected) == (3, 3, 0)
    by_id = {e.id: e for part in ds.splits.values() for e in part}
    assert by_id["r1"].messages[0]["content"] == "q1"
    write(path, [rec(1), same_content], mode="a")  # re-sent later: still absorbed once
    assert ds.refresh().duplicates == 2 and len(ds) == 3


def test_splits_are_stable_as_the_data_grows(tmp_path):
    path = tmp_path / "d.jsonl"
    write(path, [rec(i) for i in range(1000)])
    ds = LiveDataset([JsonlFile(path)])
    ds.refresh()
    held_out = {e.id for s in ("val", "test") for e in ds.splits[s]}
    assert 150 < len(held_out) < 250  # ~20% of 1000
    write(path, [rec(i) for i in range(1000, 5000)], mode="a")
    ds.refresh()
    assert held_out <= {e.id for s in ("val", "test") for e in ds.splits[s]}
    assert held_out.isdisjoint(e.id for e in ds.train)
    # the same split from scratch: it depends on the ids, not on the order of arrival
    fresh = LiveDataset([JsonlFile(path)])
    fresh.refresh()
    assert {s: {e.id for e in v} for s, v in fresh.splits.items()} == {
        s: {e.id for e in v} for s, v in ds.splits.items()
    }


def test_jsonl_dir_picks_up_new_files_and_skips_hidden_ones(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    write(d / "a.jsonl", [rec(i) for i in range(3)])
    src = JsonlDir(d)
    ds = LiveDataset([src], quarantine=tmp_path / "q.jsonl")
    assert ds.refresh().new == 3
    write(d / "b.jsonl", [rec(i) for i in range(10, 14)])
    write(d / "a.jsonl", [rec(3)], mode="a")
    write(d / ".b.jsonl.tmp.jsonl", [rec(99)])  # a writer's temp file, not yet published
    (d / "notes.txt").write_text("not a dataset file\n")
    with (d / "c.jsonl").open("w") as f:
        f.write(line(rec(20)) + line(rec(21))[:8])  # second line still being written
    res = ds.refresh()
    assert res.new == 6 and res.rejected == 0
    assert "r99" not in all_ids(ds) and "r21" not in all_ids(ds)
    assert set(src.state()["files"]) == {"a.jsonl", "b.jsonl", "c.jsonl"}
    with (d / "c.jsonl").open("a") as f:
        f.write(line(rec(21))[8:])
    assert ds.refresh().new == 1 and len(ds) == 10


def make_db(path, rows, table="records"):
    con = sqlite3.connect(path)
    con.execute(
        f"CREATE TABLE IF NOT EXISTS {table} "
        "(id TEXT, prompt TEXT, messages TEXT, response TEXT, answer TEXT, type TEXT)"
    )
    insert_rows(path, rows, table, con)


def insert_rows(path, rows, table="records", con=None):
    con = con or sqlite3.connect(path)
    cols = ("id", "prompt", "messages", "response", "answer", "type")
    con.executemany(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES (?, ?, ?, ?, ?, ?)",
        [tuple(r.get(c) for c in cols) for r in rows],
    )
    con.commit()
    con.close()


def test_sqlite_table_is_read_incrementally_by_rowid(tmp_path):
    db, qpath = tmp_path / "x.db", tmp_path / "q.jsonl"
    src = SqliteTable(db)
    ds = LiveDataset([src], quarantine=qpath)
    assert ds.refresh().new == 0 and not db.exists()  # read-only: never creates the file
    sqlite3.connect(db).close()
    assert ds.refresh().new == 0  # the table does not exist yet
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    make_db(db, [rec(0, answer="0", type="t"), {"id": "m1", "messages": json.dumps(msgs)}])
    res = ds.refresh()
    assert (res.new, res.rejected) == (2, 0) and src.state() == {"rowid": 2}
    by_id = {e.id: e for e in ds.train + ds.splits["val"] + ds.splits["test"]}
    assert by_id["r0"].type == "t" and by_id["m1"].response == "hello"
    insert_rows(
        db,
        [
            rec(3),
            {"id": "bad4", "prompt": "q"},  # rowid 4: NULL response
            {"id": "bad5", "messages": "[{not json"},  # rowid 5
            rec(6),
        ],
    )
    con = sqlite3.connect(db)  # rowid 7: a non-UTF-8 cell must not stop the rows after it
    con.execute(
        "INSERT INTO records (id, prompt, response) VALUES ('bad7', CAST(X'FFFE' AS TEXT), 'a')"
    )
    con.execute("INSERT INTO records (id, prompt, response) VALUES ('r8', 'q', 'a')")
    con.commit()
    con.close()
    res = ds.refresh()
    assert (res.new, res.rejected) == (3, 3)
    assert sorted(all_ids(ds)) == ["m1", "r0", "r3", "r6", "r8"]
    got = {q["where"]: q["reason"] for q in quarantined(qpath)}
    assert "missing 'response'" in got["x.db:rowid 4"]
    assert "'messages' is not JSON" in got["x.db:rowid 5"]
    assert "not UTF-8" in got["x.db:rowid 7"]
    assert ds.refresh().new == 0 and src.state() == {"rowid": 8}


def test_sqlite_table_with_only_some_columns(tmp_path):
    db = tmp_path / "y.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE pairs (prompt TEXT, completion TEXT, note TEXT)")
    con.execute("INSERT INTO pairs VALUES ('2+2?', '4', 'ignored')")
    con.commit()
    con.close()
    ds = LiveDataset([open_source(f"sqlite:{db}:pairs")])
    assert ds.refresh().new == 1 and all_ids(ds)[0].startswith("sha-")


def test_open_source_picks_the_kind_from_the_path(tmp_path):
    (tmp_path / "dir").mkdir()
    assert isinstance(open_source(tmp_path / "dir"), JsonlDir)
    assert isinstance(open_source(tmp_path / "d.jsonl"), JsonlFile)
    for name in ("a.db", "a.sqlite", "a.sqlite3"):
        assert isinstance(open_source(tmp_path / name), SqliteTable)
    s = open_source(f"sqlite:{tmp_path}/a.data:items")
    assert isinstance(s, SqliteTable) and s.table == "items" and s.path.name == "a.data"
    assert open_source(f"sqlite:{tmp_path}/a.data").table == "records"
    with pytest.raises(ValueError, match="identifier"):
        SqliteTable(tmp_path / "a.db", 'x"; DROP TABLE records; --')


def _grow(kind, path, start, n):
    """Append records start..start+n-1 to a source of ``kind``."""
    records = [rec(i) for i in range(start, start + n)]
    if kind == "file":
        write(path, records, mode="a")
    elif kind == "dir":
        write(path / f"part{start:04d}.jsonl", records)  # a new file each time
    else:
        make_db(path, records)


@pytest.mark.parametrize("kind", ["file", "dir", "sqlite"])
def test_resume_rebuilds_the_same_records_then_continues(tmp_path, kind):
    path = {"file": tmp_path / "d.jsonl", "dir": tmp_path / "d", "sqlite": tmp_path / "d.db"}[kind]
    if kind == "dir":
        path.mkdir()
    _grow(kind, path, 0, 30)
    ds = LiveDataset([open_source(path)])
    ds.refresh()
    _grow(kind, path, 30, 20)
    ds.refresh()
    state = ds.state()
    _grow(kind, path, 50, 7)  # arrives after the checkpoint
    src2 = open_source(path)
    src2.restore_until(state["cursors"][src2.name])
    ds2 = LiveDataset([src2])
    ds2.refresh()
    assert {s: [e.id for e in v] for s, v in ds2.splits.items()} == {
        s: [e.id for e in v] for s, v in ds.splits.items()
    }
    res = ds2.refresh()
    assert res.new == 7 and res.duplicates == 0
    assert sorted(all_ids(ds2)) == sorted(f"r{i}" for i in range(57))
    assert ds2.refresh().new == 0
    # restore (not replay) skips straight to the cursor: only the later records
    src3 = open_source(path)
    src3.restore(state["cursors"][src3.name])
    ds3 = LiveDataset([src3])
    assert ds3.refresh().new == 7


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_lines_across_read_chunks_and_replay_limits(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr("asrl.data.sources.READ_CHUNK", chunk)  # every line spans chunks
    path = tmp_path / "d.jsonl"
    write(path, [rec(i) for i in range(20)])
    with path.open("a") as f:
        f.write("\r\n" + line(rec(20))[:-1] + "\r\n" + line(rec(21))[:9])  # CRLF, blank, partial
    src = JsonlFile(path)
    ds = LiveDataset([src])
    assert ds.refresh().new == 21 and src.state()["line_no"] == 22
    replay = JsonlFile(path)
    replay.restore_until(src.state())
    ds2 = LiveDataset([replay])
    assert ds2.refresh().new == 21 and replay.state() == src.state()
    with path.open("a") as f:
        f.write(line(rec(21))[9:])
    assert ds2.refresh().new == 1 and sorted(all_ids(ds2)) == sorted(all_ids(ds) + ["r21"])
