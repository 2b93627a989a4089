"""``asrl compare``: every method x seed as its own ``asrl train`` subprocess, on equal terms.

Each run gets its own copy of the starting data inside its run directory, so all methods
see identical data (and ``data.inject`` appends to that copy only). Resumable: a run with
a summary.json is skipped, one with a checkpoint is resumed with --resume, anything else is
started afresh. Then results.json, report.md and curves.png (asrl.experiments.report).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from asrl.config import ConfigError, load_config
from asrl.data.sources import write_synthetic

# --preset small: a quick look (minutes on a laptop CPU), not a result to publish.
PRESETS: dict[str, list[str]] = {
    "small": [
        "data.generate.count=120",
        "schedule.epochs=3",
        "sft.max_examples_per_phase=32",
        "grpo.questions_per_epoch=4",
        "eval.max_examples=16",
    ],
}


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / f"{method}-s{seed}"


def _starting_data(cfg_path: str, overrides: list[str], out: Path) -> Path:
    """The data every run starts from: data.path, or a synthetic file written once."""
    cfg = load_config(cfg_path, overrides)
    src = Path(cfg.data.path)
    if src.exists():
        return src
    if cfg.data.generate.count <= 0:
        raise ConfigError(f"data.path: {src} does not exist and data.generate.count is 0")
    shared = out / "data" / "train.jsonl"
    if not shared.exists():
        g = cfg.data.generate
        write_synthetic(shared, g.count, g.seed, g.mix, cfg.format.spec())
    return shared


def _fresh_copy(src: Path, rdir: Path) -> Path:
    if rdir.exists():
        shutil.rmtree(rdir)
    rdir.mkdir(parents=True)
    dst = rdir / ("data" if src.is_dir() else "data" + src.suffix)
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    return dst


def run_all(args: argparse.Namespace, overrides: list[str]) -> list[dict]:
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    src = _starting_data(args.config, overrides, out)
    jobs = [(m, s) for m in args.methods for s in range(args.seeds)]
    runs = []
    for i, (method, seed) in enumerate(jobs, 1):
        rdir = run_dir(out, method, seed)
        label = f"run {i}/{len(jobs)} {method} seed {seed}"
        runs.append({"method": method, "seed": seed, "dir": str(rdir)})
        if (rdir / "summary.json").is_file():
            print(f"{label}: done already, skipped", flush=True)
            continue
        resume = any((rdir / "checkpoints").glob("*/state.json"))
        data = next(rdir.glob("data*")) if resume else _fresh_copy(src, rdir)
        cmd = [sys.executable, "-m", "asrl", "train", "-c", args.config, "-o", str(rdir)]
        for o in [*overrides, f"schedule.method={method}", f"seed={seed}", f"data.path={data}"]:
            cmd += ["--set", o]
        if resume:
            cmd.append("--resume")
        print(f"{label}: {'resuming' if resume else 'starting'} ...", flush=True)
        t0 = time.perf_counter()
        with (rdir / "train.log").open("a") as log:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
        status = "ok" if rc == 0 else f"FAILED (exit {rc}; see {rdir / 'train.log'})"
        print(f"{label}: {status} in {time.perf_counter() - t0:.0f}s", flush=True)
        if rc != 0:
            runs[-1]["failed"] = rc
    return runs


def _compare(args: argparse.Namespace) -> int:
    from asrl.experiments.report import write_outputs

    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from asrl.schedules import SCHEDULES

    unknown = [m for m in args.methods if m not in SCHEDULES]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; known: {', '.join(sorted(SCHEDULES))}")
    overrides = list(PRESETS.get(args.preset, [])) + list(args.set or [])
    if args.inject_at:
        overrides += [
            f"data.inject.at_epoch={args.inject_at}",
            f"data.inject.count={args.inject_count}",
            f"data.inject.mix={args.inject_mix}",
        ]
    load_config(args.config, overrides)  # fail fast on a bad config or override
    runs = run_all(args, overrides)
    command = "asrl " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if sys.argv[1:2] != ["compare"]:  # called in-process (tests): rebuild from args
        command = f"asrl compare -c {args.config} --methods {','.join(args.methods)} ..."
    write_outputs(Path(args.output), runs, args, overrides, command)
    print(f"compare: report in {Path(args.output) / 'report.md'}")
    return 1 if any("failed" in r for r in runs) else 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="run methods x seeds; report, results.json, curves.png")
    c.add_argument("-c", "--config", required=True)
    c.add_argument("--methods", default="asrl,sequential,sft,grpo,ares")
    c.add_argument("--seeds", type=int, default=3)
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run")
    c.add_argument("--preset", choices=sorted(PRESETS), help="shrink data and epochs")
    c.add_argument("--inject-at", type=int, default=0, help="epoch at which new data arrives")
    c.add_argument("--inject-mix", default="percent", help="synthetic mix of the new data")
    c.add_argument("--inject-count", type=int, default=100)
    c.set_defaults(func=_compare)
