"""Absorbing new records should cost the same whether 10k or 1M records are already loaded.

    python benchmarks/absorb.py                       # 10k and 1M existing, +1000 new
    python benchmarks/absorb.py --sizes 10000,100000 --new 500

Each size runs in a fresh process, so the peak RSS reported belongs to that size alone.
The absorb figure is the median of a few rounds (this machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from asrl.data.live import LiveDataset
from asrl.data.sources import JsonlFile

# a typical short thinking-format record (~230 bytes); ids and numbers differ per line
TEMPLATE = (
    '{{"id": "b{i}", "prompt": "What is {a} + {b}?", "response": "<|thinking|>\\n[LOGIC]'
    "{a} + {b} = {c}[/LOGIC]\\n[INTUITION]About {c}, looks right.[/INTUITION]\\n"
    '<|/thinking|>\\n{c}", "answer": "{c}", "type": "simple"}}\n'
)
ROUNDS = 5


def write_records(path: Path, start: int, n: int) -> None:
    with path.open("a", encoding="utf-8") as f:
        for lo in range(start, start + n, 50_000):  # bounded memory while writing 1M
            hi = min(lo + 50_000, start + n)
            f.write("".join(TEMPLATE.format(i=i, a=i % 997, b=i // 997, c=i % 997 + i // 997)
                            for i in range(lo, hi)))  # fmt: skip


def measure(existing: int, new: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.jsonl"
        write_records(path, 0, existing)
        size_mb = path.stat().st_size / 2**20
        ds = LiveDataset([JsonlFile(path)])
        t0 = time.perf_counter()
        res = ds.refresh()
        load_s = time.perf_counter() - t0
        assert res.new == existing, res
        absorb = []
        for r in range(ROUNDS):
            write_records(path, existing + r * new, new)
            t0 = time.perf_counter()
            res = ds.refresh()
            absorb.append(time.perf_counter() - t0)
            assert res.new == new and res.rejected == 0, res
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "existing": existing,
        "file_mb": size_mb,
        "load_s": load_s,
        "absorb_s": statistics.median(absorb),
        "rss_mb": rss_mb,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,1000000", help="existing record counts")
    ap.add_argument("--new", type=int, default=1000, help="records appended per round")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.new)))
        return
    print(f"{'existing':>10} {'file MB':>8} {'load s':>8} {f'absorb {args.new} s':>14} "
          f"{'per new rec µs':>15} {'peak RSS MB':>12}")  # fmt: skip
    for n in (int(x) for x in args.sizes.split(",")):
        cmd = [sys.executable, __file__, "--one", str(n), "--new", str(args.new)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(f"{r['existing']:>10,} {r['file_mb']:>8.1f} {r['load_s']:>8.2f} "
              f"{r['absorb_s']:>14.4f} {r['absorb_s'] / args.new * 1e6:>15.1f} "
              f"{r['rss_mb']:>12.0f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
