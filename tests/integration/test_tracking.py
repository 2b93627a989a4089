"""Tracking: TensorBoard event files mirror metrics.jsonl, resume leaves no stale points,
sample completions (with reward components for GRPO rollouts) land in samples.jsonl and as
text; report_to is validated. Tiny random model, a few seconds per run. wandb and trackio,
against the real libraries: test_tracking_real.py."""

import importlib.util
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from asrl.config import ConfigError, load_config
from asrl.preflight import preflight
from asrl.tracking.metrics import MetricsLog
from asrl.tracking.trackers import TensorBoardTracker, make_trackers, scalar_values
from asrl.train.loop import train

FAST = ["sft.max_examples_per_phase=16", "eval.max_examples=2", "data.generate.count=30"]


def tiny(root, *overrides):
    return load_config(
        "configs/tiny.yaml",
        [f"output_dir={root / 'out'}", f"data.path={root / 'data.jsonl'}", *FAST, *overrides],
    )


def jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def events(logdir):
    ea = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    ea.Reload()
    return ea


def assert_events_mirror(out):
    """Every numeric value of metrics.jsonl line n is a scalar at step n, and nothing else."""
    lines = jsonl(out / "metrics.jsonl")
    ea = events(out / "tensorboard")
    want: dict[str, dict[int, float]] = {}
    for step, rec in enumerate(lines, 1):
        for key, value in scalar_values(rec).items():
            want.setdefault(key, {})[step] = value
    assert set(ea.Tags()["scalars"]) == set(want)
    for key, by_step in want.items():
        got = ea.Scalars(key)
        assert [e.step for e in got] == sorted(by_step), key  # each step once, in order
        for e in got:
            assert e.value == pytest.approx(by_step[e.step], rel=1e-6, abs=1e-6), (key, e.step)
            assert e.wall_time == pytest.approx(lines[e.step - 1]["time"])
    return lines, ea


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """One 2-epoch ASRL run, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("a")
    train(tiny(root))
    return root


def test_event_files_mirror_metrics_jsonl(run_a):
    out = run_a / "out"
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    lines, ea = assert_events_mirror(out)
    assert len(lines) == 13  # (0 data, 0 eval) + 2 x (data, sft, eval, grpo, eval) + test
    assert {"eval/format_accuracy", "train/sft_loss", "train/reward/format", "epoch"} <= set(
        ea.Tags()["scalars"]
    )


def test_grpo_rollouts_logged_with_reward_components(run_a):
    out = run_a / "out"
    cfg = tiny(run_a)
    samples = jsonl(out / "samples.jsonl")
    rollouts = [s for s in samples if s["phase"] == "grpo"]
    assert [s["epoch"] for s in rollouts] == [1] * 6 + [2] * 6  # grpo.samples_to_log: 6
    weights = {"format": cfg.reward.format_weight, "correctness": cfg.reward.correctness_weight}
    for s in rollouts:
        assert {"prompt", "output", "reward", "rewards", "advantage", "group"} <= s.keys()
        assert s["rewards"].keys() == weights.keys()  # one value per reward function name
        total = sum(weights[k] * v for k, v in s["rewards"].items())
        assert s["reward"] == pytest.approx(total)
    evals = [s for s in samples if s["phase"] == "eval"]
    assert [s["after"] for s in evals][:2] == ["init", "init"]  # eval.max_examples: 2
    assert all("rewards" in s and "output" in s for s in evals)

    # as text in TensorBoard, at the step of the metrics line the samples belong to
    lines, ea = jsonl(out / "metrics.jsonl"), events(out / "tensorboard")
    grpo_steps = [n for n, r in enumerate(lines, 1) if r["phase"] == "grpo"]
    text = ea.Tensors("samples/grpo/text_summary")
    assert [t.step for t in text] == grpo_steps
    first = text[0].tensor_proto.string_val[0].decode()
    assert "epoch 1, grpo" in first and "correctness" in first and rollouts[0]["prompt"] in first
    after_sft = [n for n, r in enumerate(lines, 1) if r.get("eval/after") == "sft"]
    assert [t.step for t in ea.Tensors("samples/eval/sft/text_summary")] == after_sft


def test_resume_leaves_no_duplicated_or_stale_points(run_a, tmp_path, crashed_after_sft):
    # B is A "crashed" after epoch 2's SFT phase: resuming redoes its GRPO phase and eval,
    # and each step must be in the log once, from B.
    b, state = crashed_after_sft(run_a, tmp_path / "b")
    old = jsonl(b / "out" / "metrics.jsonl")
    train(tiny(b, f"data.path={run_a / 'data.jsonl'}"), resume=True)

    lines, ea = assert_events_mirror(b / "out")
    assert [(r["epoch"], r["phase"]) for r in lines] == [(r["epoch"], r["phase"]) for r in old]
    # the redone lines come from the resumed process (wall times differ), the rest are A's
    kept = state["metrics_lines"]
    assert lines[:kept] == old[:kept]
    assert all(r["time"] > old[-1]["time"] for r in lines[kept:])
    assert len(list((b / "out" / "tensorboard").glob("events.out.tfevents.*"))) == 2

    samples, samples_a = jsonl(b / "out" / "samples.jsonl"), jsonl(run_a / "out" / "samples.jsonl")
    marks = [(s["epoch"], s["phase"], s.get("after")) for s in samples]
    assert marks == [(s["epoch"], s["phase"], s.get("after")) for s in samples_a]
    for tag in ea.Tags()["tensors"]:
        steps = [t.step for t in ea.Tensors(tag)]
        assert len(steps) == len(set(steps)), tag


def test_rewind_removes_later_events_from_the_files(tmp_path):
    logdir = tmp_path / "tb"
    first = TensorBoardTracker(logdir)
    for step in range(1, 6):
        first.scalars(step, {"x": float(step)}, walltime=100.0 + step)
        first.samples(step, "samples/grpo", [{"prompt": "p", "output": f"o{step}"}])
    first.close()
    one = next(logdir.glob("events.out.tfevents.*"))
    one.write_bytes(one.read_bytes()[:-7])  # its last record cut short, as by kill -9
    again = TensorBoardTracker(logdir)
    again.rewind(3)  # lines 1-2 kept; 3 on are logged again
    for step in (3, 4):
        again.scalars(step, {"x": 10.0 * step}, walltime=200.0 + step)
    again.close()
    ea = events(logdir)
    assert [(e.step, e.value) for e in ea.Scalars("x")] == [(1, 1), (2, 2), (3, 30), (4, 40)]
    assert [t.step for t in ea.Tensors("samples/grpo/text_summary")] == [1, 2]
    # the rewritten first file holds nothing at step 3 or later (any reader sees this)
    assert [e.step for e in events(one).Scalars("x")] == [1, 2]


class Recorder:
    def __init__(self):
        self.calls = []

    def scalars(self, step, values, walltime):
        self.calls.append(("scalars", step, values))

    def samples(self, step, tag, rows):
        self.calls.append(("samples", step, tag, len(rows)))

    def rewind(self, step):
        self.calls.append(("rewind", step))

    def close(self, failed=False):
        self.calls.append(("close", failed))


def test_metrics_log_feeds_trackers_and_rewinds_them(tmp_path):
    rec = Recorder()
    log = MetricsLog(tmp_path / "metrics.jsonl", trackers=[rec])
    log.log(0, "data", {"data/train_size": 5, "data/note": "text is not a scalar"})
    log.log_samples(0, "eval", [{"output": "a"}, {"output": "b"}], after="init")
    log.log(0, "eval", {"eval/val_loss": float("nan"), "eval/after": "init"})
    assert rec.calls == [
        ("scalars", 1, {"epoch": 0.0, "data/train_size": 5.0}),
        ("samples", 2, "samples/eval/init", 2),  # filed with the eval line that follows
        ("scalars", 2, {"epoch": 0.0}),  # NaN is written as null, and sent nowhere
    ]
    assert log.sample_lines == 2
    log.reload(1, 1)
    assert rec.calls[-1] == ("rewind", 2) and len(log.records) == 1
    assert len(jsonl(tmp_path / "samples.jsonl")) == 1


@pytest.mark.parametrize("stops", [False, True])
def test_trackers_are_told_whether_the_run_failed(monkeypatch, tmp_path, stops):
    # wandb marks a run closed with failed=True as failed (test_tracking_real.py)
    import asrl.train.loop
    import asrl.train.setup
    from asrl.errors import Interrupted

    rec = Recorder()
    monkeypatch.setattr(asrl.train.setup, "make_trackers", lambda *a: [rec])

    def fake_train(run, start_epoch):
        if stops:
            raise Interrupted(15)  # SIGTERM
        return {}

    monkeypatch.setattr(asrl.train.loop, "_train", fake_train)
    if stops:
        with pytest.raises(Interrupted):
            train(tiny(tmp_path))
    else:
        train(tiny(tmp_path))
    assert rec.calls[-1] == ("close", stops)


def test_report_to_none_writes_no_event_files(tmp_path):
    train(tiny(tmp_path, "schedule.epochs=1", "report_to=[none]"))
    out = tmp_path / "out"
    assert (out / "metrics.jsonl").is_file() and (out / "samples.jsonl").is_file()
    assert not (out / "tensorboard").exists()
    assert not list(out.rglob("*tfevents*"))


def test_report_to_is_validated():
    assert load_config("configs/tiny.yaml").report_to == ["tensorboard"]
    assert load_config("configs/tiny.yaml", ["report_to=none"]).report_to == ["none"]
    assert load_config("configs/tiny.yaml", ["report_to=[]"]).report_to == []
    with pytest.raises(ConfigError, match=r"report_to\[0\].*'tensorbord'.*Did you mean"):
        load_config("configs/tiny.yaml", ["report_to=[tensorbord]"])
    with pytest.raises(ConfigError, match="cannot be combined"):
        load_config("configs/tiny.yaml", ["report_to=[none, tensorboard]"])
    assert make_trackers(["none"], None, {}) == [] and make_trackers([], None, {}) == []


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_missing_tracker_package_is_a_config_error(monkeypatch, name):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a)
    )
    with pytest.raises(ConfigError, match=f"report_to: '{name}'.*pip install {name}"):
        preflight(load_config("configs/tiny.yaml", [f"report_to=[tensorboard, {name}]"]))
