"""Data-parallel runs under ``accelerate launch`` with 2 CPU processes (gloo) equal 1-process runs.

Real processes, a real process group: SFT shards every batch, GRPO shards the questions and
each step's micro-batches, and the summed gradients make the same steps as one process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def _run(args: list[str], processes: int) -> str:
    if processes == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [*LAUNCH, "--multi_gpu", "--num_processes", str(processes), *args]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _adapter(path: Path) -> dict:
    return load_file(str(path / "adapter_model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _train(tmp_path: Path, name: str, method: str, processes: int) -> Path:
    out = tmp_path / name
    args = ["-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(out)]
    args += ["--set", f"data.path={tmp_path / 'data.jsonl'}", "--set", f"schedule.method={method}"]
    log = _run(args, processes)
    assert ("processes=2" in log) == (processes == 2)
    return out


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_process_sft_equals_one_process(tmp_path):
    one = _train(tmp_path, "one", "sft", 1)
    two = _train(tmp_path, "two", "sft", 2)
    ckpt = "checkpoints/epoch-0002"
    assert _max_diff(_adapter(one / ckpt), _adapter(two / ckpt)) < 1e-6
    a, b = _lines(one), _lines(two)
    assert [(r["epoch"], r["phase"]) for r in a] == [(r["epoch"], r["phase"]) for r in b]
    for ra, rb in zip(a, b):  # written once, by the main process, with the same numbers
        for key in ("train/sft_loss", "eval/val_loss", "compute/tokens_trained", "eval/n"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5), key


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_two_process_grpo_update_equals_one_process(tmp_path, loss_type):
    """The same scored round (beta > 0, 2 steps, micro-batches of 2): same adapter after."""
    script = str(ROOT / "tests" / "ddp_grpo_update.py")
    logs = [_run([script, str(tmp_path / f"p{n}"), loss_type], n) for n in (1, 2)]
    printed = [next(x for x in log.splitlines() if x.startswith("losses")) for log in logs]
    one, two = (json.loads(x.split(" ", 1)[1].split(" tokens")[0]) for x in printed)
    assert two == pytest.approx(one, rel=1e-5, abs=1e-7)  # summation order differs
    assert printed[0].split(" tokens")[1] == printed[1].split(" tokens")[1]
    assert _max_diff(_adapter(tmp_path / "p1"), _adapter(tmp_path / "p2")) < 1e-6


def test_two_process_asrl_run_gathers_rollouts_and_writes_once(tmp_path):
    out = _train(tmp_path, "asrl2", "asrl", 2)
    lines = _lines(out)
    phases = [(r["epoch"], r["phase"]) for r in lines]
    epoch = ["data", "sft", "eval", "grpo", "eval"]
    assert phases == [(0, "data"), (0, "eval")] + [(e, p) for e in (1, 2) for p in epoch]
    grpo = [r for r in lines if r["phase"] == "grpo"]
    # 2 questions x 3 generations, sampled half by each process, gathered for the update
    assert all(r["compute/tokens_generated"] > 0 for r in grpo)
    assert all(r["compute/examples_seen"] == 2 for r in grpo)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert (out / "checkpoints" / "epoch-0002" / "state.json").is_file()
    assert not list((out / "checkpoints").glob(".*"))  # no half-written checkpoint left
