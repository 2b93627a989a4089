"""GRPO's learning signal in asrl's own loop: dynamic sampling (and question selection) on
and off, from one SFT'd start, at an equal wall-clock budget.

    PYTHONPATH=. .venv/bin/python benchmarks/grpo_signal.py --start ADAPTER --data DATA.jsonl \
        [--arms off,on] [--seeds 3] [--first-seed 0] [--budget 720] [--work runs/grpo_signal] \
        [--set KEY=VALUE ...]
    ... --report-only      # no training: the table of the runs already under --work

Every run is ``asrl train -c configs/demo.yaml --set schedule.method=grpo`` from
``model.adapter=ADAPTER`` with ``schedule.time_budget_s=BUDGET``: rounds of 8 questions x 6
completions x <= the config's max_new_tokens, one optimizer step per round (constant LR, so
the budget, not a step count, decides how many), until the budget is spent, then the run's
final evaluation on the held-out test split. `model.autocast: auto` is resolved once (every
run and every scoring gets the same precision). The arms differ in one setting each
(``ARMS``). A run of ``start-eval`` (budget 0) measures the start on the same test examples.
Per-round evaluations use 8 val examples only (a progress display; the test split decides).

The table: rounds, GRPO seconds, tokens generated, the share of zero-variance groups, the
mean correctness reward of the sampled completions in the first and last quarter of the
rounds (what GRPO optimizes), greedy test correctness (the run's own final eval), mean +- sd
over seeds, with Welch's p against the start and against the first arm, and the sampled test
correctness of the start and of every run's final adapter (``--sampled`` completions per test
question at the GRPO temperature, scored after all runs have finished). See docs/grpo_learns.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import cpu_name

ROOT = Path(__file__).resolve().parent.parent

ARMS: dict[str, list[str]] = {
    "off": ["grpo.filter_zero_std=false"],
    "on": ["grpo.filter_zero_std=true"],
    "pass_rate": ["grpo.filter_zero_std=false", "grpo.question_selection=pass_rate"],
    "on+pass_rate": ["grpo.filter_zero_std=true", "grpo.question_selection=pass_rate"],
    "t1": ["grpo.filter_zero_std=false", "grpo.temperature=1.0"],  # more varied groups
}

COMMON = [
    "schedule.method=grpo",
    "schedule.epochs=1000",  # the budget ends the run
    "schedule.patience=100000",  # no early stop on the 8-example progress evals
    "grpo.lr=5e-5",
    "grpo.steps_per_round=1",
    "grpo.micro_batch_size=12",
    "eval.max_examples=8",
    "eval.test_max_examples=1000",  # the whole test split
    "report_to=none",
]


def train(a: argparse.Namespace, out: Path, sets: list[str]) -> None:
    if (out / "summary.json").is_file():
        print(f"{out.name}: done already, kept", flush=True)
        return
    cmd = [sys.executable, "-m", "asrl", "train", "-c", a.config, "-o", str(out)]
    base = [f"model.adapter={a.start}", f"data.path={a.data}", *COMMON, *a.set, *sets]
    cmd += [x for s in base for x in ("--set", s)]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def run_stats(out: Path) -> dict[str, Any] | None:
    if not (out / "summary.json").is_file():
        return None
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    grpo = [r for r in rows if r.get("phase") == "grpo"]
    reward = [r["train/reward/correctness"] for r in grpo]
    reward = [x for x in reward if x is not None]
    q = max(1, len(reward) // 4)
    sampled = out / "sampled.json"
    return {
        "sampled": json.loads(sampled.read_text())["sampled"] if sampled.is_file() else None,
        "test": summary["test"]["test/correctness"],
        "test_n": summary["test"]["test/n"],
        "rounds": len(grpo),
        "grpo_s": sum(r["time/phase_s"] for r in grpo),
        "tokens": sum(r["compute/tokens_generated"] for r in grpo),
        "zero_std": statistics.mean(r["train/frac_zero_std_groups"] for r in grpo) if grpo else 0,
        "reward_first": statistics.mean(reward[:q]) if reward else None,
        "reward_last": statistics.mean(reward[-q:]) if reward else None,
    }


def sampled_correctness(a: argparse.Namespace, adapter: Path, k: int) -> float:
    """asrl's evaluator on the whole test split with ``eval.temperature`` set: ``k`` sampled
    completions per question at the GRPO phase's temperature and top-p, from a fixed seed
    (the start and every final adapter meet the same random stream). What GRPO's reward
    optimizes, where the run's own test eval decodes greedily."""
    from dataclasses import replace

    from asrl.config import load_config
    from asrl.data.live import LiveDataset
    from asrl.data.sources import open_source
    from asrl.model.adapter import load_adapter, resolve_adapter
    from asrl.model.loading import load_policy
    from asrl.rewards.builtin import RewardSet
    from asrl.train.evaluation import evaluate

    cfg = load_config(a.config, [f"data.path={a.data}", *COMMON, *a.set])
    fmt = cfg.format.spec()
    policy = load_policy(cfg.model, seed=0)
    load_adapter(policy, resolve_adapter(str(adapter)))
    data = LiveDataset([open_source(a.data, cfg.data, fmt)], cfg.data.split)
    data.refresh()
    test = data.splits["test"]
    sampling = dict(temperature=cfg.grpo.temperature, top_p=cfg.grpo.top_p)
    eval_cfg = replace(cfg.eval, max_examples=len(test), samples_per_example=k, **sampling)
    rewards = RewardSet.from_config(cfg.reward, fmt)
    m, _ = evaluate(
        policy, test, fmt, rewards, eval_cfg, cfg.data.max_length, cfg.data.system_prompt
    )
    return m["eval/correctness"]


def score_sampled(a: argparse.Namespace, work: Path, runs: list[str]) -> None:
    """Adds ``sampled`` (see sampled_correctness) to each finished run's sampled.json."""
    for name in runs:
        out = work / name
        path = out / "sampled.json"
        if not (out / "summary.json").is_file() or path.is_file():
            continue
        ckpts = sorted((out / "checkpoints").glob("epoch-*"))
        adapter = ckpts[-1] if ckpts else Path(a.start)  # start-eval keeps no checkpoint
        t0 = time.perf_counter()
        value = sampled_correctness(a, adapter, a.sampled)
        path.write_text(json.dumps({"sampled": value, "k": a.sampled, "adapter": str(adapter)}))
        print(f"{name}: sampled correctness {100 * value:.1f}% "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)  # fmt: skip


def welch(a: list[float], b: list[float] | float) -> float | None:
    """Welch's p of a against b (a sample, or one number: then a one-sample t-test)."""
    from scipy.stats import ttest_1samp, ttest_ind

    if len(a) < 2:
        return None
    if isinstance(b, float):
        if statistics.pstdev(a) == 0:
            return None
        return float(ttest_1samp(a, b).pvalue)
    if len(b) < 2 or (statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0):
        return None
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.2g}"


def report(a: argparse.Namespace, work: Path) -> None:
    start = run_stats(work / "start-eval")
    print(f"\nmachine: {cpu_name()}; runs under {work}")
    if start is None:
        print("start-eval: not run")
        return
    print(f"start: test correctness {100 * start['test']:.1f}% (n={start['test_n']:.0f})"
          + ("" if start["sampled"] is None else
             f"; sampled {100 * start['sampled']:.1f}% ({a.sampled} per question)"))  # fmt: skip
    head = "| arm | seeds | rounds | GRPO s | tokens generated | zero-std groups |"
    print(head + " sampled correctness reward first/last quarter | test correctness | "
          "gain (pts) | p vs start | p vs first arm | sampled test correctness | p vs start |")  # fmt: skip
    print("|---" * 13 + "|")
    first: list[float] | None = None
    for arm in a.arms:
        runs = [run_stats(work / f"{arm}-s{s}") for s in range(a.first_seed + a.seeds)]
        runs = [r for r in runs if r is not None]
        if not runs:
            continue
        tests = [r["test"] for r in runs]
        first = tests if first is None else first

        def mean(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.mean(r[key] for r in runs)

        sd = statistics.stdev(tests) if len(tests) > 1 else 0.0
        print(
            f"| {arm} | {len(runs)} | {mean('rounds'):.1f} | {mean('grpo_s'):.0f} | "
            f"{mean('tokens'):.0f} | {mean('zero_std'):.2f} | "
            f"{mean('reward_first'):.3f} / {mean('reward_last'):.3f} | "
            f"{', '.join(f'{100 * t:.1f}' for t in tests)} -> {100 * statistics.mean(tests):.1f}"
            f" +- {100 * sd:.1f}% | {100 * (statistics.mean(tests) - start['test']):+.1f} | "
            f"{fmt_p(welch(tests, float(start['test'])))} | "
            f"{'-' if tests is first else fmt_p(welch(tests, first))} | {_sampled(runs, start)} |"
        )


def _sampled(runs: list[dict[str, Any]], start: dict[str, Any]) -> str:
    values = [r["sampled"] for r in runs if r["sampled"] is not None]
    if not values or start["sampled"] is None:
        return "- | -"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return (
        f"{', '.join(f'{100 * v:.1f}' for v in values)} -> {100 * statistics.mean(values):.1f}"
        f" +- {100 * sd:.1f}% | {fmt_p(welch(values, float(start['sampled'])))}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--start", help="an exported adapter (asrl export) or run directory")
    ap.add_argument("--data", help="the JSONL dataset the start was SFT'd on")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--arms", default="off,on", help=f"comma-separated, of {', '.join(ARMS)}")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budget", type=float, default=720.0, help="training seconds per run")
    ap.add_argument("--work", default="runs/grpo_signal")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run")
    ap.add_argument(
        "--sampled", type=int, default=4, help="sampled completions per test question (0: none)"
    )
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    a.arms = a.arms.split(",")
    unknown = [x for x in a.arms if x not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: {', '.join(unknown)} not one of {', '.join(ARMS)}")
    work = Path(a.work).resolve()
    if not a.report_only:
        # one precision for every run and every scoring (auto is a timing, made once here)
        if not any(x.startswith("model.autocast=") for x in a.set):
            from _common import resolve_precision

            precision = resolve_precision("auto")
            a.set.append(f"model.autocast={'bf16' if precision == 'bf16' else 'none'}")
        if not (a.start and a.data):
            raise SystemExit("--start and --data are needed to train (or --report-only)")
        a.start, a.data = str(Path(a.start).resolve()), str(Path(a.data).resolve())
        work.mkdir(parents=True, exist_ok=True)
        train(a, work / "start-eval", ["schedule.time_budget_s=0"])
        for seed in range(a.first_seed, a.first_seed + a.seeds):
            for arm in a.arms:
                sets = [*ARMS[arm], f"seed={seed}", f"schedule.time_budget_s={a.budget}"]
                train(a, work / f"{arm}-s{seed}", sets)
        if a.sampled:  # after every run: the scoring must not share the CPU with a budget
            names = [f"{arm}-s{s}" for s in range(a.first_seed + a.seeds) for arm in a.arms]
            score_sampled(a, work, ["start-eval", *names])
    report(a, work)


if __name__ == "__main__":
    main()
