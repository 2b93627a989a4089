"""Data-parallel runs under ``accelerate launch`` with 2 CPU processes (gloo) equal 1-process runs.

Real processes, a real process group: SFT shards every batch, GRPO shards the questions and
each step's micro-batches, and the summed gradients make the same steps as one process.

Every run here is float64 without autocast (``F64``). Two processes sum a gradient in another
order than one process, and so do two CPUs' kernels. AdamW's first steps are about
lr * g / (|g| + eps): an absolute error d in a near-zero gradient moves the weight by up to
d * lr / eps (1e5 d at lr 1e-3), and in float32 that noise (~1e-7 relative) flips the sign of
such gradients and moves weights by +-lr whatever their size. In float64 the gradients agree
to ~1e-14 and the adapters to ~1e-8 at the very worst (6e-9 measured, FSDP GRPO update),
while a wrong reduction (a share missing or summed twice, a wrong token count) moves the
weights by ~lr (1e-3) and the logged gradient norms by a factor: the tolerances (``TOL``,
``REL``) sit between the two. On a 2-core Intel Xeon with AMX (2026-12-02) the adapters of
the ZeRO runs differed by up to 1.06e-7 after their Adam steps (on AMD EPYC: <= 6e-9), so
``TOL`` is 1e-5: 100x above the largest noise measured, 100x below a wrong reduction.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
LAUNCH += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
F64 = ["model.dtype=float64", "model.autocast=none"]
TOL = 1e-5  # adapters after Adam steps in float64 (<= 1.06e-7 measured); a wrong reduction ~1e-3
REL = 1e-7  # logged losses, gradient norms, counts (<= 3e-9 measured)


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
    sets = [f"data.path={tmp_path / 'data.jsonl'}", f"schedule.method={method}", *F64]
    args += [x for s in sets for x in ("--set", s)]
    log = _run(args, processes)
    assert ("processes=2" in log) == (processes == 2)
    return out


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _update_printed(log: str) -> dict:
    """``losses [..] norms [..] tokens N`` as ddp_grpo_update.py prints it."""
    line = next(x for x in log.splitlines() if x.startswith("losses "))
    losses, rest = line.removeprefix("losses ").split(" norms ")
    norms, tokens = rest.split(" tokens ")
    return {"losses": json.loads(losses), "norms": json.loads(norms), "tokens": int(tokens)}


def _same_update(logs: list[str], tmp_path: Path) -> None:
    """The 1-process (p1) and 2-process (p2) updates: the same per-step losses and pre-clip
    gradient norms (a gradient summed twice or halved shows in the norm even where AdamW,
    scale-invariant, would hide it in the weights), tokens, and adapters."""
    one, two = (_update_printed(x) for x in logs)
    assert two["norms"] == pytest.approx(one["norms"], rel=REL)  # halved gradients: 2x off
    assert two["losses"] == pytest.approx(one["losses"], rel=REL)
    assert two["tokens"] == one["tokens"]
    assert _max_diff(_adapter(tmp_path / "p1"), _adapter(tmp_path / "p2")) < TOL


def test_two_process_sft_equals_one_process(tmp_path):
    one = _train(tmp_path, "one", "sft", 1)
    two = _train(tmp_path, "two", "sft", 2)
    ckpt = "checkpoints/epoch-0002"
    assert _max_diff(_adapter(one / ckpt), _adapter(two / ckpt)) < TOL
    a, b = _lines(one), _lines(two)
    assert [(r["epoch"], r["phase"]) for r in a] == [(r["epoch"], r["phase"]) for r in b]
    keys = ("train/sft_loss", "train/sft_grad_norm", "eval/val_loss", "compute/tokens_trained")
    for ra, rb in zip(a, b):  # written once, by the main process, with the same numbers
        for key in (*keys, "eval/n"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=REL), key


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_two_process_grpo_update_equals_one_process(tmp_path, loss_type):
    """The same scored round (beta > 0, 2 steps, micro-batches of 2): same adapter after."""
    script = str(ROOT / "tests" / "helpers" / "ddp_grpo_update.py")
    logs = [_run([script, str(tmp_path / f"p{n}"), loss_type], n) for n in (1, 2)]
    _same_update(logs, tmp_path)


def test_two_process_asrl_run_gathers_rollouts_and_writes_once(tmp_path):
    out = _train(tmp_path, "asrl2", "asrl", 2)
    lines = _lines(out)
    phases = [(r["epoch"], r["phase"]) for r in lines]
    epoch = ["data", "sft", "eval", "grpo", "eval"]
    assert phases == [(0, "data"), (0, "eval")] + [(e, p) for e in (1, 2) for p in epoch] + [
        (2, "test")
    ]
    grpo = [r for r in lines if r["phase"] == "grpo"]
    # 2 questions x 3 generations, sampled half by each process, gathered for the update
    assert all(r["compute/tokens_generated"] > 0 for r in grpo)
    assert all(r["compute/examples_seen"] == 2 for r in grpo)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert (out / "checkpoints" / "epoch-0002" / "state.json").is_file()
    assert not list((out / "checkpoints").glob(".*"))  # no half-written checkpoint left


@pytest.mark.parametrize("kind", ["ddp", "zero2"])
def test_two_process_run_stopped_by_sigterm_resumes_to_the_uninterrupted_result(tmp_path, kind):
    """SIGTERM to the whole process group (Ctrl-C, a scheduler), then the same command with
    --resume: it continues from the phase checkpoint and ends where an uninterrupted run does.
    Data parallel, and under DeepSpeed ZeRO-2 (whose checkpoint is gathered from the
    partitions and split again on resume).

    Every worker gets the signal twice (directly, then forwarded by the launcher); that must
    still be one graceful stop, not "second signal: stop at once".
    """
    sets = ["schedule.epochs=4", "sft.max_examples_per_phase=16", "eval.max_examples=2"]
    sets += ["data.generate.count=30", "model.threads=1", *F64]  # seconds per epoch

    def args(name: str) -> list[str]:
        out, data = tmp_path / name, tmp_path / f"{name}.jsonl"
        a = ["-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(out)]
        return a + [x for s in [*sets, f"data.path={data}"] for x in ("--set", s)]

    def run(a: list[str]) -> str:
        return _run(a, 2) if kind == "ddp" else _run_launch(kind, a)

    run(args("ref"))
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd(args("run"), 2) if kind == "ddp" else _launch_cmd(kind, args("run")),
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

    log = run([*args("run"), "--resume"])
    assert "resumed from" in log and "epoch   1 |" not in log  # resumed, not restarted
    ref, got = _lines(tmp_path / "ref"), _lines(out)
    keys = [(r["epoch"], r["phase"], r.get("eval/after")) for r in got]
    assert len(keys) == len(set(keys))  # every metrics line once
    assert keys == [(r["epoch"], r["phase"], r.get("eval/after")) for r in ref]
    for g, w in zip(got, ref):
        for k in ("train/sft_loss", "train/grpo_loss", "eval/val_loss", "compute/examples_seen"):
            if k in w:
                assert g[k] == pytest.approx(w[k], rel=REL, abs=1e-12), (g["epoch"], k)
    assert json.loads((out / "summary.json").read_text())["epochs_run"] == 4
    # merge/unmerge for generation leaves the base weights within rounding of where they
    # were, so a resumed run (fresh base weights) matches to rounding, as with one process
    ckpt = "checkpoints/epoch-0004"
    assert _max_diff(_adapter(tmp_path / "ref" / ckpt), _adapter(out / ckpt)) < TOL


def test_a_launchers_echo_of_the_stop_signal_is_not_a_second_signal(monkeypatch):
    """In a launched run a repeat within REPEAT_S is the launcher forwarding the same stop."""
    from asrl.parallel import interrupt

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


@pytest.mark.parametrize(
    "env, refused",
    [
        ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "ZeRO-3 .* FSDP mode"),
        ({"ACCELERATE_DEEPSPEED_ZERO_STAGE": "0"}, "stage 0 is plain data parallelism"),
        ({"ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, "offloading is not supported"),
    ],
)
def test_deepspeed_launches_asrl_does_not_run_are_refused_before_joining(
    monkeypatch, tmp_path, env, refused
):
    """On CPU accelerate reports a DeepSpeed launch as MULTI_CPU (it would run plain DDP):
    the launcher's own variables are what tell; refused before any process group is joined."""
    from asrl.config import ConfigError
    from asrl.parallel import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=refused):
        distributed.init()
    assert not distributed.current().active
    # the same from a DeepSpeed JSON file (accelerate's deepspeed_config_file)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", raising=False)
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", raising=False)
    zero = {"stage": int(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", 2))}
    if "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE" in env:
        zero["offload_optimizer"] = {"device": "cpu"}
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": zero}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(tmp_path / "ds.json"))
    with pytest.raises(ConfigError, match=refused):
        distributed.init()


def test_a_deepspeed_launch_without_deepspeed_installed_says_what_to_install(monkeypatch):
    from asrl.config import ConfigError
    from asrl.parallel import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed: ImportError
    with pytest.raises(ConfigError, match=r"pip install 'asrl\[deepspeed\]'"):
        distributed.init()
    assert not distributed.current().active


# --------------------------------------------------------------------------------------
# sharded (FSDP2, configs/accelerate/fsdp.yaml) and DeepSpeed ZeRO-1/2 (zero2.yaml; accelerate's
# --zero_stage 1 overrides its stage), launched as a user would

LAUNCHES = {
    "fsdp": (["configs/accelerate/fsdp.yaml"], "sharded (FSDP2)"),
    "zero1": (["configs/accelerate/zero2.yaml", "--zero_stage", "1"], "DeepSpeed ZeRO-1"),
    "zero2": (["configs/accelerate/zero2.yaml"], "DeepSpeed ZeRO-2"),
}
# uneven shares everywhere: SFT's last batch holds 1 row (17 = 8 + 8 + 1), one GRPO question
# and one eval example: process 1 has no rollouts, no micro-batches, nothing to decode or to
# score in evaluation; it runs dummy batches (and, sharded, steps in time with process 0's
# decoding)
UNEVEN = ["sft.max_examples_per_phase=17", "grpo.questions_per_epoch=1", "eval.max_examples=1"]


def _launch_cmd(kind: str, args: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    return [*cmd, *LAUNCHES[kind][0], "--main_process_port", "0", *args]


def _run_launch(kind: str, args: list[str], ok: bool = True) -> str:
    banner = LAUNCHES[kind][1]
    cmd = _launch_cmd(kind, args)
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert (done.returncode == 0) == ok, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "asrl:" not in log or f"processes=2 {banner}" in log
    return log


def _uneven_args(tmp_path: Path, out: Path, *sets: str) -> list[str]:
    args = ["-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(out)]
    return args + [
        x
        for s in [*UNEVEN, *F64, f"data.path={tmp_path / 'data.jsonl'}", *sets]
        for x in ("--set", s)
    ]


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    assert [(r["epoch"], r["phase"], r.get("eval/after")) for r in a] == [
        (r["epoch"], r["phase"], r.get("eval/after")) for r in b
    ]
    for ra, rb in zip(a, b):
        for key, value in ra.items():
            if key.split("/")[0] not in ("train", "eval", "compute", "test") or key == "eval/after":
                continue
            if value is None:  # a metric with nothing to measure (e.g. no pass rate yet)
                assert rb[key] is None, key
            else:
                assert rb[key] == pytest.approx(value, rel=REL, abs=1e-12, nan_ok=True), key


def _optimizer_states(ckpt: Path) -> dict:
    return torch.load(ckpt / "optimizer.pt", weights_only=True)


def _same_optimizer_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["state"].keys() == b[key]["state"].keys(), key
        assert a[key]["param_groups"] == b[key]["param_groups"], key
        for i, st in a[key]["state"].items():
            for name, v in st.items():
                w = b[key]["state"][i][name]
                # DeepSpeed keeps its master weights and Adam moments in float32 whatever the
                # model's dtype: compared at float32 precision there, relative to the tensor's
                # scale (a near-zero moment carries the rounding of its larger neighbours)
                if v.dtype == w.dtype:
                    rel, tiny = REL, 1e-20
                else:
                    rel, tiny = 1e-6, 1e-6 * float(v.abs().max())
                assert torch.allclose(v.double(), w.double(), rtol=rel, atol=tiny), name


@pytest.mark.parametrize("kind", ["fsdp", "zero2"])
def test_launched_run_with_uneven_shares_equals_one_process_and_resumes_across(tmp_path, kind):
    """FSDP2 or ZeRO-2 over 2 processes: an SFT + GRPO run whose every phase leaves process 1
    with less (or nothing) to do ends where the 1-process run does: process 0 samples the
    only question with the 1-process seed, so every metric, the adapter and both optimizers'
    states agree. Then each run's checkpoint is resumed by the other kind of run (launched
    <-> 1 process) for a third epoch: the formats are the same, the optimizer states are
    split across the processes and gathered again.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_uneven_args(tmp_path, one), 1)
    _run_launch(kind, _uneven_args(tmp_path, two))
    for ckpt in ("checkpoints/epoch-0001.p1", "checkpoints/epoch-0002"):  # after SFT, GRPO
        assert _max_diff(_adapter(one / ckpt), _adapter(two / ckpt)) < TOL
        _same_optimizer_states(_optimizer_states(one / ckpt), _optimizer_states(two / ckpt))
    _same_metrics(_lines(one), _lines(two))  # every line written once, by the main process
    assert json.loads((two / "summary.json").read_text())["epochs_run"] == 2

    # resume across: the launched run's checkpoint in one process, and the other way round
    one.rename(tmp_path / "one-then-launched")
    two.rename(tmp_path / "launched-then-one")
    _run(
        [*_uneven_args(tmp_path, tmp_path / "launched-then-one", "schedule.epochs=3"), "--resume"],
        1,
    )
    log = _run_launch(
        kind,
        [*_uneven_args(tmp_path, tmp_path / "one-then-launched", "schedule.epochs=3"), "--resume"],
    )
    assert "resumed from" in log
    a, b = tmp_path / "launched-then-one", tmp_path / "one-then-launched"
    ckpt = "checkpoints/epoch-0003"
    assert _max_diff(_adapter(a / ckpt), _adapter(b / ckpt)) < TOL
    _same_optimizer_states(_optimizer_states(a / ckpt), _optimizer_states(b / ckpt))
    _same_metrics(_lines(a), _lines(b))


@pytest.mark.parametrize("kind", ["fsdp", "zero1", "zero2"])
def test_launched_grpo_update_equals_one_process(tmp_path, kind):
    """Beta > 0 (reference pass, adapter disabled), 2 steps ("old" log-probs), micro-batches
    of 2, fixed random rewards (so the GRPO gradient is not zero); every process samples the
    whole round (sharded: decoding in step)."""
    script = str(ROOT / "tests" / "helpers" / "ddp_grpo_update.py")
    logs = [
        _run([script, str(tmp_path / "p1"), "dapo"], 1),
        _run_launch(kind, [script, str(tmp_path / "p2"), "dapo"]),
    ]
    _same_update(logs, tmp_path)


def test_zero1_adaptive_run_equals_one_process(tmp_path):
    """SASR-style switching under ZeRO-1: its gradient-norm probe takes the gradient aside
    (DeepSpeed owns .grad) and sums it over the processes; the choices and the adapter
    match the 1-process run."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run(_uneven_args(tmp_path, one, "schedule.method=adaptive"), 1)
    _run_launch("zero1", _uneven_args(tmp_path, two, "schedule.method=adaptive"))
    assert (
        _max_diff(
            _adapter(one / "checkpoints/epoch-0002"), _adapter(two / "checkpoints/epoch-0002")
        )
        < TOL
    )
    _same_metrics(_lines(one), _lines(two))
    a, b = ([r for r in _lines(x) if r["phase"] == "schedule"] for x in (one, two))
    assert len(a) == 2 and a[1]["schedule/signal"] != 1.0  # a probed gradient-norm ratio
    assert [r["schedule/choice"] for r in a] == [r["schedule/choice"] for r in b]
    assert [r["schedule/signal"] for r in b] == pytest.approx(
        [r["schedule/signal"] for r in a], rel=REL
    )


def test_zero2_skips_nonfinite_steps_and_stops_on_divergence(tmp_path):
    """lr=1e30: the first SFT step blows the adapter up, the next gradients are not finite;
    DeepSpeed skips those steps, the guard counts them on every process and stops the run
    with the 1-process message, before any checkpoint."""
    out = tmp_path / "out"
    args = _uneven_args(tmp_path, out, "sft.lr=1.0e+30", "train.max_bad_steps_in_row=2")
    log = _run_launch("zero2", args, ok=False)
    assert log.count("sft: 2 optimizer steps in a row had a non-finite loss") == 2  # each rank
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())


def test_two_processes_agree_on_dynamic_sampling_and_pass_rates(tmp_path):
    """Dynamic sampling, pass-rate question choice, several rounds and passes, truncation
    masking, under 2 processes: every decision (which groups to drop, how many questions to
    draw next, which ones) is taken on the gathered rewards, so the processes stay in step
    (a disagreement would hang or break a collective) and every drawn question is sampled
    by exactly one of them."""
    out, log = tmp_path / "dyn", tmp_path / "rewards.log"
    sets = [
        f"data.path={tmp_path / 'data.jsonl'}",
        "schedule.method=grpo",
        "reward.format_weight=0",
        "reward.correctness_weight=0",
        "reward.custom=[{path: 'tests.helpers.signal_rewards:flat_for_some'}]",
        "grpo.filter_zero_std=true",
        "grpo.max_resample_rounds=3",
        "grpo.question_selection=pass_rate",
        "grpo.questions_per_epoch=3",
        "grpo.rounds_per_phase=2",
        "grpo.num_iterations=2",
        "grpo.mask_truncated_completions=true",
    ]
    args = ["-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(out)]
    args += [a for s in sets for a in ("--set", s)]
    env = dict(_env(), ASRL_TEST_REWARD_LOG=str(log))
    done = subprocess.run(
        _cmd(args, 2), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    grpo = [r for r in _lines(out) if r["phase"] == "grpo"]
    assert len(grpo) == 2 and sum(r["train/resample_rounds"] for r in grpo) > 0
    calls = [line.split() for line in log.read_text().splitlines()]
    # GRPO rollouts score each question's 3 completions (evaluations score one answer each)
    calls = [c for c in calls if all(c[1:].count(i) == 3 for i in c[1:])]
    assert {c[0] for c in calls} == {"0", "1"}
    groups = [i for c in calls for i in dict.fromkeys(c[1:])]  # one per question sampled
    assert len(groups) == sum(r["compute/examples_seen"] for r in grpo)
    state = json.loads((out / "checkpoints" / "epoch-0002" / "state.json").read_text())
    assert set(state["pass_rates"]["rates"]) == set(groups)
