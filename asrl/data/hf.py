"""Hugging Face ``datasets`` as a record source: a hub dataset, a ``save_to_disk`` directory,
or parquet files.

These are static snapshots: the first poll yields every row, later polls nothing. The cursor
is the number of rows consumed, so a resumed run replays exactly the rows the checkpointed
run had absorbed (the snapshot must not change under a run; growing data belongs in a JSONL
file or directory, or a SQLite table). Columns are renamed to our record fields by a mapping
(``data.columns``); a row that does not parse is quarantined like a bad JSONL line.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asrl.data.source_base import CounterCursor, RawRecord
from asrl.errors import ConfigError

if TYPE_CHECKING:
    from asrl.config import DataConfig

RECORD_FIELDS = ("id", "prompt", "messages", "response", "completion", "answer", "type")
BATCH_ROWS = 1000  # rows converted to Python at a time
SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes
GLOB_CHARS = "*?["


def is_hf_path(text: str) -> bool:
    """True for ``hf:NAME``, a ``save_to_disk`` directory, a ``.parquet`` file or glob, or a
    directory holding parquet files and no JSONL."""
    if text.startswith("hf:"):
        return True
    if text.lower().endswith(".parquet"):
        return True  # a file or a glob, existing or not (a missing one is reported)
    p = Path(text)
    if not p.is_dir():
        return False
    if any((p / m).is_file() for m in SAVED_MARKERS):
        return True
    return any(p.glob("*.parquet")) and not any(p.glob("*.jsonl"))


def map_columns(row: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """A dataset row as a record: mapped columns under our field names, other columns kept
    under their own (they reach reward functions as keyword arguments), nulls left out.

    A column named like a record field that the mapping does not use is dropped: with
    ``answer: final``, a dataset's own ``answer`` column must not shadow ``final``.
    """
    used = set(columns.values())
    out = {f: row[c] for f, c in columns.items() if row.get(c) is not None}
    for key, value in row.items():
        if key not in used and key not in RECORD_FIELDS and value is not None:
            out[key] = value
    return out


class HFSource(CounterCursor):
    """Rows of a Hugging Face dataset or of parquet files, read once, in order."""

    def __init__(
        self,
        spec: str,
        columns: Mapping[str, str] | None = None,
        split: str = "train",
        name: str | None = None,
        revision: str | None = None,
    ) -> None:
        unknown = set(columns or {}) - set(RECORD_FIELDS)
        if unknown:
            raise ConfigError(
                f"data.columns: unknown field(s) {sorted(unknown)}; use {', '.join(RECORD_FIELDS)}"
            )
        self.spec = spec
        self.name = spec  # key of the cursor in checkpoints
        self.columns = {f: f for f in RECORD_FIELDS} | dict(columns or {})
        self.split, self.config_name, self.revision = split, name, revision
        self.cursor = "rows"
        self.rows = 0  # rows consumed
        self.limit: int | None = None  # replaying: stop at this row
        self._dataset: Any = None  # datasets.Dataset, loaded at the first poll
        self.files: list[Path] = []
        self.path: Path | None = None
        if spec.startswith("hf:"):
            self.kind = "hub"
        elif Path(spec).is_dir() and any((Path(spec) / m).is_file() for m in SAVED_MARKERS):
            self.kind, self.path = "saved", Path(spec)
        else:
            self.kind = "parquet"
            self.files = _parquet_files(spec)

    @classmethod
    def from_config(cls, spec: str, data: DataConfig | None) -> HFSource:
        if data is None:
            return cls(spec)
        h = data.hf
        return cls(spec, vars(data.columns), h.split, h.name, h.revision)

    # -- reading ------------------------------------------------------------------------

    def _load(self) -> Any:
        """The ``datasets.Dataset`` of a saved directory or hub dataset (once)."""
        if self._dataset is not None:
            return self._dataset
        try:
            import datasets
        except ImportError as e:  # a core dependency; only a broken install lacks it
            raise ConfigError(f"data.path: {self.spec} needs the 'datasets' package") from e
        if self.kind == "saved":
            ds = datasets.load_from_disk(str(self.path))
        else:
            repo = self.spec[len("hf:") :]
            try:
                ds = datasets.load_dataset(
                    repo, self.config_name, split=self.split, revision=self.revision
                )
            except Exception as e:  # network, auth, unknown name/config/split: all the user's
                raise ConfigError(
                    f"data.path: cannot load the Hugging Face dataset '{repo}' "
                    f"(data.hf: split={self.split!r}, name={self.config_name!r}): "
                    f"{type(e).__name__}: {e}. Without network: load it once where you have "
                    "one and save_to_disk it (or write it to parquet), then point data.path "
                    "at that; a dataset already in the local cache loads with HF_HUB_OFFLINE=1"
                ) from e
        if isinstance(ds, datasets.DatasetDict):
            if self.split not in ds:
                raise ConfigError(
                    f"data.hf.split: '{self.split}' is not a split of {self.spec} "
                    f"(it has {', '.join(ds)})"
                )
            ds = ds[self.split]
        self._dataset = ds.with_format(None)
        return self._dataset

    def _dataset_rows(self, start: int) -> Iterator[dict[str, Any]]:
        ds = self._load()
        for i in range(start, len(ds), BATCH_ROWS):
            batch = ds[i : i + BATCH_ROWS]  # column -> values
            keys = list(batch)
            yield from (dict(zip(keys, values)) for values in zip(*batch.values()))

    def _parquet_rows(self, start: int) -> Iterator[dict[str, Any]]:
        import pyarrow.parquet as pq  # a dependency of datasets

        offset = 0  # rows before the current file
        for f in self.files:
            pf = pq.ParquetFile(f)
            n = pf.metadata.num_rows
            if offset + n <= start:
                offset += n
                continue
            skip = start - offset if start > offset else 0
            for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                rows = batch.to_pylist()
                if skip >= len(rows):
                    skip -= len(rows)
                    continue
                yield from rows[skip:]
                skip = 0
            offset += n

    def _label(self) -> str:
        return self.spec if self.kind == "hub" else Path(self.spec).name or self.spec

    def poll(self) -> Iterator[RawRecord]:
        limit, self.limit = self.limit, None
        rows = self._parquet_rows if self.kind == "parquet" else self._dataset_rows
        label = self._label()
        for row in rows(self.rows):
            if limit is not None and self.rows >= limit:
                return
            i = self.rows
            self.rows += 1
            yield RawRecord(map_columns(row, self.columns), f"{label}:row {i}")


def _parquet_files(spec: str) -> list[Path]:
    """The parquet files of a file, a glob, or a directory (in name order)."""
    if any(c in spec for c in GLOB_CHARS):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True))
    elif Path(spec).is_dir():
        files = sorted(Path(spec).glob("*.parquet"))
    else:
        files = [Path(spec)] if Path(spec).is_file() else []
    files = [f for f in files if f.is_file() and not f.name.startswith(".")]
    if not files:
        raise ConfigError(f"data.path: no parquet file at {spec}")
    return files
