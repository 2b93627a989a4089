"""What every data source is: a :class:`Source` yields :class:`RawRecord` s from a cursor it can
save and restore; :class:`CounterCursor` is the cursor of sources that count what they produced."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from asrl.data.records import parse_line, parse_row
from asrl.errors import RecordError
from asrl.types import Example

PREVIEW_BYTES = 4096  # of an over-long line: what the quarantine file shows


@dataclass(frozen=True)
class RawRecord:
    """One record as a source found it, before validation.

    ``data`` is a JSONL line (bytes, without its newline) or a database row (column -> value);
    both are parsed into the one schema by :meth:`parse`.
    """

    data: bytes | dict[str, Any]
    where: str  # "file.jsonl:12" (line number) or "file.db:rowid 7", for error reports
    error: str | None = None  # a generator that failed on this item: the quarantine reason

    def parse(self) -> Example:
        if self.error is not None:
            raise RecordError(self.error)
        return parse_line(self.data) if isinstance(self.data, bytes) else parse_row(self.data)

    def preview(self, limit: int = PREVIEW_BYTES) -> str:
        """The raw record as text, for the quarantine file (whatever the record holds)."""
        if isinstance(self.data, bytes):
            return self.data[:limit].decode("utf-8", errors="replace")
        row = {
            k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            for k, v in self.data.items()
        }
        try:
            text = json.dumps(row, ensure_ascii=False, default=repr)
        except Exception as e:  # nested too deep to print, say: the reason tells the rest
            text = f"<row not printable: {type(e).__name__}>"
        return text[:limit].encode("utf-8", "replace").decode("utf-8")  # lone surrogates: ?


class Source(Protocol):
    name: str  # key of this source's cursor in checkpoints

    def poll(self) -> Iterator[RawRecord]: ...
    def state(self) -> dict[str, Any]: ...
    def restore(self, state: dict[str, Any]) -> None: ...
    def restore_until(self, state: dict[str, Any]) -> None: ...


class CounterCursor:
    """State for a source whose position is one integer, the attribute named ``cursor``
    (a row id, a row count, an item index); ``limit`` caps a replay (``restore_until``)."""

    cursor: str
    limit: int | None

    def state(self) -> dict[str, Any]:
        return {self.cursor: getattr(self, self.cursor)}

    def restore(self, state: dict[str, Any]) -> None:
        setattr(self, self.cursor, int(state[self.cursor]))

    def restore_until(self, state: dict[str, Any]) -> None:
        """Replay from the start up to a saved cursor (see JsonlFile.restore_until)."""
        setattr(self, self.cursor, 0)
        self.limit = int(state[self.cursor])
