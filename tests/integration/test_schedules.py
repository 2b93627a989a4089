"""Every method's phase sequence, the adaptive schedule's decisions, ReLIFT's buffer."""

import json
import random

import pytest
import torch

from asrl.config import ConfigError, GRPOConfig, ScheduleConfig, SFTConfig, load_config
from asrl.data.records import parse_record
from asrl.data.synthetic import generate_records
from asrl.methods import METHODS as SCHEDULES
from asrl.methods import make_method as make_schedule
from asrl.methods.relift import ReliftBuffer, all_fail_groups, run_relift_phase
from asrl.preflight import preflight
from asrl.rewards.builtin import RewardSet, WeightedReward
from asrl.train.loop import train
from asrl.types import PhaseResult, Rollout


def phases_over(method, epochs=6, **kw):
    s = make_schedule(ScheduleConfig(method=method, **kw))
    return [list(s.phases(e)) for e in range(1, epochs + 1)]


def test_fixed_schedules_phase_sequences():
    assert phases_over("asrl", 2) == [["sft", "grpo"]] * 2
    assert phases_over("sft", 2) == [["sft"]] * 2
    assert phases_over("grpo", 2) == [["grpo"]] * 2
    assert phases_over("sequential", 4, sft_epochs=2) == [["sft"], ["sft"], ["grpo"], ["grpo"]]
    assert phases_over("ares", 4, stage_epochs=1) == [["grpo"], ["sft"], ["grpo"], ["sft"]]
    assert phases_over("ares", 6, stage_epochs=2) == [["grpo"]] * 2 + [["sft"]] * 2 + [["grpo"]] * 2
    assert phases_over("chord", 2) == [["chord"]] * 2
    assert phases_over("relift", 2) == [["relift"]] * 2
    # without a context the adaptive schedule warms up with SFT and has no signal yet
    assert phases_over("adaptive", 2) == [["sft"], ["sft"]]
    assert set(SCHEDULES) == {
        "asrl",
        "sft",
        "grpo",
        "sequential",
        "ares",
        "adaptive",
        "chord",
        "relift",
    }


def test_unknown_method_and_bad_values_are_config_errors():
    with pytest.raises(ConfigError, match="schedule.method"):
        preflight(load_config("configs/tiny.yaml", ["schedule.method=nope"]))
    with pytest.raises(ConfigError, match="schedule.adaptive_signal"):
        load_config("configs/tiny.yaml", ["schedule.adaptive_signal=loss"])


class FakeLog:
    def __init__(self, evals=()):
        self.lines, self._evals = [], list(evals)

    def log(self, epoch, phase, metrics):
        self.lines.append({"epoch": epoch, "phase": phase, **metrics})

    def evals(self):
        return self._evals


class FakeRun:
    def __init__(self, probe=0.5, evals=()):
        self.metrics, self.probe, self.probes = FakeLog(evals), probe, 0

    def probe_sft_grad_norm(self, epoch, slot):
        self.probes += 1
        return self.probe


def test_adaptive_grad_norm_signal_logs_and_is_deterministic():
    cfg = ScheduleConfig(method="adaptive", adaptive_slots=3, adaptive_p_min=0.1)
    s = make_schedule(cfg, seed=7)
    assert list(s.phases(1, FakeRun())) == ["sft"]
    s.observe("sft", PhaseResult("sft", {"train/sft_grad_norm": 2.0}))  # g_warm = 2
    s.observe("grpo", PhaseResult("grpo", {}))  # the signal is stale now: probe next slot
    run = FakeRun(probe=0.5)  # p = 0.5 / 2 = 0.25
    choices = []
    for phase in s.phases(2, run):
        choices.append(phase)
        s.observe(phase, PhaseResult(phase, {"train/sft_grad_norm": 0.5} if phase == "sft" else {}))
    lines = run.metrics.lines
    assert [ln["phase"] for ln in lines] == ["schedule"] * 3
    assert [ln["schedule/choice"] for ln in lines] == choices
    assert all(ln["schedule/signal"] == 0.25 and ln["schedule/p_sft"] == 0.25 for ln in lines)
    # the draws depend only on (seed, epoch, slot)
    expect = [
        "sft" if random.Random(f"7:2:{k}:adaptive").random() < 0.25 else "grpo" for k in range(3)
    ]
    assert choices == expect
    # a resumed schedule carries g_warm
    s2 = make_schedule(cfg, seed=7)
    s2.restore(json.loads(json.dumps(s.state())))
    assert s2.g_warm == 2.0
    # tiny signals are clipped up to p_min
    s2.last_sft_norm = 0.0
    run = FakeRun()
    next(iter(s2.phases(3, run)))
    assert run.metrics.lines[0]["schedule/p_sft"] == 0.1 and run.probes == 0


def test_adaptive_format_accuracy_signal():
    cfg = ScheduleConfig(method="adaptive", adaptive_slots=1, adaptive_signal="format_accuracy")
    s = make_schedule(cfg)
    s.observe("sft", PhaseResult("sft", {"train/sft_grad_norm": 1.0}))
    run = FakeRun(evals=[{"eval/format_accuracy": 0.7}])
    list(s.phases(2, run))
    assert run.metrics.lines[0]["schedule/signal"] == pytest.approx(0.3)


def tiny(tmp_path, *overrides):
    return load_config(
        "configs/tiny.yaml",
        [
            f"output_dir={tmp_path / 'out'}",
            f"data.path={tmp_path / 'data.jsonl'}",
            "sft.max_examples_per_phase=8",
            "eval.max_examples=2",
            "eval.max_new_tokens=6",
            "grpo.max_new_tokens=6",
            *overrides,
        ],
    )


def read_metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_sequential_run_switches_for_good(tmp_path):
    train(
        tiny(tmp_path, "schedule.method=sequential", "schedule.sft_epochs=2", "schedule.epochs=3")
    )
    lines = read_metrics(tmp_path / "out")
    trained = [(r["epoch"], r["phase"]) for r in lines if r["phase"] in ("sft", "grpo")]
    assert trained == [(1, "sft"), (2, "sft"), (3, "grpo")]
    evals = [r["eval/after"] for r in lines if r["phase"] == "eval"]
    assert evals == ["init", "sft", "sft", "grpo"]


def test_adaptive_run_logs_signal_and_choice(tmp_path):
    train(
        tiny(tmp_path, "schedule.method=adaptive", "schedule.epochs=2", "schedule.adaptive_slots=2")
    )
    lines = read_metrics(tmp_path / "out")
    sched = [r for r in lines if r["phase"] == "schedule"]
    assert [r["epoch"] for r in sched] == [2, 2]
    assert all({"schedule/signal", "schedule/p_sft", "schedule/choice"} <= r.keys() for r in sched)
    ran = [r["phase"] for r in lines if r["epoch"] == 2 and r["phase"] in ("sft", "grpo")]
    assert ran == [r["schedule/choice"] for r in sched]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["method"] == "adaptive" and summary["epochs_run"] == 2


# --------------------------------------------------------------------------------------
# ReLIFT


def test_all_fail_groups_uses_the_correctness_component():
    exs = [parse_record(r) for r in generate_records(3, seed=1)]
    ro = Rollout(
        examples=[e for e in exs for _ in range(2)],
        completions=[""] * 6,
        prompt_ids=[[1]] * 6,
        completion_ids=[[1]] * 6,
        rewards=[1.0] * 6,
        components={"correctness": [0.0, 0.0, 1.0, 0.0, None, -1.0]},
    )
    assert all_fail_groups(ro, 2) == [exs[0], exs[2]]  # group 1 had one success


@pytest.fixture(scope="module")
def policy():
    from asrl.model.loading import load_policy

    return load_policy(load_config("configs/tiny.yaml").model, seed=1)


def _always_fail(prompts, completions, **_):
    return [0.0] * len(completions)


@pytest.mark.parametrize("capacity, steps, left", [(2, 1, 0), (4, 0, 2)])
def test_relift_buffers_all_fail_prompts_and_steps_when_full(policy, capacity, steps, left):
    train_set = [parse_record(r) for r in generate_records(6, seed=2)]
    rewards = RewardSet([WeightedReward("correctness", _always_fail, 1.0)])
    gcfg = GRPOConfig(questions_per_epoch=2, num_generations=2, max_new_tokens=4, steps_per_round=1)
    params = policy.trainable_parameters()
    opts = {k: torch.optim.AdamW(params, lr=1e-3) for k in ("sft", "grpo")}
    buf = ReliftBuffer(capacity)
    res = run_relift_phase(
        policy, train_set, gcfg, SFTConfig(), rewards, opts, buf, random.Random(0), 0, 256
    )
    assert res.metrics["relift/added"] == 2
    assert res.metrics["relift/sft_steps"] == steps and buf.sft_steps == steps
    assert res.metrics["relift/buffer_size"] == left and len(buf.examples) == left
    assert bool(opts["sft"].state) == (steps == 1)  # the SFT optimizer stepped iff full
    restored = ReliftBuffer(capacity)
    restored.restore(json.loads(json.dumps(buf.state())))
    assert restored.examples == buf.examples
