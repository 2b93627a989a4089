"""Data-parallel runs under ``accelerate launch`` with 2 CPU processes (gloo) equal 1-process runs.

Real processes, a real process group: SFT shards every batch, GRPO shards the questions and
each step's micro-batches, and the summed gradients make the same steps as one process.
"""

import json
import os
import signal
import subprocess
import sys
import time
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


def _cmd(args: list[str], processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, *args]
    return [*LAUNCH, "--multi_gpu", "--num_processes", str(processes), *args]


def _run(args: list[str], processes: int) -> str:
    cmd = _cmd(args, processes)
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


def test_two_process_run_stopped_by_sigterm_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGTERM to the whole process group (Ctrl-C, a scheduler), then the same command with
    --resume: it continues from the phase checkpoint and ends where an uninterrupted run does.

    Every worker gets the signal twice (directly, then forwarded by the launcher); that must
    still be one graceful stop, not "second signal: stop at once".
    """
    sets = ["schedule.epochs=4", "sft.max_examples_per_phase=16", "eval.max_examples=2"]
    sets += ["data.generate.count=30", "model.threads=1"]  # seconds per epoch

    def args(name: str) -> list[str]:
        out, data = tmp_path / name, tmp_path / f"{name}.jsonl"
        a = ["-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(out)]
        return a + [x for s in [*sets, f"data.path={data}"] for x in ("--set", s)]

    _run(args("ref"), 2)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd(args("run"), 2),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal or scheduler gives it
    )
    mid_epoch = out / "checkpoints" / "epoch-0001.p1" / "state.json"  # epoch 2, SFT done
    end = time.monotonic() + 300
    while not mid_epoch.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before the stop could land"
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert err.count("asrl: interrupted (interrupted; the latest checkpoint is") == 1, err[-3000:]
    assert "KeyboardInterrupt" not in err  # the launcher's echo was not taken as "now"
    assert not (out / "summary.json").exists()
    assert not (out / "checkpoints" / "epoch-0004").exists()

    log = _run([*args("run"), "--resume"], 2)
    assert "resumed from" in log and "epoch   1 |" not in log  # resumed, not restarted
    ref, got = _lines(tmp_path / "ref"), _lines(out)
    keys = [(r["epoch"], r["phase"], r.get("eval/after")) for r in got]
    assert len(keys) == len(set(keys))  # every metrics line once
    assert keys == [(r["epoch"], r["phase"], r.get("eval/after")) for r in ref]
    for g, w in zip(got, ref):
        for k in ("train/sft_loss", "train/grpo_loss", "eval/val_loss", "compute/examples_seen"):
            if k in w:
                assert g[k] == pytest.approx(w[k], rel=1e-5, abs=1e-6), (g["epoch"], k)
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 4
    # merge/unmerge for generation leaves the base weights within rounding of where they
    # were, so a resumed run (fresh base weights) matches to rounding, as with one process
    ckpt = "checkpoints/epoch-0004"
    assert _max_diff(_adapter(tmp_path / "ref" / ckpt), _adapter(out / ckpt)) < 1e-6


def test_a_launchers_echo_of_the_stop_signal_is_not_a_second_signal(monkeypatch):
    """In a launched run a repeat within REPEAT_S is the launcher forwarding the same stop."""
    from asrl import interrupt

    with interrupt.graceful_stop():
        monkeypatch.setenv("WORLD_SIZE", "2")
        interrupt._on_signal(signal.SIGTERM, None)
        interrupt._on_signal(signal.SIGTERM, None)  # the echo: still a graceful stop
        monkeypatch.setattr(interrupt, "REPEAT_S", 0.0)
        with pytest.raises(KeyboardInterrupt):  # later: the user insists
            interrupt._on_signal(signal.SIGTERM, None)
    with interrupt.graceful_stop():
        monkeypatch.setenv("WORLD_SIZE", "1")  # one process: no launcher, no echo
        interrupt._on_signal(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            interrupt._on_signal(signal.SIGINT, None)


def test_deepspeed_launches_are_refused_before_joining(monkeypatch):
    """On CPU accelerate reports such a launch as MULTI_CPU (and would run plain DDP): the
    launcher's own variable is what tells; refused before any process group is joined."""
    from asrl import distributed
    from asrl.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="does not run under DeepSpeed"):
        distributed.init()
    assert not distributed.current().active


# --------------------------------------------------------------------------------------
# sharded (FSDP2): launched with configs/accelerate/fsdp.yaml, as a user would

FSDP = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
FSDP += ["configs/accelerate/fsdp.yaml", "--main_process_port", "0"]
# uneven shares everywhere: SFT's last batch holds 1 row (17 = 8 + 8 + 1), one GRPO question
# and one eval example: process 1 has no rollouts, no micro-batches, nothing to decode or to
# score in evaluation; it runs dummy batches and steps in time with process 0's decoding
UNEVEN = ["sft.max_examples_per_phase=17", "grpo.questions_per_epoch=1", "eval.max_examples=1"]


def _run_sharded(args: list[str]) -> str:
    done = subprocess.run(
        [*FSDP, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _uneven_args(tmp_path: Path, out: Path, *sets: str) -> list[str]:
    args = ["-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(out)]
    return args + [
        x for s in [*UNEVEN, f"data.path={tmp_path / 'data.jsonl'}", *sets] for x in ("--set", s)
    ]


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    assert [(r["epoch"], r["phase"], r.get("eval/after")) for r in a] == [
        (r["epoch"], r["phase"], r.get("eval/after")) for r in b
    ]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if key.split("/")[0] in ("train", "eval", "compute") and key != "eval/after":
                assert rb[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key


def test_sharded_run_with_uneven_shares_equals_one_process_and_resumes_across(tmp_path):
    """FSDP2 over 2 processes: an SFT + GRPO run whose every phase leaves process 1 with less
    (or nothing) to do ends where the 1-process run does: process 0 samples the only
    question with the 1-process seed, so every metric and the adapter agree. Then each run's
    checkpoint is resumed by the other kind of run (sharded <-> 1 process) for a third
    epoch: the formats are the same, the optimizer states are sharded and gathered again.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_uneven_args(tmp_path, one), 1)
    log = _run_sharded(_uneven_args(tmp_path, two))
    assert "processes=2 sharded (FSDP2)" in log
    for ckpt in ("checkpoints/epoch-0001.p1", "checkpoints/epoch-0002"):  # after SFT, GRPO
        assert _max_diff(_adapter(one / ckpt), _adapter(two / ckpt)) < 1e-6
    _same_metrics(_lines(one), _lines(two))  # every line written once, by the main process
    assert json.loads((two / "summary.json").read_text())["epochs_run"] == 2

    # resume across: the sharded run's checkpoint in one process, and the other way round
    one.rename(tmp_path / "one-then-sharded")
    two.rename(tmp_path / "sharded-then-one")
    _run(
        [*_uneven_args(tmp_path, tmp_path / "sharded-then-one", "schedule.epochs=3"), "--resume"], 1
    )
    log = _run_sharded(
        [*_uneven_args(tmp_path, tmp_path / "one-then-sharded", "schedule.epochs=3"), "--resume"]
    )
    assert "resumed from" in log
    a, b = tmp_path / "sharded-then-one", tmp_path / "one-then-sharded"
    ckpt = "checkpoints/epoch-0003"
    assert _max_diff(_adapter(a / ckpt), _adapter(b / ckpt)) < 1e-6
    _same_metrics(_lines(a), _lines(b))


def test_sharded_grpo_update_equals_one_process(tmp_path):
    """Beta > 0 (reference pass, adapter disabled), 2 steps ("old" log-probs), micro-batches
    of 2; every process samples the whole round while sharded, decoding in step."""
    script = str(ROOT / "tests" / "ddp_grpo_update.py")
    logs = [
        _run([script, str(tmp_path / "p1"), "dapo"], 1),
        _run_sharded([script, str(tmp_path / "p2"), "dapo"]),
    ]
    printed = [next(x for x in log.splitlines() if x.startswith("losses")) for log in logs]
    one, two = (json.loads(x.split(" ", 1)[1].split(" tokens")[0]) for x in printed)
    assert two == pytest.approx(one, rel=1e-5, abs=1e-7)
    assert printed[0].split(" tokens")[1] == printed[1].split(" tokens")[1]
    assert _max_diff(_adapter(tmp_path / "p1"), _adapter(tmp_path / "p2")) < 1e-6
