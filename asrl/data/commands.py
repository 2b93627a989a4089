"""``asrl data add|validate|stats|generate``: manage a dataset while a run may be reading it.

Writers cooperate through an exclusive ``flock`` on ``DATASET.lock`` and append only
complete lines, each batch in one ``write``: a reader tailing the file (``JsonlFile``) sees
either nothing or whole records, and two writers never interleave their lines.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from asrl.data.format import ThinkingFormat
from asrl.data.live import LiveDataset
from asrl.data.records import (
    MAX_CHARS,
    MAX_LINE_BYTES,
    RecordError,
    check_length,
    parse_line,
    rejection_reason,
)
from asrl.data.source_base import RawRecord, Source
from asrl.data.sources import JsonlFile, open_source
from asrl.data.synthetic import MIXES, make_record
from asrl.data.writer import append_lines, locked
from asrl.types import Example

GENERATE_BATCH = 10_000  # lines per write when generating without a rate
_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600}
_UNITS |= {"hr": 3600, "hour": 3600}


def read_records(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> JsonlFile:
    """A finished JSONL file read as the trainer reads it (blank lines skipped, a BOM at the
    start dropped, over-long lines bad), its last line counted even without a newline;
    positions read ``PATH:LINE``. Iterate ``.poll()``; ``.blank_lines`` counts the blanks."""
    return JsonlFile(path, max_line_bytes, label=str(path), final=True)


def check_line(line: bytes, max_chars: int | None) -> Example:
    """The rules LiveDataset applies, so what ``add`` accepts the trainer absorbs."""
    return check_length(parse_line(line), max_chars)


def check_raw(raw: RawRecord, max_chars: int | None) -> Example:
    """:func:`check_line` for a line as :func:`read_records` yields it; any failure is a
    :class:`~asrl.data.records.RecordError` (the reason), never another exception."""
    try:
        return check_length(raw.parse(), max_chars)
    except Exception as e:  # whatever a hostile line provokes: a reason, like the trainer's
        raise RecordError(rejection_reason(e)) from e


def existing_ids(dataset: Path, max_chars: int | None, max_line_bytes: int) -> set[str]:
    ids: set[str] = set()
    if dataset.exists():
        for raw in read_records(dataset, max_line_bytes).poll():
            with suppress(RecordError):  # a bad record holds no id: the trainer drops it
                ids.add(check_raw(raw, max_chars).id)
    return ids


def _missing(cmd: str, path: Path) -> int:
    print(f"asrl data {cmd}: {path}: no such file", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------------
# add / validate / stats


def _validate_file(
    path: Path, max_chars: int | None, max_line_bytes: int
) -> tuple[list[tuple[bytes, str]], int, int]:
    """Good lines with their ids, the number of bad ones (each reported on stderr as
    ``PATH:LINE: reason``) and of blank lines skipped."""
    good, bad = [], 0
    src = read_records(path, max_line_bytes)
    for raw in src.poll():
        try:
            good.append((raw.data, check_raw(raw, max_chars).id))
        except RecordError as e:
            bad += 1
            print(f"{raw.where}: {e}", file=sys.stderr)
    return good, bad, src.blank_lines


def cmd_add(args: argparse.Namespace) -> int:
    src, dataset = Path(args.file), Path(args.to)
    if not src.is_file():
        return _missing("add", src)
    if dataset.is_dir():
        print(f"asrl data add: {dataset} is a directory; --to takes a JSONL file", file=sys.stderr)
        return 2
    # before the lock: writers wait less
    good, bad, _ = _validate_file(src, args.max_chars, args.max_line_bytes)
    with locked(dataset):
        seen = existing_ids(dataset, args.max_chars, args.max_line_bytes)
        new = []
        for line, rid in good:
            if rid not in seen:  # also drops a record repeated inside FILE
                seen.add(rid)
                new.append(line)
        append_lines(dataset, new)
    skipped = len(good) - len(new)
    print(
        f"added {len(new)} record(s) to {dataset}; {bad} bad (not added), "
        f"{skipped} already present (skipped)"
    )
    return 1 if bad else 0


def cmd_validate(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        return _missing("validate", path)
    good, bad, blank = _validate_file(path, args.max_chars, args.max_line_bytes)
    dup = len(good) - len({rid for _, rid in good})
    skipped = f", {blank} blank line(s) skipped" if blank else ""
    print(f"{path}: {len(good)} good, {bad} bad, {dup} duplicate id(s){skipped}")
    return 1 if bad else 0


def _fractions(text: str) -> list[float]:
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise argparse.ArgumentTypeError("three fractions summing to 1, e.g. 0.8,0.1,0.1")
    return parts


def dataset_stats(source: Source, split: list[float], max_chars: int | None) -> dict[str, Any]:
    """What a training run would absorb from ``source`` (any kind), and what it would not."""
    ds = LiveDataset([source], split, max_chars=max_chars)
    res = ds.refresh()
    types = Counter(e.type for part in ds.splits.values() for e in part)
    return {
        "path": source.name,
        "records": len(ds),
        "splits": ds.sizes(),
        "split_fractions": split,
        "types": dict(types.most_common()),
        "duplicates": res.duplicates,
        "bad": res.rejected,
        "blank_lines": res.blank_lines,
        "bad_examples": [{"where": w, "reason": r} for w, r in res.rejects[:10]],
    }


def cmd_stats(args: argparse.Namespace) -> int:
    from asrl.config import DataConfig

    source = open_source(args.dataset, DataConfig(max_line_bytes=args.max_line_bytes))
    path = getattr(source, "path", None)
    if isinstance(path, Path) and not path.exists():  # a source would just be empty
        return _missing("stats", path)
    s = dataset_stats(source, args.split, args.max_chars)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    sp = s["splits"]
    print(f"{s['path']}: {s['records']} records (train {sp['train']} / val {sp['val']} / "
          f"test {sp['test']}), {s['duplicates']} duplicates, {s['bad']} bad"
          + (f", {s['blank_lines']} blank line(s) skipped" if s["blank_lines"] else ""))  # fmt: skip
    if s["types"]:
        print("types: " + ", ".join(f"{t} {n}" for t, n in s["types"].items()))
    for b in s["bad_examples"]:
        print(f"bad: {b['where']}: {b['reason']}")
    return 0


# ---------------------------------------------------------------------------------------
# generate


def parse_rate(text: str) -> float:
    """``200/h``, ``60/min``, ``10/s`` -> records per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+?)s?\s*", text.lower())
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected COUNT/UNIT, e.g. 200/h, 60/min, 10/s")
    return float(m.group(1)) / _UNITS[m.group(2)]


def next_index(dataset: Path, mix: str, seed: int) -> int:
    """One past the highest index of stream (seed, mix) already in the dataset, so a second
    generator run continues the stream instead of re-sending ids (which would be dropped)."""
    pattern = re.compile(rb'"id":\s*"syn-' + re.escape(f"{mix}-{seed}-".encode()) + rb'(\d+)"')
    top = -1
    if dataset.exists():
        for raw in read_records(dataset).poll():
            if raw.error is None and (m := pattern.search(raw.data)):
                top = max(top, int(m.group(1)))
    return top + 1


def _line(rec: dict) -> bytes:
    return json.dumps(rec, ensure_ascii=False).encode()


def cmd_generate(args: argparse.Namespace) -> int:
    if args.count is None and args.rate is None:
        print("asrl data generate: give --count N, or --rate to write until stopped",
              file=sys.stderr)  # fmt: skip
        return 2
    if (args.switch_at is None) != (args.switch_to is None):
        print("asrl data generate: --switch-at and --switch-to go together", file=sys.stderr)
        return 2
    dataset = Path(args.to)
    fmt = ThinkingFormat()
    if args.config:
        from asrl.config import load_config

        fmt = load_config(args.config).format.spec()
    mixes = [args.pattern] + ([args.switch_to] if args.switch_to else [])
    with locked(dataset):
        nxt = {m: next_index(dataset, m, args.seed) for m in mixes}
    if args.start is not None:
        nxt[args.pattern] = args.start

    def record(i: int) -> bytes:  # the i-th record of this run, from whichever mix is active
        mix = args.pattern if args.switch_at is None or i < args.switch_at else args.switch_to
        nxt[mix] += 1
        return _line(make_record(args.seed, nxt[mix] - 1, fmt, mix))

    written, first = 0, dict(nxt)
    if args.rate is None:  # everything now, in a few large appends
        while written < args.count:
            batch = [record(written + j) for j in range(min(GENERATE_BATCH, args.count - written))]
            with locked(dataset):
                append_lines(dataset, batch)
            written += len(batch)
    else:
        written = _paced(dataset, record, args.rate, args.count)
    ranges = ", ".join(f"{m} {first[m]}..{nxt[m] - 1}" for m in mixes if nxt[m] > first[m])
    print(f"wrote {written} record(s) to {dataset} (seed {args.seed}: {ranges or 'none'})")
    return 0


def _paced(dataset: Path, record: Callable[[int], bytes], rate: float, count: int | None) -> int:
    """Append one record at a time at ``rate``/s until ``count`` or SIGINT/SIGTERM.

    The signal only sets a flag, checked between records, so the file always ends with a
    complete line; the schedule is absolute (t0 + i/rate), so pacing does not drift.
    """
    stop: list[int] = []
    handler = lambda signum, frame: stop.append(signum)  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    written, t0 = 0, time.monotonic()
    try:
        while not stop and (count is None or written < count):
            while not stop and (wait := t0 + written / rate - time.monotonic()) > 0:
                time.sleep(min(wait, 0.1))
            if stop:
                break
            line = record(written)
            with locked(dataset):
                append_lines(dataset, [line], sync=False)  # visible to readers at once
            written += 1
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return written


# ---------------------------------------------------------------------------------------
# parser


def register(subparsers: Any) -> None:
    """Add ``data`` and its subcommands to the ``asrl`` parser."""
    data = subparsers.add_parser("data", help="add, validate, describe or generate records")
    sub = data.add_subparsers(dest="data_command", required=True)

    def max_chars(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-chars", type=int, default=MAX_CHARS,
                       help=f"longest prompt + response accepted (default {MAX_CHARS})")  # fmt: skip
        p.add_argument("--max-line-bytes", type=int, default=MAX_LINE_BYTES,
                       help="longest line read; longer ones are bad, skipped unread "
                       f"(default {MAX_LINE_BYTES}, as data.max_line_bytes)")  # fmt: skip

    a = sub.add_parser("add", help="validate FILE and append its good records to DATASET")
    a.add_argument("file", help="JSONL file of records to add")
    a.add_argument("--to", required=True, metavar="DATASET", help="JSONL dataset to append to")
    max_chars(a)
    a.set_defaults(func=cmd_add)

    v = sub.add_parser("validate", help="check every record of FILE; exit 1 on any bad one")
    v.add_argument("file")
    max_chars(v)
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("stats", help="counts, split sizes, types, duplicates, bad records")
    s.add_argument("dataset", help="JSONL file, directory of JSONL files, or SQLite database")
    s.add_argument("--split", type=_fractions, default=[0.8, 0.1, 0.1], help="train,val,test")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    max_chars(s)
    s.set_defaults(func=cmd_stats)

    g = sub.add_parser("generate", help="append synthetic records, optionally at a rate")
    g.add_argument("--to", required=True, metavar="DATASET")
    g.add_argument("--rate", type=parse_rate, help="e.g. 200/h, 60/min, 10/s (default: at once)")
    g.add_argument("--pattern", default="paper", choices=sorted(MIXES), help="mix to draw from")
    g.add_argument("--count", type=int, help="stop after N records (default: until stopped)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--start", type=int, help="first index (default: after the file's last)")
    g.add_argument("--switch-at", type=int, metavar="N", help="switch mix after N records")
    g.add_argument("--switch-to", choices=sorted(MIXES), metavar="MIX", help="e.g. percent")
    g.add_argument("-c", "--config", help="take the thinking-format tags from this config")
    g.set_defaults(func=cmd_generate)
