"""Sharded (FSDP2) and DeepSpeed ZeRO-2 against replicated (DDP-style) asrl runs: the same
training, timed.

    OMP_NUM_THREADS=1 python benchmarks/sharded_vs_ddp.py [CONFIG] [--set key=value ...]
        [--kinds ddp,fsdp,zero2]

Runs ``accelerate launch --config_file configs/accelerate/{KIND}.yaml -m asrl train`` on
CONFIG (default configs/tiny.yaml) in a temporary directory, one kind after the other, and
prints per-phase figures from each run's metrics.jsonl (means over epochs): SFT and GRPO
phase seconds, SFT training tokens/s, GRPO decoding tokens/s, evaluation seconds, and the
largest peak RSS of the launch's processes. The runs
train the same way (the adapters agree to rounding), so the differences are each kind's
costs. FSDP: every forward all-gathers each layer, every backward reduce-scatters its
gradients, and decoding all-reduces a "done" flag per step. ZeRO-2: DeepSpeed's bucketed
reduce-scatter of the adapter's gradients in each backward, its step on a flat partition
and the all-gather of the updated adapter. README ("Several processes or GPUs") has the
figures measured on the 2-core CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(kind: str, config: str, sets: list[str], tmp: Path) -> tuple[list[dict], float, float]:
    out = tmp / kind
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    cmd += [f"configs/accelerate/{kind}.yaml", "--main_process_port", "0"]
    cmd += ["-m", "asrl", "train", "-c", config, "-o", str(out)]
    for s in [f"data.path={tmp / 'data.jsonl'}", *sets]:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("WORLD_SIZE", None)
    t = time.perf_counter()
    # through a fresh interpreter, whose children are only this launch's: their peak RSS
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *cmd], cwd=ROOT, env=env, check=True, capture_output=True
    )
    wall = time.perf_counter() - t
    peak_mb = float(done.stdout.decode().split()[-1]) / 1024
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return lines, wall, peak_mb


# runs argv[1:]; prints the largest peak RSS (KiB) of any process it started (Linux)
PEAK_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
    "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def mean(lines: list[dict], phase: str, key: str) -> float:
    vals = [r[key] for r in lines if r["phase"] == phase and key in r]
    return sum(vals) / len(vals) if vals else float("nan")


def main() -> None:
    args = sys.argv[1:]
    config = args[0] if args and not args[0].startswith("--") else "configs/tiny.yaml"
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    kinds = ["ddp", "fsdp", "zero2"]
    if "--kinds" in args:
        kinds = args[args.index("--kinds") + 1].split(",")
    rows = [
        ("wall seconds (launch to exit)", None, None),
        ("SFT phase s", "sft", "time/phase_s"),
        ("SFT tokens/s", "sft", "perf/tokens_per_s"),
        ("GRPO phase s", "grpo", "time/phase_s"),
        ("GRPO decoding tokens/s", "grpo", "perf/gen_tokens_per_s"),
        ("GRPO update tokens/s", "grpo", "perf/tokens_per_s"),
        ("eval s", "eval", "time/eval_s"),
    ]
    with tempfile.TemporaryDirectory() as d:
        got = {kind: run(kind, config, sets, Path(d)) for kind in kinds}
    print(f"{config} {' '.join(sets)}\n| | {' | '.join(kinds)} |\n|---{'|---' * len(kinds)}|")
    for label, phase, key in rows:
        vals = [
            wall if phase is None else mean(lines, phase, key) for lines, wall, _ in got.values()
        ]
        print(f"| {label} | {' | '.join(f'{v:.2f}' for v in vals)} |")
    print(f"| peak RSS of a process (MB) | {' | '.join(f'{g[2]:.0f}' for g in got.values())} |")


if __name__ == "__main__":
    main()
