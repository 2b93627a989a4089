"""``asrl compare``: every method x seed as its own ``asrl train`` subprocess, on equal terms.

Each run gets its own copy of the starting data inside its run directory, so all methods
see identical data (and ``data.inject`` appends to that copy only). Resumable: a run with
a summary.json is skipped, one with a checkpoint is resumed with --resume, anything else is
started afresh. Then results.json, report.md and curves.png (asrl.analysis.report).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from asrl.config import ConfigError, ModelConfig, load_config
from asrl.data.writer import write_synthetic

# --preset small: sized so that the demo data, 7 methods x 3 seeds, fits in 2 hours on a
# 2-core CPU with --jobs 2 (docs/compare.md). It keeps the demo's data (same splits and eval
# set) and shrinks the work per epoch: 48 SFT examples per phase instead of the whole split,
# 4 GRPO questions instead of 8, and 24 eval examples (the whole 21-record val split).
PRESETS: dict[str, list[str]] = {
    "small": [
        "schedule.epochs=4",
        "sft.max_examples_per_phase=48",
        "grpo.questions_per_epoch=4",
        "eval.max_examples=24",
    ],
}


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / f"{method}-s{seed}"


def _starting_data(cfg_path: str, overrides: list[str], out: Path) -> Path | None:
    """The data every run starts from: data.path, or a synthetic file written once; None for
    a generator or a remote/glob source (reasoning_gym:, hf:, *.parquet), which every run
    reads as configured (deterministic by its seed, and never appended to)."""
    cfg = load_config(cfg_path, overrides)
    if cfg.data.path.startswith(("reasoning_gym:", "hf:")) or any(
        c in cfg.data.path for c in "*?["
    ):
        if cfg.data.inject.at_epoch > 0:
            raise ConfigError("--inject-at needs data.path to be a local JSONL file")
        return None
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


def _threads_per_job(jobs: int) -> int:
    """Split the cores between parallel runs; one OpenMP team per core avoids oversubscription."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def _command(
    args: argparse.Namespace,
    overrides: list[str],
    rdir: Path,
    src: Path | None,
    method: str,
    seed: int,
    threads: int,
) -> tuple[list[str], bool]:
    resume = any((rdir / "checkpoints").glob("*/state.json"))
    if src is None:
        rdir.mkdir(parents=True, exist_ok=True)
    data = src and (next(rdir.glob("data*")) if resume else _fresh_copy(src, rdir))
    cmd = [sys.executable, "-m", "asrl", "train", "-c", args.config, "-o", str(rdir)]
    sets = [*overrides, f"schedule.method={method}", f"seed={seed}"]
    if data is not None:
        sets.append(f"data.path={data}")
    if args.jobs > 1:
        sets.append(f"model.threads={threads}")
    for o in sets:
        cmd += ["--set", o]
    if resume:
        cmd.append("--resume")
    return cmd, resume


def run_all(args: argparse.Namespace, overrides: list[str]) -> list[dict]:
    """Run every method x seed, up to ``args.jobs`` at a time; SIGTERM/Ctrl-C reach them all.

    On a stop signal every running ``asrl train`` gets SIGTERM (it finishes its optimizer
    step and exits leaving its phase-boundary checkpoint); rerunning the same command
    resumes them. Runs that fail are reported, the rest go on.
    """
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    src = _starting_data(args.config, overrides, out)
    jobs = [(m, s) for m in args.methods for s in range(args.seeds)]
    threads = _threads_per_job(args.jobs)
    env = dict(os.environ)
    if args.jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    if args.jobs > 1:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    runs: list[dict] = []
    todo: list[tuple[int, dict]] = []
    for i, (method, seed) in enumerate(jobs, 1):
        rdir = run_dir(out, method, seed)
        runs.append({"method": method, "seed": seed, "dir": str(rdir)})
        if (rdir / "summary.json").is_file():
            print(f"run {i}/{len(jobs)} {method} seed {seed}: done already, skipped", flush=True)
        else:
            todo.append((i, runs[-1]))
    running: dict[subprocess.Popen, tuple[str, dict, float, Any]] = {}
    stop: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stop.append(signum)
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    main = threading.current_thread() is threading.main_thread()
    sigs = (signal.SIGINT, signal.SIGTERM) if main else ()
    old = {s: signal.signal(s, on_signal) for s in sigs}
    try:
        while todo or running:
            while todo and len(running) < args.jobs and not stop:
                i, run = todo.pop(0)
                label = f"run {i}/{len(jobs)} {run['method']} seed {run['seed']}"
                rdir = Path(run["dir"])
                cmd, resume = _command(
                    args, overrides, rdir, src, run["method"], run["seed"], threads
                )
                print(f"{label}: {'resuming' if resume else 'starting'} ...", flush=True)
                log = (rdir / "train.log").open("a")
                # own session: a terminal Ctrl-C reaches only us, and we forward it once
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                running[proc] = (label, run, time.perf_counter(), log)
            if not running:
                break
            time.sleep(0.5)
            for proc in [p for p in running if p.poll() is not None]:
                label, run, t0, log = running.pop(proc)
                log.close()
                rc = proc.returncode
                logf = Path(run["dir"]) / "train.log"
                status = "ok" if rc == 0 else f"FAILED (exit {rc}; see {logf})"
                print(f"{label}: {status} in {time.perf_counter() - t0:.0f}s", flush=True)
                if rc != 0:
                    run["failed"] = rc
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stop:
        from asrl.errors import Interrupted

        raise Interrupted(stop[0], "compare stopped; rerun the same command to resume")
    return runs


def yaml_float(x: float) -> str:
    """``x`` written so that YAML 1.1 (PyYAML, which reads ``--set`` values) reads it back as
    the same float: ``1e-06`` would be a string there, ``1.0e-06`` is a float."""
    if math.isinf(x):
        return ".inf" if x > 0 else "-.inf"
    text = repr(float(x))
    mantissa, e, exponent = text.partition("e")
    if e and "." not in mantissa:
        text = f"{mantissa}.0e{exponent}"
    return text


def _one_precision(model: ModelConfig) -> list[str]:
    """``model.autocast=auto`` resolved once here, so every run trains in the same precision.

    Each run would otherwise time a matmul at its own start, and on a busy CPU one reading
    can come out the other way (it did: one of 24 runs trained in bf16).
    """
    if model.autocast != "auto":
        return []
    import torch

    from asrl.model.loading import pick_autocast, pick_device

    dtype = pick_autocast("auto", pick_device(model.device))
    name = {None: "none", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    print(f"compare: model.autocast=auto resolved once for every run: {name}")
    return [f"model.autocast={name}"]


def _compare(args: argparse.Namespace) -> int:
    from asrl.analysis.report import write_outputs

    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from asrl.methods import METHODS

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown {unknown}; known: {', '.join(sorted(METHODS))}")
    overrides = list(PRESETS.get(args.preset, [])) + list(args.set or [])
    if args.inject_at:
        overrides += [
            f"data.inject.at_epoch={args.inject_at}",
            f"data.inject.count={args.inject_count}",
            f"data.inject.mix={args.inject_mix}",
        ]
    if args.time_budget is not None:
        if not args.time_budget >= 0:
            raise ConfigError(f"--time-budget: must be >= 0 seconds, got {args.time_budget}")
        overrides.append(f"schedule.time_budget_s={yaml_float(args.time_budget)}")
    from asrl.preflight import preflight

    # fail fast on a bad config or override, and on what it names (reward modules, extras)
    cfg = preflight(load_config(args.config, overrides))
    args.time_budget_s = cfg.schedule.time_budget_s  # the budget every run has (report.md)
    if cfg.model.adapter:  # every run starts from it: check it once, before any starts
        from asrl.model.adapter import check_compatible, resolve_adapter

        start = resolve_adapter(cfg.model.adapter)
        for seed in range(args.seeds):
            check_compatible(start, cfg.model, seed)
    overrides += _one_precision(cfg.model)
    from asrl.errors import Interrupted

    try:
        runs = run_all(args, overrides)
    except Interrupted as e:
        print(f"asrl compare: {e}", file=sys.stderr)
        return e.exit_code
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
    c.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time; each gets cores/jobs threads (on 2 cores, 2 single-thread "
        "runs finish a compare sooner than 1 two-thread run)",
    )
    c.add_argument(
        "--time-budget",
        type=float,
        metavar="SECONDS",
        help="the same training-time budget for every run (schedule.time_budget_s): each "
        "stops at the first phase boundary past it, then evaluates on the test split",
    )
    c.add_argument("--inject-at", type=int, default=0, help="epoch at which new data arrives")
    c.add_argument("--inject-mix", default="percent", help="synthetic mix of the new data")
    c.add_argument("--inject-count", type=int, default=100)
    c.set_defaults(func=_compare)
