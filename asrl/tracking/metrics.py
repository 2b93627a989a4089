"""metrics.jsonl (the contract), samples.jsonl, summary.json, and the console lines a user
watches; the same lines go to TensorBoard / trackio / wandb through asrl/tracking/trackers.py."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from asrl.parallel import distributed
from asrl.tracking.jsonl import read_jsonl, rewrite_jsonl
from asrl.tracking.trackers import Tracker, scalar_values


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead, so every line parses with any JSON reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one JSON object per line; every line has ``epoch``, ``phase`` and ``time``.

    Each line also goes to the ``trackers`` (asrl/tracking/trackers.py) as scalars at step = its
    line number (1-based), and sample completions go to samples.jsonl and, as text, to the
    trackers at the step of the metrics line that follows them (the phase or eval they
    belong to). In a multi-process run only the main process writes (``write``); the others
    keep the records in memory.
    """

    def __init__(
        self,
        path: str | Path,
        samples_path: str | Path | None = None,
        trackers: list[Tracker] | None = None,
        write: bool = True,
    ) -> None:
        self.write = write
        self.path = Path(path)
        self.samples_path = Path(samples_path or self.path.with_name("samples.jsonl"))
        self.trackers = list(trackers or [])
        self.records: list[dict[str, Any]] = []
        self.sample_lines = 0  # lines in samples.jsonl (checkpoints record it)

    def log(self, epoch: int, phase: str, metrics: dict[str, Any]) -> dict[str, Any]:
        rec = {"epoch": epoch, "phase": phase, "time": time.time()}
        rec.update({k: _clean(v) for k, v in metrics.items()})
        if self.write:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
        self.records.append(rec)
        for t in self.trackers:
            t.scalars(len(self.records), scalar_values(rec), rec["time"])
        return rec

    def log_samples(
        self, epoch: int, phase: str, samples: list[dict[str, Any]], **marks: Any
    ) -> None:
        """Append completions to samples.jsonl, each marked with epoch, phase and ``marks``."""
        if not samples:
            return
        rows = [{"epoch": epoch, "phase": phase, **marks, **s} for s in samples]
        if self.write:
            with self.samples_path.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(_clean_row(r), ensure_ascii=False) + "\n" for r in rows)
        self.sample_lines += len(rows)
        tag = "/".join(["samples", phase, *map(str, marks.values())])
        for t in self.trackers:
            t.samples(len(self.records) + 1, tag, rows)

    def reload(self, keep_lines: int, keep_samples: int = 0) -> None:
        """On resume: keep the lines the checkpoint had seen, drop what came after it."""
        if self.path.exists():
            self.records = read_jsonl(self.path)[:keep_lines]
        self.sample_lines = keep_samples
        distributed.current().barrier()  # every process has read before the main one rewrites
        if not self.write:
            return
        if self.path.exists():
            rewrite_jsonl(self.path, self.records)
        if self.samples_path.exists():
            rewrite_jsonl(self.samples_path, read_jsonl(self.samples_path)[:keep_samples])
        for t in self.trackers:  # the next line is logged (again) at this step
            t.rewind(len(self.records) + 1)

    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["phase"] == "eval"]

    def close(self, failed: bool = False) -> None:
        """Close the trackers; ``failed``: the run stopped on an error or a signal."""
        for t in self.trackers:
            t.close(failed=failed)


def _clean_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: {kk: _clean(vv) for kk, vv in v.items()} if isinstance(v, dict) else _clean(v)
        for k, v in row.items()
    }


def console(message: str) -> None:
    """Print above any progress bar (the main process only, in a multi-process run)."""
    if distributed.current().is_main:
        tqdm.write(message)


def epoch_line(epoch: int, evals: list[dict[str, Any]], data: dict[str, Any], secs: float) -> str:
    parts = [f"epoch {epoch:>3}"]
    for e in evals:
        parts.append(
            f"{e.get('eval/after', '?')}: fmt {_pct(e.get('eval/format_accuracy'))} "
            f"correct {_pct(e.get('eval/correctness'))} val_loss {_num(e.get('eval/val_loss'))}"
        )
    parts.append(f"train {data.get('data/train_size', '?')} (+{data.get('data/new_examples', 0)})")
    parts.append(f"{secs:.0f}s")
    return " | ".join(parts)


def _pct(v: float | None) -> str:
    return "  n/a" if v is None else f"{100 * v:5.1f}%"


def pct(v: float | None) -> str:
    """A fraction as the epoch lines print it, unpadded: ``0.941 -> "94.1%"``."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_clean))
    tmp.replace(path)
