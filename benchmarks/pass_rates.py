"""Where GRPO can act: per-question pass rates of one or more adapters, sampled, on a split.

    PYTHONPATH=. .venv/bin/python benchmarks/pass_rates.py --data DATA.jsonl \
        --adapter start=DIR [--adapter grpo=DIR ...] [--split test] [--k 8] [--set KEY=VALUE]

GRPO learns only from groups whose rewards differ. A question the policy always or never
answers correctly gives a zero-variance group and no gradient, so the share of questions it
solves *sometimes* bounds what a GRPO phase can move. For each adapter this scores every
question of the split ``--k`` times at the GRPO phase's temperature and top-p (asrl's
evaluator with ``eval.temperature``, a fixed seed: every adapter meets the same random
stream) and prints, per pattern of the synthetic generator (read from the prompt) and in
all: the mean correctness, and the share of questions solved never / sometimes / always.
With several adapters it also prints, against the first, the paired per-question change of
pass rate (mean, and the Wilcoxon signed-rank p over the questions). ``--out FILE.json``
keeps every question's hits. See docs/grpo_learns.md.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PATTERNS = [  # (name, regex on the prompt text), first match wins
    ("direct", r"no thinking"),
    ("multi_step", r"^Compute "),
    ("arithmetic", r"^What is \d+ [-+×] \d+\?"),
    ("comparison", r"larger|smaller"),
    ("counting", r"How many times does the letter|are in this list"),
    ("unit_conversion", r"^How many \w+ is [\d.]+ \w+\?"),
]


def pattern(ex) -> str:
    """The generator pattern of a synthetic record, from its prompt (``type`` is coarser)."""
    if ex.type == "multi_turn":
        return "multi_turn"
    text = ex.prompt_text
    for name, rx in PATTERNS:
        if re.search(rx, text):
            return name
    return "word_problem" if ex.type == "complex" else ex.type


def score(a: argparse.Namespace, adapter: str) -> tuple[dict[str, list[float]], dict[str, str]]:
    """{question id: its k hits (1.0 exact, else 0.0)} for the adapter on the split, and
    {question id: its pattern}."""
    from _common import load_start

    from asrl.rewards.builtin import RewardSet
    from asrl.train.evaluation import evaluate

    cfg, fmt, policy, data = load_start(a.config, a.data, a.set, adapter)
    examples = data.splits[a.split][: a.max_questions or None]
    eval_cfg = replace(
        cfg.eval,
        max_examples=len(examples),
        samples_per_example=a.k,
        temperature=cfg.grpo.temperature if a.temperature is None else a.temperature,
        top_p=cfg.grpo.top_p,
    )
    rewards = RewardSet.from_config(cfg.reward, fmt)
    _, samples = evaluate(
        policy, examples, fmt, rewards, eval_cfg, cfg.data.max_length, cfg.data.system_prompt
    )
    hits: dict[str, list[float]] = {}
    for s in samples:
        hits.setdefault(s["id"], []).append(float(s["rewards"]["correctness"] == 1.0))
    return hits, {ex.id: pattern(ex) for ex in examples}


def zones(rates: list[float]) -> tuple[float, float, float]:
    """Shares of questions solved never, sometimes, always."""
    n = len(rates)
    never = sum(r == 0 for r in rates) / n
    always = sum(r == 1 for r in rates) / n
    return never, 1 - never - always, always


def table(name: str, hits: dict[str, list[float]], kinds: dict[str, str]) -> None:
    groups: dict[str, list[float]] = {}
    for qid, h in hits.items():
        groups.setdefault(kinds[qid], []).append(statistics.mean(h))
    print(f"\n{name}: | pattern | questions | correctness | never | sometimes | always |")
    print("|---|---|---|---|---|---|")
    everything = [r for rates in groups.values() for r in rates]
    for kind, rates in [*sorted(groups.items()), ("all", everything)]:
        never, some, always = zones(rates)
        print(
            f"| {kind} | {len(rates)} | {100 * statistics.mean(rates):.1f}% | "
            f"{100 * never:.0f}% | {100 * some:.0f}% | {100 * always:.0f}% |"
        )


def paired(first: dict[str, list[float]], other: dict[str, list[float]]) -> str:
    from scipy.stats import wilcoxon

    qs = sorted(first)
    d = [statistics.mean(other[q]) - statistics.mean(first[q]) for q in qs]
    if all(x == 0 for x in d):
        return "+0.0 pts (no question changed)"
    p = wilcoxon(d).pvalue
    up, down = sum(x > 0 for x in d), sum(x < 0 for x in d)
    return (
        f"{100 * statistics.mean(d):+.1f} pts, {up} questions up, {down} down, Wilcoxon p {p:.2g}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the JSONL dataset (its stable split is used)")
    ap.add_argument(
        "--adapter",
        action="append",
        required=True,
        help="NAME=DIR: an exported adapter, a run directory or a checkpoint ('base': none)",
    )
    ap.add_argument("--split", default="test", choices=["train", "val", "test"])
    ap.add_argument("--k", type=int, default=8, help="sampled completions per question")
    ap.add_argument("--temperature", type=float, help="default: the config's grpo.temperature")
    ap.add_argument("--max-questions", type=int, default=0, help="0: the whole split")
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for the config")
    ap.add_argument("--out", help="a JSON file for every question's hits")
    a = ap.parse_args()
    named = [x.split("=", 1) if "=" in x else [Path(x).name, x] for x in a.adapter]
    results, kinds = {}, {}
    for name, path in named:
        results[name], kinds = score(a, path)
        table(name, results[name], kinds)
    first = named[0][0]
    for name, _ in named[1:]:
        print(f"\n{name} against {first}, per question: {paired(results[first], results[name])}")
    if a.out:
        Path(a.out).write_text(json.dumps({"kinds": kinds, "hits": results}, indent=1))
    print(f"\n({a.split} split, k={a.k}; {' '.join(sys.argv[1:])})")


if __name__ == "__main__":
    main()
