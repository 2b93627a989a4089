"""Calm under bad input: non-finite steps, failing rewards, bad configs, unwritable outputs."""

import json
import re
import sys

import pytest
import torch

from asrl.config import ConfigError, ModelConfig, RewardConfig, RewardFunctionConfig, load_config
from asrl.data.format import ThinkingFormat
from asrl.errors import RewardError, TrainingDiverged
from asrl.phases.common import StepGuard, clip_and_step, guarded_steps
from asrl.preflight import preflight
from asrl.rewards.builtin import RewardSet
from asrl.train.checkpoint import latest_checkpoint
from asrl.train.loop import train
from asrl.types import Example

FMT = ThinkingFormat.from_pairs([["[LOGIC]", "[/LOGIC]"]])
CALLS = {"n": 0}


def exploding_reward(prompts, completions, **_):
    raise ValueError("boom")


def wordy_reward(prompts, completions, **_):
    return ["many" for _ in completions]  # not a number: an error, never a silent 0


def tiny(tmp_path, *overrides):
    """The tiny config, checked as `asrl train` checks it before the model loads."""
    return preflight(
        load_config(
            "configs/tiny.yaml",
            [
                f"output_dir={tmp_path / 'out'}",
                f"data.path={tmp_path / 'data.jsonl'}",
                "schedule.epochs=1",
                "eval.max_examples=2",
                "data.generate.count=30",
                *overrides,
            ],
        )
    )


def examples(n=2):
    return [
        Example(id=f"ex-{i}", messages=({"role": "user", "content": f"q{i}"},), response="4")
        for i in range(n)
    ]


# ---- non-finite loss / gradients


def test_nonfinite_step_is_skipped_and_counted():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    guard = StepGuard(max_bad_in_row=3, phase="sft")
    with guarded_steps(guard):
        w.grad = torch.tensor([1.0, float("nan"), 0.0])
        clip_and_step([w], opt, 1.0)
        assert torch.equal(w.detach(), torch.ones(3)) and w.grad is None and not opt.state
        w.grad = torch.ones(3)
        clip_and_step([w], opt, 1.0, loss=float("inf"))  # a finite grad, an inf loss
        assert guard.skipped == 2 and guard.in_row == 2
        w.grad = torch.ones(3)
        clip_and_step([w], opt, 1.0, loss=0.5)  # a good step resets the streak
        assert guard.in_row == 0 and not torch.equal(w.detach(), torch.ones(3))
        for _ in range(2):
            w.grad = torch.full((3,), float("nan"))
            clip_and_step([w], opt, 1.0)
        w.grad = torch.full((3,), float("nan"))
        with pytest.raises(TrainingDiverged, match=r"sft: 3 optimizer steps in a row.*sft\.lr"):
            clip_and_step([w], opt, 1.0)


def test_huge_lr_diverges_with_a_clear_stop(tmp_path):
    # lr=1e30: the first step blows the weights up, the next losses are inf/NaN
    cfg = tiny(tmp_path, "sft.lr=1.0e+30", "train.max_bad_steps_in_row=2")
    with pytest.raises(TrainingDiverged, match=r"sft: 2 optimizer steps.*no checkpoint exists"):
        train(cfg)
    assert latest_checkpoint(tmp_path / "out" / "checkpoints") is None


def test_skipped_steps_and_reward_errors_are_logged(tmp_path):
    cfg = tiny(
        tmp_path,
        f"reward.custom=[{{path: '{__name__}:exploding_reward'}}]",
        "reward.on_error=skip",
        "reward.max_errors=100",
    )
    train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    sft = next(r for r in rows if r["phase"] == "sft")
    grpo = next(r for r in rows if r["phase"] == "grpo")
    assert sft["train/skipped_steps"] == 0 and grpo["train/skipped_steps"] == 0
    assert grpo["train/reward_errors"] == 1  # one rollout batch scored, the function failed
    assert grpo["train/reward/exploding_reward"] is None  # no values, not zeros


# ---- rewards that raise


def test_reward_that_raises_stops_naming_function_and_example():
    rs = RewardSet.from_config(
        RewardConfig(custom=[RewardFunctionConfig(path=f"{__name__}:exploding_reward")]), FMT
    )
    with pytest.raises(RewardError, match=r"'exploding_reward'.*'ex-0'.*'q0'.*boom"):
        rs.score(examples(), ["a", "b"])


def test_reward_errors_skipped_then_capped():
    cfg = RewardConfig(
        custom=[RewardFunctionConfig(path=f"{__name__}:exploding_reward")],
        on_error="skip",
        max_errors=2,
    )
    rs = RewardSet.from_config(cfg, FMT)
    plain = RewardSet.from_config(RewardConfig(), FMT)
    for _ in range(2):
        totals, parts = rs.score(examples(), ["a", "4"])
        assert parts["exploding_reward"] == [None, None]
        assert totals == plain.score(examples(), ["a", "4"])[0]  # the others still count
    assert rs.errors == 2
    with pytest.raises(RewardError, match="max_errors=2"):
        rs.score(examples(), ["a", "4"])


def test_reward_returning_non_numbers_is_an_error():
    cfg = RewardConfig(custom=[RewardFunctionConfig(path=f"{__name__}:wordy_reward")])
    with pytest.raises(RewardError, match="wordy_reward.*str value 'many'"):
        RewardSet.from_config(cfg, FMT).score(examples(), ["a", "b"])


# ---- bad configuration, before heavy work


@pytest.mark.parametrize(
    "override, key",
    [
        ("reward.custom=[{path: 'no_such_module_xyz:f'}]", r"reward.custom\[0\].path.*no_such"),
        (f"reward.custom=[{{path: '{__name__}:missing_fn'}}]", r"reward.custom\[0\].path"),
        ("reward.on_error=ignore", "reward.on_error"),
        ("reward.max_errors=0", "reward.max_errors"),
        ("train.max_bad_steps_in_row=0", "train.max_bad_steps_in_row"),
        ("model.name=/no/such/model/dir", "model.name: model directory not found"),
        ("model.name=./missing-model", "model.name: model directory not found"),
        ("model.name=/no/such/file.gguf", "model.name: GGUF file not found"),
    ],
)
def test_bad_config_fails_before_the_model_loads(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        tiny(tmp_path, override)


def test_remote_code_opt_in_and_only_listed_reward_modules_are_imported(tmp_path, monkeypatch):
    assert ModelConfig().trust_remote_code is False
    (tmp_path / "sneaky_reward_mod.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_suffix('.ran').touch()\n"
        "def f(prompts, completions, **_):\n    return [0.0] * len(completions)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "sneaky_reward_mod.ran"
    # data naming the module (any field, any shape) is parsed, never executed
    from asrl.data.records import parse_line

    line = {"prompt": "q", "response": "r", "reward": "sneaky_reward_mod:f", "type": "x"}
    parse_line(json.dumps(line).encode())
    tiny(tmp_path)  # a config that does not list it
    assert not marker.exists() and "sneaky_reward_mod" not in sys.modules
    tiny(tmp_path, "reward.custom=[{path: 'sneaky_reward_mod:f'}]")
    assert marker.exists()  # listed in the config: imported (at config time, as checked)
    sys.modules.pop("sneaky_reward_mod", None)


def test_unwritable_output_dir_fails_before_loading(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    # we run as root, so chmod cannot make a directory unwritable: a path under a file is
    cfg = tiny(tmp_path, f"output_dir={blocker / 'sub'}")
    with pytest.raises(ConfigError, match=r"output_dir: cannot write to .*a-file/sub"):
        train(cfg)


def test_kill_during_checkpoint_write_leaves_previous_whole(tmp_path):
    from asrl.model.loading import load_policy
    from asrl.train.checkpoint import save_checkpoint

    root = tmp_path / "checkpoints"
    policy = load_policy("tiny-random-llama")
    opt = {"sft": torch.optim.AdamW(policy.trainable_parameters())}
    save_checkpoint(root, "epoch-0001", policy, opt, {"epoch": 1})
    # what a kill mid-save leaves: a temp dir (even a complete-looking one) and a
    # directory without state.json (state.json is written last)
    (root / ".epoch-0002.tmp").mkdir()
    (root / ".epoch-0002.tmp" / "state.json").write_text("{}")
    (root / ".epoch-0009.tmp").mkdir()
    (root / "epoch-0003").mkdir()
    assert latest_checkpoint(root).name == "epoch-0001"
    save_checkpoint(root, "epoch-0002", policy, opt, {"epoch": 2}, keep_last=5)
    assert not list(root.glob(".*"))  # every stale temp dir cleared by the next save
    assert latest_checkpoint(root).name == "epoch-0002"


# ---- nothing to train on: stop before the model works, saying what to change


def test_max_length_below_every_example_stops_before_training(tmp_path):
    import subprocess

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(out)]
    cmd += ["--set", f"data.path={tmp_path / 'data.jsonl'}", "--set", "data.max_length=10"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    msg = r.stderr.strip().splitlines()[-1]
    assert re.search(
        r"asrl: configuration error: data\.max_length: all \d+ train example\(s\) are longer "
        r"than 10 tokens .*the shortest has (\d+)\).*raise data\.max_length to at least \1",
        msg,
    ), msg
    assert "epoch" not in r.stdout and "done" not in r.stdout  # no eval, no phase ran
    assert not (out / "metrics.jsonl").exists()  # so the fixed command needs no --resume
    shortest = int(re.search(r"the shortest has (\d+)", msg).group(1))
    cmd[-1] = f"data.max_length={shortest}"  # the fix the message names
    cmd += ["--set", "schedule.epochs=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sft = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    sft = next(x for x in sft if x["phase"] == "sft")
    assert sft["compute/examples_seen"] >= 1 and sft["data/dropped_too_long"] >= 0


def test_no_usable_train_record_stops_before_training(tmp_path):
    from asrl.errors import NoTrainingData

    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "", "response": "r"}\n{broken\n')  # nothing usable
    cfg = tiny(tmp_path)
    with pytest.raises(NoTrainingData, match=r"data\.path: no train examples .* 2 bad record"):
        train(cfg)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
    # the GRPO-only schedule needs no reference within max_length, but still prompts
    cfg = tiny(tmp_path, "schedule.method=grpo", "data.max_length=10")
    with pytest.raises(NoTrainingData, match="no train examples"):
        train(cfg)
