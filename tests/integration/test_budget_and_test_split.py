"""The final test-split evaluation and schedule.time_budget_s, on real tiny runs (in-process)."""

import json

import pytest

from asrl.config import ConfigError, load_config
from asrl.train.loop import train

QUICK = [
    "report_to=none",
    "model.autocast=none",
    "sft.max_examples_per_phase=8",
    "eval.max_examples=2",
]


def tiny(tmp_path, *overrides):
    return load_config(
        "configs/tiny.yaml",
        [
            f"output_dir={tmp_path / 'out'}",
            f"data.path={tmp_path / 'data.jsonl'}",
            *QUICK,
            *overrides,
        ],
    )


def lines(tmp_path):
    text = (tmp_path / "out" / "metrics.jsonl").read_text()
    return [json.loads(x) for x in text.splitlines()]


def phases(tmp_path):
    return [(r["epoch"], r["phase"]) for r in lines(tmp_path)]


def state(tmp_path, name):
    return json.loads((tmp_path / "out" / "checkpoints" / name / "state.json").read_text())


def summary(tmp_path):
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def test_budget_stops_at_the_first_phase_boundary_and_resume_keeps_the_spent_time(tmp_path):
    # a microsecond: spent by the first phase, so the run stops at the boundary after it
    # (mid-epoch: asrl is resumable there), well before schedule.epochs
    s = train(tiny(tmp_path, "schedule.epochs=2", "schedule.time_budget_s=1.0e-6"))
    stopped_at = [(0, "data"), (0, "eval"), (1, "data"), (1, "sft"), (1, "eval"), (1, "test")]
    assert phases(tmp_path) == stopped_at
    assert s["stopped"] == "time_budget" and s["stopped_early"] is False
    assert s["budget_s"] == 1e-6 and s["elapsed_s"] >= 1e-6 and s["epochs_run"] == 1
    assert summary(tmp_path)["stopped"] == "time_budget"
    ckpts = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert ckpts == ["epoch-0000.p1"]  # written at the boundary where it stopped
    # the checkpoint keeps the very training time the stop was decided on
    assert state(tmp_path, "epoch-0000.p1")["elapsed_s"] == s["elapsed_s"]
    test = s["test"]
    assert test["phase"] == "test" and test["n"] == test["test/n"] >= 1
    assert {"test/format_accuracy", "test/correctness", "test/val_loss"} <= test.keys()

    # resumed with the same budget: the spent time comes back with the checkpoint, so it
    # stops again at once (a fresh budget would run epoch 1's GRPO phase now)
    again = train(tiny(tmp_path, "schedule.epochs=2", "schedule.time_budget_s=1.0e-6"), True)
    assert phases(tmp_path) == stopped_at  # no phase ran: the same lines, the test redone
    assert [p for _, p in phases(tmp_path)].count("test") == 1  # still exactly one
    assert again["stopped"] == "time_budget" and again["epochs_run"] == 1
    assert again["elapsed_s"] >= s["elapsed_s"]

    # the budget lifted: it continues from that boundary and counts on from the spent time
    done = train(tiny(tmp_path, "schedule.epochs=2"), resume=True)
    assert done["stopped"] is None and done["epochs_run"] == 2 and done["budget_s"] is None
    got = phases(tmp_path)
    assert got[:5] == [(0, "data"), (0, "eval"), (1, "data"), (1, "sft"), (1, "eval")]
    assert got[5:7] == [(1, "grpo"), (1, "eval")] and got[-1] == (2, "test")
    assert [p for _, p in got].count("test") == 1
    assert state(tmp_path, "epoch-0002")["elapsed_s"] > s["elapsed_s"]
    assert done["elapsed_s"] == state(tmp_path, "epoch-0002")["elapsed_s"]


def test_budget_stop_writes_its_checkpoint_under_every_epoch_too(tmp_path):
    s = train(
        tiny(
            tmp_path, "schedule.epochs=2", "schedule.time_budget_s=1.0e-6", "checkpoint.every=epoch"
        )
    )
    assert s["stopped"] == "time_budget"
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["epoch-0000.p1"]


def test_budget_on_an_sft_only_run_stops_at_the_epoch_end(tmp_path):
    s = train(
        tiny(tmp_path, "schedule.method=sft", "schedule.epochs=2", "schedule.time_budget_s=1.0e-6")
    )
    assert s["stopped"] == "time_budget" and s["epochs_run"] == 1
    assert phases(tmp_path)[-3:] == [(1, "sft"), (1, "eval"), (1, "test")]
    assert state(tmp_path, "epoch-0001")["elapsed_s"] == s["elapsed_s"]


def test_zero_budget_evaluates_only_and_the_test_split_is_disjoint_from_val(tmp_path):
    s = train(
        tiny(
            tmp_path,
            "schedule.time_budget_s=0",
            "data.generate.count=120",
            "eval.max_examples=3",
            "eval.test_max_examples=5",
        )
    )
    assert phases(tmp_path) == [(0, "data"), (0, "eval"), (0, "test")]
    assert s["epochs_run"] == 0 and s["stopped"] == "time_budget"
    assert not (tmp_path / "out" / "checkpoints").exists()  # nothing trained, nothing to save
    data = lines(tmp_path)[0]
    assert s["initial"]["eval/n"] == 3  # eval.max_examples
    assert s["test"]["n"] == min(5, data["data/test_size"]) and s["test"]["n"] > 3
    samples = [json.loads(x) for x in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    val_ids = {r["id"] for r in samples if r["phase"] == "eval"}
    test_ids = {r["id"] for r in samples if r["phase"] == "test"}
    assert test_ids and val_ids and not test_ids & val_ids
    assert lines(tmp_path)[-1]["time/test_s"] > 0


def test_empty_test_split_gives_test_null(tmp_path, capsys):
    s = train(tiny(tmp_path, "schedule.time_budget_s=0", "data.split=[0.8,0.2,0.0]"))
    assert s["test"] is None and summary(tmp_path)["test"] is None
    last = lines(tmp_path)[-1]
    assert last["phase"] == "test" and last["test/n"] == 0
    out = capsys.readouterr().out
    assert "test split is empty" in out and "test: none (empty test split)" in out


def test_config_checks():
    with pytest.raises(ConfigError, match=r"eval\.split.*held out for the one final"):
        load_config("configs/tiny.yaml", ["eval.split=test"])
    with pytest.raises(ConfigError, match=r"schedule\.time_budget_s: must be >= 0"):
        load_config("configs/tiny.yaml", ["schedule.time_budget_s=-1"])
    with pytest.raises(ConfigError, match=r"eval\.test_max_examples: must be >= 1"):
        load_config("configs/tiny.yaml", ["eval.test_max_examples=0"])
    cfg = load_config("configs/tiny.yaml", ["schedule.time_budget_s=90"])
    assert cfg.schedule.time_budget_s == 90.0 and isinstance(cfg.schedule.time_budget_s, float)
