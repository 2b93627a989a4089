"""Record sources that can be polled for what arrived since the last look.

A source yields raw records with their position (for quarantine reports) and keeps a cursor
that checkpoints store, so a resumed run neither skips nor re-reads data.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from asrl.data.format import ThinkingFormat
from asrl.data.synthetic import generate_records


@dataclass(frozen=True)
class RawRecord:
    data: bytes  # one JSONL line without its newline
    where: str  # "file.jsonl:12" (line number) for error reports


class Source(Protocol):
    name: str

    def poll(self) -> Iterator[RawRecord]: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...


class JsonlFile:
    """A JSONL file being appended to, read from the last byte offset.

    Only complete lines are consumed: a last line without its newline yet is a write in
    progress and is left for the next poll, neither parsed nor lost.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.offset = 0
        self.line_no = 0
        self.limit: int | None = None  # stop at this offset (replaying up to a checkpoint)

    def poll(self) -> Iterator[RawRecord]:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read() if self.limit is None else f.read(max(self.limit - self.offset, 0))
        self.limit = None
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        for line in chunk[: end + 1].split(b"\n")[:-1]:
            self.line_no += 1
            self.offset += len(line) + 1
            if line.strip():
                yield RawRecord(line.rstrip(b"\r"), f"{self.path.name}:{self.line_no}")

    def state(self) -> dict[str, Any]:
        return {"offset": self.offset, "line_no": self.line_no}

    def restore(self, state: dict[str, Any]) -> None:
        self.offset, self.line_no = int(state["offset"]), int(state["line_no"])

    def restore_until(self, state: dict[str, Any]) -> None:
        """Replay from the start up to a saved cursor: the next poll returns exactly the
        records the checkpointed run had absorbed (the dataset is rebuilt, not stored)."""
        self.offset, self.line_no, self.limit = 0, 0, int(state["offset"])


def write_synthetic(path: str | Path, count: int, seed: int, mix: str, fmt: ThinkingFormat) -> int:
    """Write ``count`` synthetic records to a new JSONL file (atomically); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{random.getrandbits(32):08x}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in generate_records(count, seed=seed, fmt=fmt, mix=mix):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return count
