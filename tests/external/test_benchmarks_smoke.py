"""benchmarks/grpo_learns.py --smoke as a real subprocess: stage 0 (records, SFT, export),
asrl's GRPO phase and TRL's GRPOTrainer from the same adapter on the same questions, the
table, the JSON and the plot. The tiny random model learns nothing; what is checked is
that both sides did identical work and that the report holds what it promises."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("scipy")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]


def completion_chars(prompts, completions, **_):
    """A reward that varies with the completion (the tiny model's outputs all score the same
    under format + correctness, so GRPO would have nothing to compare and move no weight)."""
    return [len(c) / 50 for c in completions]


def test_grpo_learns_smoke_runs_both_sides_on_identical_work(tmp_path):
    work = tmp_path / "work"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).resolve().parent)]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "grpo_learns.py"),
            "--smoke",
            "--work",
            str(work),
            "--set",
            "reward.custom=[{path: 'test_benchmarks_smoke:completion_chars', weight: 1.0}]",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # nothing may depend on being started from the repository root
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (out,) = work.glob("grpo_learns-*.json")
    assert out.with_suffix(".png").stat().st_size > 10_000  # a real figure, not an empty file
    doc = json.loads(out.read_text())

    runs = {r["side"]: r for r in doc["runs"]}
    assert set(runs) == {"asrl", "trl"} and len(doc["runs"]) == 2  # --smoke: one seed
    asrl, trl = runs["asrl"], runs["trl"]
    # identical work: the same start adapter, the same questions at every step
    assert asrl["start_fingerprint"] == pytest.approx(trl["start_fingerprint"], rel=1e-12)
    assert [s["questions"] for s in asrl["steps"]] == [s["questions"] for s in trl["steps"]]
    plan = json.loads((work / "plan-seed0.json").read_text())["steps"]
    assert [s["questions"] for s in asrl["steps"]] == plan and len(plan) == 2
    assert trl["same_prompt_ids"] is True
    assert trl["eos_token_ids"]["trl"] == trl["eos_token_ids"]["asrl"]
    for r in (asrl, trl):
        assert [s["step"] for s in r["steps"]] == [1, 2]
        assert all(math.isfinite(s["reward"]) for s in r["steps"])
        assert 0 < r["steps"][0]["seconds"] < r["steps"][1]["seconds"] <= r["grpo_seconds"]
        # --eval-every 1: after each step; the seconds are GRPO time only (eval excluded)
        assert [e["step"] for e in r["evals"]] == [1, 2]
        assert [e["seconds"] for e in r["evals"]] == [s["seconds"] for s in r["steps"]]
        assert all(0 <= e["correctness"] <= 1 and e["n"] == 4 for e in r["evals"])
        assert r["adapter_delta"] > 0  # both really trained, from the same start
    assert 0 <= doc["start"]["correctness"] <= 1 and doc["start"]["n"] == 4

    summary = doc["summary"]
    for side in ("asrl", "trl"):
        s = summary[side]
        assert s["gain_pts"] == pytest.approx(100 * (s["final_mean"] - doc["start"]["correctness"]))
        assert s["welch_p"] is None  # one seed: no test (NaN, written as null)
    assert [c["target"].split(":")[0] for c in doc["checks"]][1:] == [
        "at equal steps (2)",
        "gain per GRPO-second",
    ]
    assert doc["machine"]["cpu"] and doc["machine"]["commit"] and doc["machine"]["date"]
    for text in ("Welch p", "pts/GRPO-s", "CPU:", "commit", "reward per step"):
        assert text in proc.stdout


def sft_start(tmp_path):
    """A tiny SFT run directory (the start both scripts take) and its generated data."""
    data, start = tmp_path / "data.jsonl", tmp_path / "sft"
    sft = [sys.executable, "-m", "asrl", "train", "-c", "configs/tiny.yaml", "-o", str(start)]
    sets = ["schedule.method=sft", "schedule.epochs=1", f"data.path={data}", "report_to=none"]
    cmd = [*sft, *[x for s in sets for x in ("--set", s)]]
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
    return data, start


def run_script(name, *args):
    """benchmarks/NAME as a real subprocess; asserts it exits 0 and returns it."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_grpo_signal_runs_each_arm_on_one_budget_and_scores_them_sampled(tmp_path):
    """benchmarks/grpo_signal.py on the tiny model: a start (an SFT run directory), the
    start's evaluation, one run per arm on the same budget, the sampled scoring, the table."""
    data, start = sft_start(tmp_path)
    work = tmp_path / "work"
    proc = run_script(
        "grpo_signal.py",
        *("--config", "configs/tiny.yaml", "--start", str(start), "--data", str(data)),
        *("--work", str(work), "--seeds", "1", "--budget", "1", "--sampled", "2"),
        *("--set", "model.autocast=none"),
    )
    for name, zero_std in [("off-s0", False), ("on-s0", True)]:
        summary = json.loads((work / name / "summary.json").read_text())
        assert summary["stopped"] == "time_budget" and summary["test"]["n"] > 0
        cfg = json.loads((work / name / "config.json").read_text())
        assert cfg["grpo"]["filter_zero_std"] is zero_std and cfg["model"]["autocast"] == "none"
    for name in ["start-eval", "off-s0", "on-s0"]:
        scored = json.loads((work / name / "sampled.json").read_text())
        assert scored["k"] == 2 and 0.0 <= scored["sampled"] <= 1.0
    table = proc.stdout[proc.stdout.index("| arm |") :]
    assert "| off | 1 |" in table and "| on | 1 |" in table


def test_pass_rates_scores_every_question_k_times_and_pairs_adapters(tmp_path):
    """benchmarks/pass_rates.py on the tiny model: two adapters (an SFT run, and the bare
    base) on the test split, k sampled completions per question, the per-pattern tables, the
    paired line, and the JSON of every question's hits."""
    data, start = sft_start(tmp_path)
    out = tmp_path / "hits.json"
    proc = run_script(
        "pass_rates.py",
        *("--config", "configs/tiny.yaml", "--data", str(data), "--split", "test"),
        *("--adapter", f"sft={start}", "--adapter", "base=base", "--k", "3"),
        *("--set", "model.autocast=none", "--set", "eval.max_new_tokens=8", "--out", str(out)),
    )
    doc = json.loads(out.read_text())
    test_ids = {
        json.loads(line)["id"]
        for line in (start / "samples.jsonl").read_text().splitlines()
        if json.loads(line)["phase"] == "test"
    }
    for name in ("sft", "base"):
        hits = doc["hits"][name]
        assert set(hits) == set(doc["kinds"]) and all(len(h) == 3 for h in hits.values())
    assert test_ids <= set(doc["kinds"])  # the run's own test eval saw only test questions
    from asrl.data.synthetic import PATTERNS

    assert set(doc["kinds"].values()) <= set(PATTERNS)  # every prompt read as a pattern
    assert proc.stdout.count("| all |") == 2 and "base against sft, per question" in proc.stdout


def test_grpo_noise_scale_counts_flat_groups_as_zero_units_and_reports_both_losses(tmp_path):
    """benchmarks/grpo_noise_scale.py on the tiny model, with a reward that is flat for two
    records in three: exactly those questions' groups are the zero-variance units, the
    others carry a gradient, and the GRPO, held-out and SFT rows come from all the units."""
    from tests.helpers.signal_rewards import _flat

    data, start = sft_start(tmp_path)
    out = tmp_path / "noise.json"
    reward = "reward.custom=[{path: 'tests.helpers.signal_rewards:flat_for_some', weight: 1.0}]"
    proc = run_script(
        "grpo_noise_scale.py",
        *("--config", "configs/tiny.yaml", "--start", str(start), "--data", str(data)),
        *("--groups", "15", "--val-groups", "4", "--sft-examples", "5", "--out", str(out)),
        *("--set", "reward.format_weight=0", "--set", "reward.correctness_weight=0"),
        *("--set", reward),
    )
    doc = json.loads(out.read_text())
    for sample, n in (("grpo", 15), ("val", 4)):
        got = doc[sample]
        assert len(got["questions"]) == n == got["n"]
        assert got["zero_std"] == [_flat(q) for q in got["questions"]]
    assert not set(doc["grpo"]["questions"]) & set(doc["val"]["questions"])  # train vs val
    rows = {r["name"]: r for r in doc["rows"]}
    assert rows["GRPO, every group"]["n"] == 15 and rows["SFT"]["n"] == 5
    assert rows["GRPO, informative groups"]["n"] == 15 - sum(doc["grpo"]["zero_std"]) > 1
    assert rows["GRPO, held-out questions"]["n"] == 4
    for r in rows.values():
        assert r["trace_sigma"] > 0 and -1 <= r["half_cosine"] <= 1
    assert set(doc["cosines"]) == {
        "GRPO (train) and SFT",
        "GRPO on train and on held-out questions",
        "GRPO (held-out) and SFT",
    }
    assert "| SFT | 5 examples |" in proc.stdout and "machine:" in proc.stdout
