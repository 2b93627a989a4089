"""Crash safety end to end: real processes, killed with SIGKILL / stopped with SIGTERM.

A run killed at random moments and resumed until it completes must end with the same
adapter, the same metrics (each (epoch, phase) once) and the same data seen as a run never
interrupted. These are the slowest tests here (~1 min): a dozen short tiny-model processes.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

# small enough that a 4-epoch run takes seconds; big enough for several SFT steps per phase
FAST = [
    "schedule.epochs=4",
    "sft.max_examples_per_phase=16",
    "eval.max_examples=2",
    "data.generate.count=30",
    "model.threads=1",  # same thread count in every process: same float summation order
]


def cmd(out: Path, data: Path, *extra: str) -> list[str]:
    sets = [a for s in [*FAST, f"data.path={data}", *extra] for a in ("--set", s)]
    return [sys.executable, "-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(out)] + sets


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def key(r: dict) -> tuple:
    return (r["epoch"], r["phase"], r.get("eval/after"))


def wait_for(pred, proc: subprocess.Popen, timeout: float = 120) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_kill9_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    ref = tmp_path / "ref"
    done = subprocess.run(cmd(ref, tmp_path / "ref.jsonl"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    out, data = tmp_path / "killed", tmp_path / "killed.jsonl"
    ckpts = out / "checkpoints"
    rng = random.Random(1234)  # the kill moments, reproducibly random
    kills, attempts, resume = [], 0, []
    while attempts < 12:
        attempts += 1
        proc = subprocess.Popen(
            cmd(out, data) + resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if len(kills) < 3:
            # first kill: once a checkpoint exists; later ones: once training has resumed
            # (metrics.jsonl rewritten on resume), then after a random delay
            started = time.time()
            ready = wait_for(
                lambda t0=started: (
                    any(ckpts.glob("epoch-*")) and (out / "metrics.jsonl").stat().st_mtime > t0
                ),
                proc,
            )
            if ready:
                time.sleep(rng.uniform(0.0, 2.5))
                if proc.poll() is None:
                    proc.kill()  # SIGKILL: no handler, no cleanup
                    proc.wait()
                    kills.append(max(r["epoch"] for r in lines(out)))
                    resume = ["--resume"]
                    continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        if json.loads((out / "summary.json").read_text())["epochs_run"] == 4:
            break
    assert len(kills) >= 2, f"only {len(kills)} kills landed"
    print(f"kills landed during epochs {kills}; {attempts} processes in all")

    # (a) the same final adapter
    a = load_file(ref / "checkpoints" / "epoch-0004" / "adapter_model.safetensors")
    b = load_file(ckpts / "epoch-0004" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |adapter difference| = {worst:.3g}")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)

    # (b) every (epoch, phase) once, with the same eval values
    got, want = lines(out), lines(ref)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert len({key(r) for r in got}) == len(got)
    for g, w in zip(got, want):
        if g["phase"] == "eval":
            for m in ("eval/val_loss", "eval/format_accuracy", "eval/correctness"):
                assert (g[m] is None and w[m] is None) or abs(g[m] - w[m]) < 1e-5, (key(g), m)

    # (c) no data trained twice or skipped
    seen = [(r["epoch"], r["compute/examples_seen"]) for r in got if r["phase"] == "sft"]
    assert seen == [(r["epoch"], r["compute/examples_seen"]) for r in want if r["phase"] == "sft"]
    assert not list(ckpts.glob(".*.tmp"))  # stale temp dirs are cleared by the next save


def test_sigterm_stops_cleanly_and_resume_completes(tmp_path):
    out, data = tmp_path / "run", tmp_path / "d.jsonl"
    proc = subprocess.Popen(
        cmd(out, data), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert wait_for(lambda: (out / "checkpoints" / "epoch-0001" / "state.json").exists(), proc)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "interrupted" in err and "resume with: asrl train -c configs/tiny.yaml" in err
    assert "--resume" in err and "the latest checkpoint is" in err
    done = subprocess.run(
        cmd(
            out,
            data,
        )
        + ["--resume"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 4
    keys = [key(r) for r in lines(out)]
    assert len(keys) == len(set(keys)) and keys[-2:] == [(4, "eval", "grpo"), (4, "test", None)]
