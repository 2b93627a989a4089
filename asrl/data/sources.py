"""Record sources that can be polled for what arrived since the last look.

A source yields raw records with their position (for quarantine reports) and keeps a cursor
that checkpoints store, so a resumed run neither skips nor re-reads data. Every source feeds
the same record schema (:mod:`asrl.data.records`).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

from asrl.data.format import ThinkingFormat
from asrl.data.records import BOM, MAX_LINE_BYTES, is_blank
from asrl.data.source_base import PREVIEW_BYTES, CounterCursor, RawRecord, Source

if TYPE_CHECKING:
    from asrl.config import DataConfig


READ_CHUNK = 1 << 22  # bytes per read: a 200 MB file is never held in memory at once


SQL_BATCH = 2000  # rows per query: each query is a short read, so writers are never starved


SQL_COLUMNS = ("id", "prompt", "messages", "response", "completion", "answer", "type")


SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def scan_lines(
    f: BinaryIO,
    start: int,
    max_line_bytes: int,
    limit: int | None = None,
    final: bool = False,
) -> Iterator[tuple[int, bytes, int]]:
    """The lines of an open binary file from byte ``start``: ``(bytes consumed, line, its
    length)``, the line without its newline.

    Only complete lines come, unless ``final`` (a finished file: its last line needs no
    newline). A line longer than ``max_line_bytes`` is never held whole: its first
    ``PREVIEW_BYTES`` come with its true length, the rest is skipped up to the next newline.
    ``limit``: stop at this offset (a line boundary).
    """
    pos, tail = start, b""  # tail: the unfinished line so far (at most max_line_bytes)
    skipping = -1  # >= 0: length so far of an over-long line being skipped
    while limit is None or pos < limit:
        chunk = f.read(READ_CHUNK if limit is None else min(READ_CHUNK, limit - pos))
        if not chunk:
            break
        pos += len(chunk)
        if skipping >= 0:
            nl = chunk.find(b"\n")
            if nl < 0:
                skipping += len(chunk)
                continue
            yield skipping + nl + 1, tail, skipping + nl
            skipping, tail, chunk = -1, b"", chunk[nl + 1 :]
        buf = tail + chunk
        end = buf.rfind(b"\n")
        if end >= 0:
            for line in buf[:end].split(b"\n"):
                yield len(line) + 1, line, len(line)
            buf = buf[end + 1 :]
        if len(buf) > max_line_bytes:
            skipping, tail = len(buf), buf[:PREVIEW_BYTES]
        else:
            tail = buf
    if final and (skipping >= 0 or tail):
        n = skipping if skipping >= 0 else len(tail)
        yield n, tail, n


class JsonlFile:
    """A JSONL file being appended to, read from the last byte offset.

    Only complete lines are consumed: a last line without its newline yet is a write in
    progress and is left for the next poll, neither parsed nor lost (``final``: a finished
    file, whose last line counts without one). Blank and whitespace-only lines are skipped
    (counted in ``blank_lines``), a UTF-8 byte order mark at offset 0 is dropped, and a line
    longer than ``max_line_bytes`` is skipped while reading and comes as a bad record.
    """

    def __init__(
        self,
        path: str | Path,
        max_line_bytes: int = MAX_LINE_BYTES,
        label: str | None = None,
        final: bool = False,
    ) -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.label = label or self.path.name  # positions read "LABEL:LINE"
        self.max_line_bytes = max_line_bytes
        self.final = final
        self.offset = 0
        self.line_no = 0
        self.blank_lines = 0  # skipped by the polls of this object
        self.limit: int | None = None  # stop at this offset (replaying up to a checkpoint)

    def poll(self) -> Iterator[RawRecord]:
        if not self.path.exists():
            return
        limit, self.limit = self.limit, None
        cap = self.max_line_bytes
        with self.path.open("rb") as f:
            f.seek(self.offset)
            for size, line, n in scan_lines(f, self.offset, cap, limit, self.final):
                # the cursor moves line by line, so a consumer that stops early resumes
                # exactly after the last record it took
                first = self.offset == 0
                self.line_no += 1
                self.offset += size
                where = f"{self.label}:{self.line_no}"
                if n > cap:
                    reason = (
                        f"line longer than {cap} bytes ({n} bytes), not read; the limit is "
                        "data.max_line_bytes (asrl data: --max-line-bytes)"
                    )
                    yield RawRecord(line[:PREVIEW_BYTES], where, error=reason)
                    continue
                if first and line.startswith(BOM):
                    line = line[len(BOM) :]
                line = line.rstrip(b"\r")
                if is_blank(line):
                    self.blank_lines += 1
                    continue
                yield RawRecord(line, where)

    def state(self) -> dict[str, Any]:
        return {"offset": self.offset, "line_no": self.line_no}

    def restore(self, state: dict[str, Any]) -> None:
        self.offset, self.line_no = int(state["offset"]), int(state["line_no"])

    def restore_until(self, state: dict[str, Any]) -> None:
        """Replay from the start up to a saved cursor: the next poll returns exactly the
        records the checkpointed run had absorbed (the dataset is rebuilt, not stored)."""
        self.offset, self.line_no, self.limit = 0, 0, int(state["offset"])


class JsonlDir:
    """A directory of JSONL files; files that appear later are picked up, each one tailed.

    Files are read in name order. Names starting with a dot are skipped: they are the
    temporary files of writers that publish by rename.
    """

    def __init__(
        self, path: str | Path, pattern: str = "*.jsonl", max_line_bytes: int = MAX_LINE_BYTES
    ) -> None:
        self.path = Path(path)
        self.pattern = pattern
        self.max_line_bytes = max_line_bytes
        self.name = str(self.path)
        self.files: dict[str, JsonlFile] = {}  # relative name -> its tail
        self.only: set[str] | None = None  # replaying: the files the checkpoint knew

    def poll(self) -> Iterator[RawRecord]:
        only, self.only = self.only, None
        if only is None and self.path.is_dir():
            for p in self.path.glob(self.pattern):
                name = p.relative_to(self.path).as_posix()
                if name not in self.files and not p.name.startswith(".") and p.is_file():
                    self.files[name] = JsonlFile(p, self.max_line_bytes)
        for name in sorted(self.files):
            if only is None or name in only:
                yield from self.files[name].poll()

    @property
    def blank_lines(self) -> int:
        return sum(f.blank_lines for f in self.files.values())

    def state(self) -> dict[str, Any]:
        return {"files": {name: f.state() for name, f in self.files.items()}}

    def _load(self, state: dict[str, Any], until: bool) -> None:
        self.files = {}
        for name, cursor in state["files"].items():
            f = self.files[name] = JsonlFile(self.path / name, self.max_line_bytes)
            f.restore_until(cursor) if until else f.restore(cursor)

    def restore(self, state: dict[str, Any]) -> None:
        self._load(state, until=False)

    def restore_until(self, state: dict[str, Any]) -> None:
        """Replay every file up to its saved cursor; files that appeared after the
        checkpoint are left for the poll after the replay."""
        self._load(state, until=True)
        self.only = set(self.files)


class SqliteTable(CounterCursor):
    """A SQLite table read incrementally by rowid (rows are appended, not edited).

    Opened read-only: the trainer never locks a writer out or creates a database by mistake.
    A database or table that does not exist yet simply has no rows.
    """

    def __init__(self, path: str | Path, table: str = "records") -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            raise ValueError(f"table name {table!r} is not a plain SQL identifier")
        self.path = Path(path)
        self.table = table
        self.name = f"sqlite:{self.path}:{table}"
        self.cursor = "rowid"
        self.rowid = 0
        self.limit: int | None = None  # replaying: stop at this rowid

    def _connect(self) -> sqlite3.Connection | None:
        if not self.path.is_file():
            return None
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            return sqlite3.connect(uri, uri=True, timeout=30)
        except sqlite3.OperationalError:
            return None

    def poll(self) -> Iterator[RawRecord]:
        limit, self.limit = self.limit, None
        conn = self._connect()
        if conn is None:
            return
        try:
            info = conn.execute(f'PRAGMA table_info("{self.table}")').fetchall()
            present = {row[1].lower(): row[1] for row in info}
            cols = [c for c in SQL_COLUMNS if c in present]
            if not cols:
                return
            # text as bytes: a non-UTF-8 cell must become one quarantined row, not an error
            # that stops every later row from being read
            conn.text_factory = bytes
            select = ", ".join(f'"{present[c]}"' for c in cols)
            sql = f'SELECT rowid, {select} FROM "{self.table}" WHERE rowid > ?'
            sql += " AND rowid <= ?" if limit is not None else ""
            sql += f" ORDER BY rowid LIMIT {SQL_BATCH}"
            while True:
                params = (self.rowid,) if limit is None else (self.rowid, limit)
                rows = conn.execute(sql, params).fetchall()
                for row in rows:
                    self.rowid = row[0]
                    data = {c: v for c, v in zip(cols, row[1:]) if v is not None}
                    yield RawRecord(data, f"{self.path.name}:rowid {row[0]}")
                if len(rows) < SQL_BATCH:
                    break
        finally:
            conn.close()


def open_source(
    path: str | Path, data: DataConfig | None = None, fmt: ThinkingFormat | None = None
) -> Source:
    """The source for a dataset path (``data.path``); ``data`` holds the settings of Hugging
    Face and reasoning-gym sources (defaults when None), ``fmt`` the thinking format that
    generated references are rendered in.

    * ``reasoning_gym:TASK`` — a reasoning-gym generator, growing at every poll;
    * ``hf:OWNER/NAME`` — a Hugging Face hub dataset (needs network or the local cache);
    * a ``save_to_disk`` directory, a ``.parquet`` file, a directory or glob of them — a
      static snapshot, read once;
    * ``sqlite:PATH[:TABLE]`` or a ``.db``/``.sqlite``/``.sqlite3`` file — a SQLite table;
    * a directory (of JSONL files), else a JSONL file.
    """
    text = str(path)
    if text.startswith("reasoning_gym:"):
        from asrl.data.gym import ReasoningGymSource

        rg = data.reasoning_gym if data is not None else None
        return ReasoningGymSource.from_config(text.split(":", 1)[1], rg, fmt)
    if text.startswith("sqlite:"):
        rest = text[len("sqlite:") :]
        db, sep, table = rest.rpartition(":")
        if sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            return SqliteTable(db, table)
        return SqliteTable(rest)
    from asrl.data.hf import HFSource, is_hf_path

    if is_hf_path(text):
        return HFSource.from_config(text, data)
    p = Path(text)
    cap = data.max_line_bytes if data is not None else MAX_LINE_BYTES
    if p.is_dir():
        return JsonlDir(p, max_line_bytes=cap)
    if p.suffix.lower() in SQLITE_SUFFIXES:
        return SqliteTable(p)
    return JsonlFile(p, cap)
