"""``asrl data add|validate|stats|generate`` as a user runs them: real subprocesses."""

import json
import signal
import subprocess
import sys
import time

import pytest

from asrl.data.commands import parse_rate
from asrl.data.records import parse_line


def asrl_data(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "asrl", "data", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def good(i):
    return json.dumps({"id": f"g{i}", "prompt": f"q{i}", "response": f"a{i}", "type": "t"})


@pytest.fixture
def mixed_file(tmp_path):
    path = tmp_path / "new.jsonl"
    lines = [good(1), "{broken", good(2), '{"id": "x", "prompt": "q", "response": ""}', good(3)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_add_keeps_good_records_reports_bad_lines_and_skips_known_ids(tmp_path, mixed_file):
    dataset = tmp_path / "data" / "train.jsonl"
    r = asrl_data("add", mixed_file, "--to", dataset, cwd=tmp_path)
    assert r.returncode == 1
    assert f"{mixed_file}:2: invalid JSON" in r.stderr
    assert f"{mixed_file}:4: empty response" in r.stderr
    assert ":1:" not in r.stderr and ":3:" not in r.stderr and ":5:" not in r.stderr
    assert "added 3 record(s)" in r.stdout and "2 bad" in r.stdout
    ids = [parse_line(x.encode()).id for x in dataset.read_text().splitlines()]
    assert ids == ["g1", "g2", "g3"]
    assert (tmp_path / "data" / "train.jsonl.lock").exists()

    again = asrl_data("add", mixed_file, "--to", dataset, cwd=tmp_path)
    assert again.returncode == 1  # the bad lines are still bad
    assert "added 0 record(s)" in again.stdout and "3 already present" in again.stdout
    assert len(dataset.read_text().splitlines()) == 3

    clean = tmp_path / "clean.jsonl"
    clean.write_text(good(3) + "\n" + good(4) + "\n" + good(4) + "\n")  # g3 known, g4 twice
    r = asrl_data("add", clean, "--to", dataset, cwd=tmp_path)
    assert r.returncode == 0 and r.stderr == ""
    assert "added 1 record(s)" in r.stdout and "2 already present" in r.stdout
    assert dataset.read_text().splitlines()[-1] == good(4)


def test_add_ends_a_line_left_unfinished_before_appending(tmp_path):
    dataset, new = tmp_path / "d.jsonl", tmp_path / "n.jsonl"
    dataset.write_text(good(1) + "\n" + '{"id": "cut", "prom')  # a crashed writer's last line
    new.write_text(good(2) + "\n")
    assert asrl_data("add", new, "--to", dataset, cwd=tmp_path).returncode == 0
    lines = dataset.read_text().splitlines()
    assert lines == [good(1), '{"id": "cut", "prom', good(2)]  # ours intact, on its own line


def test_add_missing_file_is_a_usage_error(tmp_path):
    r = asrl_data("add", tmp_path / "nope.jsonl", "--to", tmp_path / "d.jsonl", cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr


def test_validate_reports_line_numbers_and_exit_code(tmp_path, mixed_file):
    r = asrl_data("validate", mixed_file, cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"{mixed_file}:2: invalid JSON: Expecting property name enclosed in double quotes "
        "at column 2",
        f"{mixed_file}:4: empty response",
    ]
    assert r.stdout.strip() == f"{mixed_file}: 3 good, 2 bad, 0 duplicate id(s)"
    ok = tmp_path / "ok.jsonl"
    ok.write_text(good(1) + "\n\n" + good(1) + "\n")  # a blank line is not a record
    r = asrl_data("validate", ok, "--max-chars", 100, cwd=tmp_path)
    assert r.returncode == 0 and "2 good, 0 bad, 1 duplicate id(s)" in r.stdout
    r = asrl_data("validate", ok, "--max-chars", 3, cwd=tmp_path)
    assert r.returncode == 1 and "too long: 4 characters" in r.stderr


@pytest.fixture
def hostile_file(tmp_path):
    """Good records around lines a buggy or hostile writer might append; -> (path, the bad
    line numbers with their reasons)."""
    path = tmp_path / "hostile.jsonl"
    lines = [
        b"\xef\xbb\xbf" + good(1).encode(),  # 1: a BOM at the start (Windows editors): fine
        b"",  # 2: blank
        "\u00a0 ".encode(),  # 3: blank (Unicode whitespace)
        b"[" * 100_000,  # 4
        good(2).encode(),
        b'{"id": "n", "prompt": "q", "response": "r", "answer": 1e999999}',  # 6
        b'{"id": "i", "prompt": "q", "response": "r", "answer": ' + b"9" * 100_000 + b"}",  # 7
        b'{"id": "s", "prompt": "q\\ud800", "response": "r"}',  # 8
        b"\x00" * 32,  # 9
        b'{"id": "l", "prompt": "q", "response": "' + b"x" * 2_000_000 + b'"}',  # 10
        b'{"id": "m", "messages": "not a list", "response": "r"}',  # 11
        b'{"id": "e", "prompt": "", "response": "r"}',  # 12
        good(3).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    bad = {
        4: "nested 100000 levels deep (max 64)",
        6: "number out of range: 1e999999",
        7: "number too large",
        8: "lone surrogate",
        9: "invalid JSON",
        10: f"line longer than 1048576 bytes ({len(lines[9])} bytes), not read",
        11: "'messages' must be a non-empty list",
        12: "empty prompt",
    }
    return path, bad


def assert_reported(stderr, path, bad, where=None):
    assert "Traceback" not in stderr
    reported = [x for x in stderr.splitlines() if x]
    assert len(reported) == len(bad), stderr[-3000:]
    for line, (no, reason) in zip(reported, bad.items()):
        assert line.startswith(f"{where or path}:{no}: ") and reason in line, line


def test_validate_add_and_stats_report_hostile_lines_by_number(tmp_path, hostile_file):
    path, bad = hostile_file
    r = asrl_data("validate", path, cwd=tmp_path)
    assert r.returncode == 1
    assert_reported(r.stderr, path, bad)
    assert r.stdout.strip() == f"{path}: 3 good, 8 bad, 0 duplicate id(s), 2 blank line(s) skipped"

    dataset = tmp_path / "data.jsonl"
    r = asrl_data("add", path, "--to", dataset, cwd=tmp_path)
    assert r.returncode == 1
    assert_reported(r.stderr, path, bad)
    assert "added 3 record(s)" in r.stdout and "8 bad" in r.stdout
    assert [json.loads(x)["id"] for x in dataset.read_text().splitlines()] == ["g1", "g2", "g3"]

    r = asrl_data("stats", path, cwd=tmp_path)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "3 records" in r.stdout and "8 bad, 2 blank line(s) skipped" in r.stdout
    shown = [x for x in r.stdout.splitlines() if x.startswith("bad: ")]
    assert len(shown) == len(bad)
    for line, (no, reason) in zip(shown, bad.items()):
        assert line.startswith(f"bad: hostile.jsonl:{no}: ") and reason in line, line
    s = json.loads(asrl_data("stats", path, "--json", cwd=tmp_path).stdout)
    assert (s["records"], s["bad"], s["blank_lines"]) == (3, 8, 2)

    # the size cap is a setting: a smaller one makes the long good lines bad too
    r = asrl_data("validate", path, "--max-line-bytes", 40, cwd=tmp_path)
    assert "hostile.jsonl:5: line longer than 40 bytes" in r.stderr


def test_stats_json_counts_what_training_would_absorb(tmp_path):
    dataset = tmp_path / "d.jsonl"
    lines = [good(i) for i in range(200)] + ["{bad", good(5)]
    lines.append(json.dumps({"prompt": "p", "response": "r", "type": "other"}))
    dataset.write_text("\n".join(lines) + "\n")
    r = asrl_data("stats", dataset, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["records"] == 201 and s["bad"] == 1 and s["duplicates"] == 1
    assert s["types"] == {"t": 200, "other": 1}
    assert sum(s["splits"].values()) == 201 and 140 < s["splits"]["train"] < 180
    assert s["bad_examples"][0]["where"] == "d.jsonl:201"
    r = asrl_data("stats", dataset, "--json", "--split", "1,0,0", cwd=tmp_path)
    assert json.loads(r.stdout)["splits"] == {"train": 201, "val": 0, "test": 0}
    text = asrl_data("stats", dataset, cwd=tmp_path)
    assert text.returncode == 0 and "201 records" in text.stdout and "1 bad" in text.stdout
    assert "bad: d.jsonl:201: invalid JSON" in text.stdout
    bad_split = asrl_data("stats", dataset, "--split", "0.5,0.1", cwd=tmp_path)
    assert bad_split.returncode == 2 and "summing to 1" in bad_split.stderr


def test_generate_continues_the_stream_and_switches_pattern(tmp_path):
    dataset = tmp_path / "g.jsonl"
    r = asrl_data("generate", "--to", dataset, "--count", 5, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = asrl_data(
        "generate", "--to", dataset, "--count", 6, "--switch-at", 2, "--switch-to", "percent",
        cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    recs = [parse_line(x.encode()) for x in dataset.read_text().splitlines()]
    ids = [e.id for e in recs]
    assert ids == [f"syn-paper-0-{i}" for i in range(7)] + [f"syn-percent-0-{i}" for i in range(4)]
    assert {e.type for e in recs[7:]} == {"new_pattern"}
    r = asrl_data("generate", "--to", dataset, "--count", 2, "--seed", 3, cwd=tmp_path)
    assert dataset.read_text().splitlines()[-1].startswith('{"id": "syn-paper-3-1"')
    assert asrl_data("generate", "--to", dataset, cwd=tmp_path).returncode == 2  # no count/rate


def test_generate_stops_cleanly_on_sigterm(tmp_path):
    dataset = tmp_path / "g.jsonl"
    cmd = [sys.executable, "-m", "asrl", "data", "generate", "--to", str(dataset)]
    proc = subprocess.Popen([*cmd, "--rate", "50/s"], stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while (not dataset.exists() or dataset.stat().st_size < 2000) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    data = dataset.read_bytes()
    assert data.endswith(b"\n")
    n = len([parse_line(x) for x in data.splitlines()])  # every line a whole record
    assert n >= 3 and f"wrote {n} record(s)" in out


def test_concurrent_writers_never_interleave(tmp_path):
    dataset = tmp_path / "g.jsonl"
    cmd = [sys.executable, "-m", "asrl", "data", "generate", "--to", str(dataset)]
    procs = [
        subprocess.Popen([*cmd, "--rate", "400/s", "--count", "100", "--seed", str(s)])
        for s in (1, 2)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    ids = [parse_line(x).id for x in dataset.read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"syn-paper-{s}-{i}" for s in (1, 2) for i in range(100))


@pytest.mark.parametrize(
    ("text", "per_s"), [("200/h", 200 / 3600), ("60/min", 1.0), ("10/s", 10.0), ("1.5/sec", 1.5)]
)
def test_parse_rate(text, per_s):
    assert parse_rate(text) == pytest.approx(per_s)


@pytest.mark.parametrize("text", ["fast", "10", "0/s", "5/week"])
def test_parse_rate_rejects(text):
    with pytest.raises(Exception, match="COUNT/UNIT"):
        parse_rate(text)
