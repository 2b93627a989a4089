"""asrl compare on tiny runs: report, results with p-values, curves; a rerun skips finished runs."""

import json
import math
import signal
import subprocess
import sys
import time

from asrl.analysis.report import build_results, welch_p
from asrl.cli import main

FAST = [
    "schedule.epochs=2",
    "data.generate.count=24",
    "sft.max_examples_per_phase=4",
    "grpo.questions_per_epoch=1",
    "grpo.num_generations=2",
    "grpo.max_new_tokens=6",
    "eval.max_examples=2",
    "eval.max_new_tokens=6",
]


def test_compare_writes_report_results_curves_and_resumes(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "-c", "configs/tiny.yaml", "--methods", "asrl,sft", "--seeds", "2"]
    argv += ["--jobs", "2", "-o", str(out), "--set", f"data.path={tmp_path / 'none.jsonl'}"]
    argv += ["--set", "model.autocast=auto"]  # tiny.yaml pins none; compare resolves auto
    for o in FAST:
        argv += ["--set", o]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "run 1/4 asrl seed 0" in first and "run 4/4 sft seed 1" in first
    # model.autocast=auto is resolved once by compare: every run in the same precision
    precisions = {
        json.loads((out / "runs" / run / "config.json").read_text())["model"]["autocast"]
        for run in ("asrl-s0", "asrl-s1", "sft-s0", "sft-s1")
    }
    assert len(precisions) == 1 and precisions <= {"none", "bf16", "fp16"}
    for run in ("asrl-s0", "asrl-s1", "sft-s0", "sft-s1"):
        assert (out / "runs" / run / "summary.json").is_file()
        assert (out / "runs" / run / "data.jsonl").is_file()  # its own copy of the data
    report = (out / "report.md").read_text()
    assert "| asrl |" in report and "| sft |" in report and "asrl compare" in report
    assert "## Format accuracy per epoch" in report and "## Correctness per epoch" in report
    assert "| epoch 0 | epoch 1 | epoch 2 |" in report
    assert "## Test split (evaluated once, at the end of each run)" in report
    assert "Time budget" not in report  # none was set
    results = json.loads((out / "results.json").read_text())["methods"]
    assert set(results) == {"asrl", "sft"}
    for r in results.values():
        assert set(r["p_vs_asrl"]) == {"format_accuracy", "correctness"}
        assert [p["epoch"] for p in r["per_epoch"]["format_accuracy"]] == [0, 1, 2]
        assert r["compute"]["tokens_trained"]["mean"] > 0
        assert r["test"]["correctness"]["n"] == 2 and r["test"]["n_examples"] == [2, 2]
        assert set(r["test"]["p_vs_asrl"]) == {"format_accuracy", "correctness"}
        assert r["stopped_by_time_budget"] == {"stopped": 0, "of": 2}
    assert results["sft"]["compute"]["tokens_generated"]["mean"] == 0  # sft only evaluates
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    assert main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("skipped") == 4 and "starting" not in again


def test_sigterm_to_compare_stops_its_runs_and_a_rerun_resumes(tmp_path):
    """SIGTERM reaches the running ``asrl train`` children (they leave a checkpoint and
    exit); compare exits 143; the same command again resumes and finishes every run."""
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "asrl", "compare", "-c", "configs/tiny.yaml"]
    cmd += ["--methods", "asrl", "--seeds", "2", "--jobs", "2", "-o", str(out)]
    cmd += ["--set", f"data.path={tmp_path / 'none.jsonl'}"]
    for o in [*FAST, "schedule.epochs=6"]:
        cmd += ["--set", o]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpts = [out / "runs" / f"asrl-s{s}" / "checkpoints" for s in (0, 1)]
    deadline = time.monotonic() + 300
    while not all(any(c.glob("*/state.json")) for c in ckpts if c.parent.exists()) or not all(
        c.parent.exists() for c in ckpts
    ):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    assert "rerun the same command to resume" in output
    for s in (0, 1):
        rdir = out / "runs" / f"asrl-s{s}"
        assert not (rdir / "summary.json").exists()
        assert "interrupted" in (rdir / "train.log").read_text()  # the child got the signal

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("resuming") == 2
    for s in (0, 1):
        summary = json.loads((out / "runs" / f"asrl-s{s}" / "summary.json").read_text())
        assert summary["epochs_run"] == 6


def test_compare_time_budget_reaches_every_run_and_the_report(tmp_path, capsys):
    """--time-budget: each run (2 methods x 1 seed, real trainings) gets the same budget,
    stops at the first phase boundary past it, and the report says so."""
    out = tmp_path / "cmp"
    argv = ["compare", "-c", "configs/tiny.yaml", "--methods", "asrl,sft", "--seeds", "1"]
    argv += ["-o", str(out), "--time-budget", "0.000001"]
    argv += ["--set", f"data.path={tmp_path / 'none.jsonl'}", "--jobs", "2"]
    for o in [*FAST, "schedule.epochs=3"]:
        argv += ["--set", o]
    assert main(argv) == 0
    for method in ("asrl", "sft"):
        rdir = out / "runs" / f"{method}-s0"
        assert json.loads((rdir / "config.json").read_text())["schedule"]["time_budget_s"] == 1e-6
        s = json.loads((rdir / "summary.json").read_text())
        assert s["stopped"] == "time_budget" and s["budget_s"] == 1e-6
        assert s["epochs_run"] == 1 < 3 and s["test"]["n"] >= 1
    report = (out / "report.md").read_text()
    assert "Time budget: 1e-06 s of training per run" in report
    assert "Runs it stopped: asrl 1/1, sft 1/1." in report
    assert "## Test split" in report
    doc = json.loads((out / "results.json").read_text())
    assert doc["time_budget_s"] == 1e-6
    assert "schedule.time_budget_s=1.0e-06" in doc["overrides"]
    for r in doc["methods"].values():
        assert r["stopped_by_time_budget"] == {"stopped": 1, "of": 1}
        assert r["test"]["correctness"]["n"] == 1


def _fake_run(tmp_path, method, seed, fmt, cor, test_cor=None):
    d = tmp_path / f"{method}-{seed}"
    d.mkdir()
    lines = [
        {"epoch": 0, "phase": "eval", "eval/format_accuracy": 0.0, "eval/correctness": 0.0},
        {"epoch": 1, "phase": "eval", "eval/format_accuracy": fmt / 2, "eval/correctness": 0.0},
        {"epoch": 1, "phase": "eval", "eval/format_accuracy": fmt, "eval/correctness": cor},
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    final = {"eval/format_accuracy": fmt, "eval/correctness": cor}
    summary = {"final": final, "epochs_to_format_90": 1 if fmt >= 0.9 else None, "compute": {}}
    if test_cor is not None:
        summary["test"] = {"test/format_accuracy": fmt, "test/correctness": test_cor, "n": 9}
    (d / "summary.json").write_text(json.dumps(summary))
    return {"method": method, "seed": seed, "dir": str(d)}


def test_results_statistics(tmp_path):
    runs = [
        _fake_run(tmp_path, "asrl", 0, 0.9, 0.5, test_cor=0.4),
        _fake_run(tmp_path, "asrl", 1, 1.0, 0.7, test_cor=0.6),
        _fake_run(tmp_path, "sft", 0, 0.5, 0.1, test_cor=0.1),
        _fake_run(tmp_path, "sft", 1, 0.7, 0.1, test_cor=0.3),
    ]
    res = build_results(runs)
    # the last eval of each epoch counts: epoch 1 format = mean(0.9, 1.0) = 0.95, std 0.05
    ep1 = res["asrl"]["per_epoch"]["format_accuracy"][1]
    assert ep1["epoch"] == 1 and math.isclose(ep1["mean"], 0.95) and math.isclose(ep1["std"], 0.05)
    assert res["asrl"]["epochs_to_format_90"] == {"mean": 1.0, "reached": 2, "of": 2}
    assert res["sft"]["epochs_to_format_90"]["reached"] == 0
    # Welch: means 0.95 vs 0.6, sample vars 0.005 and 0.02: t = 0.35 / sqrt(0.0125) = 3.13,
    # df = 0.0125^2 / (0.0025^2 + 0.01^2) = 1.47 -> p ~ 0.13 (scipy's value, checked here)
    p = res["sft"]["p_vs_asrl"]["format_accuracy"]
    assert 0.05 < p < 0.25 and math.isclose(p, welch_p([0.5, 0.7], [0.9, 1.0]))
    assert math.isnan(res["asrl"]["p_vs_asrl"]["format_accuracy"])
    assert math.isnan(welch_p([0.5], [0.9, 1.0]))
    # the test split, from summary.json "test": mean ± std and Welch's p vs asrl likewise
    t = res["asrl"]["test"]
    assert math.isclose(t["correctness"]["mean"], 0.5) and math.isclose(
        t["correctness"]["std"], 0.1
    )
    p = res["sft"]["test"]["p_vs_asrl"]["correctness"]
    assert math.isclose(p, welch_p([0.1, 0.3], [0.4, 0.6])) and 0 < p < 1
    assert math.isnan(res["asrl"]["test"]["p_vs_asrl"]["correctness"])
    assert res["sft"]["test"]["n_examples"] == [9, 9]


def test_compare_reads_a_generator_source_as_configured(tmp_path, capsys):
    """reasoning_gym: (and hf:, globs) are not files to copy: every run reads the source."""
    out = tmp_path / "cmp"
    argv = ["compare", "-c", "configs/tiny.yaml", "--methods", "sft", "--seeds", "1"]
    argv += ["-o", str(out), "--set", "data.path=reasoning_gym:basic_arithmetic"]
    for o in [*FAST, "schedule.epochs=1", "data.reasoning_gym.initial=16"]:
        argv += ["--set", o]
    assert main(argv) == 0
    rdir = out / "runs" / "sft-s0"
    assert not list(rdir.glob("data*"))  # nothing copied
    sizes = json.loads((rdir / "summary.json").read_text())["data_sizes"][0]
    assert sum(v for k, v in sizes.items() if k != "epoch") == 16
