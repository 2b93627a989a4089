"""The one dataset writer: every append waits for the writer lock and lands as whole lines."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from asrl.data.format import ThinkingFormat
from asrl.data.writer import append_records, write_synthetic

HOLD_LOCK = (
    "import sys; from pathlib import Path; from asrl.data.writer import locked\n"
    "with locked(Path(sys.argv[1])):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.readline()\n"
)


def test_appends_wait_for_another_writers_lock(tmp_path):
    dataset = tmp_path / "train.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(dataset)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        records = [{"id": f"r{i}", "prompt": "q", "response": "a"} for i in range(3)]
        writer = threading.Thread(target=append_records, args=(dataset, records))
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive()  # blocked on the lock another process holds
        assert not dataset.exists() or dataset.read_text() == ""
        holder.stdin.write("\n")
        holder.stdin.flush()
        writer.join(timeout=30)
        assert not writer.is_alive()
    finally:
        holder.kill() if holder.poll() is None else None
    lines = dataset.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["r0", "r1", "r2"]


def test_a_new_synthetic_dataset_is_written_whole(tmp_path):
    dataset = tmp_path / "d" / "train.jsonl"
    assert write_synthetic(dataset, 5, seed=0, mix="paper", fmt=ThinkingFormat()) == 5
    append_records(dataset, [{"id": "extra", "prompt": "q", "response": "a"}])
    ids = [json.loads(line)["id"] for line in dataset.read_text().splitlines()]
    assert len(ids) == 6 and ids[-1] == "extra"


def test_an_append_once_is_skipped_when_its_records_are_there(tmp_path):
    dataset = tmp_path / "train.jsonl"
    records = [{"id": f"inj-{i}", "prompt": "q", "response": "a"} for i in range(2)]
    assert append_records(dataset, records, once=True) is True
    append_records(dataset, [{"id": "other", "prompt": "q", "response": "a"}])
    assert append_records(dataset, records, once=True) is False  # a resumed run's redo
    assert append_records(dataset, records) is True  # without once: appended again
    ids = [json.loads(line)["id"] for line in dataset.read_text().splitlines()]
    assert ids == ["inj-0", "inj-1", "other", "inj-0", "inj-1"]
