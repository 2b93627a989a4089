"""The one reader (and atomic rewriter) of JSONL files a run writes: metrics.jsonl,
samples.jsonl. Imports nothing heavy, so analysis and plotting stay quick to start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
