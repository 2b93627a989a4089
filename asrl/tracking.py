"""metrics.jsonl (the contract), summary.json, and the console lines a user watches."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from asrl import distributed


def _clean(value: Any) -> Any:
    """JSON has no NaN: write null instead, so every line parses with any JSON reader."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one JSON object per line; every line has ``epoch``, ``phase`` and ``time``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []

    def log(self, epoch: int, phase: str, metrics: dict[str, Any]) -> dict[str, Any]:
        rec = {"epoch": epoch, "phase": phase, "time": time.time()}
        rec.update({k: _clean(v) for k, v in metrics.items()})
        if distributed.current().is_main:  # other processes keep the records, write nothing
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(rec) + "\n")
                f.flush()
        self.records.append(rec)
        return rec

    def reload(self, keep_lines: int) -> None:
        """On resume: keep the lines the checkpoint had seen, drop what came after it."""
        if not self.path.exists():
            return
        self.records = read_jsonl(self.path)[:keep_lines]
        d = distributed.current()
        d.barrier()  # everyone has read it before the main process rewrites it
        if d.is_main:
            rewrite_jsonl(self.path, self.records)

    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["phase"] == "eval"]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Objects of a JSONL file; a line cut short by a killed writer (the last one) is skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def rewrite_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Replace a JSONL file atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tmp.replace(path)


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


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_clean))
    tmp.replace(path)
