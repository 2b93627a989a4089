"""The one way records are written to a JSONL dataset: under its writer lock, in whole lines.

Writers cooperate through an exclusive ``flock`` on ``DATASET.lock`` and append only
complete lines, each batch in one ``write``: a reader tailing the file (``JsonlFile``) sees
either nothing or whole records, and two writers never interleave their lines. ``asrl data
add`` / ``generate``, a run's ``data.inject`` and ``asrl compare``'s shared dataset all
write through here.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asrl.data.format import ThinkingFormat
from asrl.data.synthetic import generate_records


@contextmanager
def locked(dataset: Path) -> Iterator[None]:
    """Hold the dataset's writer lock (a separate file: the dataset itself may be replaced)."""
    dataset.parent.mkdir(parents=True, exist_ok=True)
    with open(dataset.with_name(dataset.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_lines(dataset: Path, lines: list[bytes], sync: bool = True) -> None:
    """Append complete lines in one write. The caller holds :func:`locked`."""
    if not lines:
        return
    payload = b"".join(line + b"\n" for line in lines)
    fd = os.open(dataset, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # a line left unfinished by a crashed (or non-locking) writer: end it, so it is
            # one bad record instead of corrupting our first one
            payload = b"\n" + payload
        view = memoryview(payload)
        while view:  # one write() for regular files in practice; loop in case it is short
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def append_records(dataset: Path, records: list[dict[str, Any]], once: bool = False) -> bool:
    """Append ``records`` as JSON lines, holding the writer lock; True if they were written.

    ``once``: skip the append when the file already holds the first record's id (a resumed
    run redoing the epoch that appended them); the check and the append share the lock, and
    the file is read line by line, never whole.
    """
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]
    with locked(dataset):
        if once and records and _holds_id(dataset, records[0]["id"]):
            return False
        append_lines(dataset, lines)
    return True


def _holds_id(dataset: Path, record_id: str) -> bool:
    needle = json.dumps(record_id, ensure_ascii=False).encode("utf-8")
    if not dataset.exists():
        return False
    with dataset.open("rb") as f:
        return any(needle in line for line in f)


def write_synthetic(path: str | Path, count: int, seed: int, mix: str, fmt: ThinkingFormat) -> int:
    """Write ``count`` synthetic records to a new JSONL file (atomically); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):  # no writer appends to a file that is about to be replaced
        _write_new(path, count, seed, mix, fmt)
    return count


def _write_new(path: Path, count: int, seed: int, mix: str, fmt: ThinkingFormat) -> None:
    tmp = path.with_name(f".{path.name}.{random.getrandbits(32):08x}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in generate_records(count, seed=seed, fmt=fmt, mix=mix):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
