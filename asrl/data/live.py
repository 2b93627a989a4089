"""LiveDataset: sources -> validated, de-duplicated, stably split, versioned examples.

``refresh()`` absorbs what arrived since the last look. Bad records (unparseable, invalid,
over-length, or anything else that fails to parse) go to a quarantine file with the reason
and the source position; training goes on. A record's split depends on its identity only, so held-out examples never leak into
train as the data grows. Only parsed :class:`Example` objects are kept, never raw bytes: a
million short records fit in about a gigabyte.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asrl.data.records import MAX_CHARS, SPLITS, check_length, rejection_reason, split_of
from asrl.data.source_base import RawRecord, Source
from asrl.types import Example

MAX_REPORTED = 100  # rejects listed in a RefreshResult; the quarantine file has them all
# line breaks to str.splitlines() that json.dumps(ensure_ascii=False) leaves raw: escaped in
# the quarantine file, so every reader splits it into the same lines
_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


def jsonl_line(obj: Any) -> bytes:
    """One JSONL line (UTF-8, readable text; a lone surrogate becomes '?')."""
    text = json.dumps(obj, ensure_ascii=False).translate(_LINE_BREAKS)
    return (text + "\n").encode("utf-8", "replace")


@dataclass
class RefreshResult:
    new: int = 0
    rejected: int = 0
    duplicates: int = 0
    blank_lines: int = 0  # blank / whitespace-only JSONL lines skipped (not records)
    new_by_split: dict[str, int] | None = None
    rejects: list[tuple[str, str]] = field(default_factory=list)  # (where, reason), first few
    # (split, example) of every new record, when refresh(keep_added=True): what the main
    # process hands to the others in a multi-process run (asrl.parallel.distributed)
    added: list[tuple[str, Example]] = field(default_factory=list)


class LiveDataset:
    def __init__(
        self,
        sources: list[Source],
        split: list[float] | tuple[float, ...] = (0.8, 0.1, 0.1),
        quarantine: str | Path | None = None,
        max_chars: int | None = MAX_CHARS,
    ) -> None:
        self.sources = sources
        self.split_fractions = list(split)
        self.quarantine = Path(quarantine) if quarantine else None
        self.max_chars = max_chars
        self.splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
        # ids of everything absorbed; a record without an id has a content-hash id, so an
        # exact copy re-sent without one is a duplicate too
        self.seen: set[str] = set()
        self.version = 0
        self.rejected_total = 0

    def __len__(self) -> int:
        return sum(len(v) for v in self.splits.values())

    @property
    def train(self) -> list[Example]:
        return self.splits["train"]

    def sizes(self) -> dict[str, int]:
        return {s: len(v) for s, v in self.splits.items()}

    def _reject(self, raw: RawRecord, reason: str, res: RefreshResult) -> None:
        self.rejected_total += 1
        res.rejected += 1
        if len(res.rejects) < MAX_REPORTED:
            res.rejects.append((raw.where, reason))
        if self.quarantine is None:
            return
        self.quarantine.parent.mkdir(parents=True, exist_ok=True)
        entry = {"time": time.time(), "where": raw.where, "reason": reason, "raw": raw.preview()}
        with self.quarantine.open("ab") as f:
            f.write(jsonl_line(entry))

    def refresh(self, keep_added: bool = False) -> RefreshResult:
        """Absorb new records from every source; the version moves when anything was added."""
        res = RefreshResult(new_by_split={s: 0 for s in SPLITS})
        for source in self.sources:
            blank = getattr(source, "blank_lines", 0)
            for raw in source.poll():
                try:
                    ex = check_length(raw.parse(), self.max_chars)
                except Exception as e:  # any input becomes a record or a reason
                    # (a RecordError, or whatever else a hostile record provoked: the run
                    # goes on either way)
                    self._reject(raw, rejection_reason(e), res)
                    continue
                if ex.id in self.seen:
                    res.duplicates += 1
                    continue
                self.seen.add(ex.id)
                split = split_of(ex.id, self.split_fractions)
                self.splits[split].append(ex)
                res.new += 1
                res.new_by_split[split] += 1
                if keep_added:
                    res.added.append((split, ex))
            res.blank_lines += getattr(source, "blank_lines", 0) - blank
        if res.new:
            self.version += 1
        return res

    def absorb(self, added: list[tuple[str, Example]]) -> None:
        """Take records another process's ``refresh(keep_added=True)`` absorbed, in order."""
        for split, ex in added:
            self.seen.add(ex.id)
            self.splits[split].append(ex)
        if added:
            self.version += 1

    def state(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "cursors": {s.name: s.state() for s in self.sources},
        }
