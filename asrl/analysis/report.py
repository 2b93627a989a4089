"""Aggregate compare runs: results.json, report.md, curves.png (mean ± std over seeds)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from asrl.tracking.jsonl import read_jsonl

FMT, COR, NEW = "eval/format_accuracy", "eval/correctness", "eval/correctness/new_pattern"
TEST_FMT, TEST_COR = "test/format_accuracy", "test/correctness"  # summary.json "test"
COMPUTE = ("tokens_trained", "tokens_generated", "seconds")


def per_epoch_last_eval(metrics_path: Path) -> dict[int, dict[str, Any]]:
    """epoch -> the last eval line of that epoch (epoch 0: the initial eval)."""
    out: dict[int, dict[str, Any]] = {}
    if not metrics_path.is_file():
        return out
    for rec in read_jsonl(metrics_path):  # a half-written last line is skipped
        if rec.get("phase") == "eval" and isinstance(rec.get("epoch"), int):
            out[rec["epoch"]] = rec
    return out


def _stats(values: list[float]) -> dict[str, float | int]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=0)), "n": len(vals)}


def welch_p(a: list[float], b: list[float]) -> float:
    """Welch's t-test p-value (two-sided); NaN with fewer than 2 values on either side."""
    a = [x for x in a if x is not None and not math.isnan(x)]
    b = [x for x in b if x is not None and not math.isnan(x)]
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    import warnings

    from scipy.stats import ttest_ind

    with warnings.catch_warnings():  # identical values: scipy warns, the p-value is NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(a, b, equal_var=False).pvalue)


def _first_epoch(curve: dict[int, dict[str, Any]], key: str, level: float, after: int) -> Any:
    return next(
        (e for e in sorted(curve) if e >= after and (curve[e].get(key) or 0) >= level), None
    )


def summarize_method(runs: list[dict], inject_at: int) -> dict[str, Any]:
    curves = [per_epoch_last_eval(Path(r["dir"]) / "metrics.jsonl") for r in runs]
    summaries = []
    for r in runs:
        p = Path(r["dir"]) / "summary.json"
        summaries.append(json.loads(p.read_text()) if p.is_file() else None)
    epochs = sorted({e for c in curves for e in c})
    per_epoch = {
        key.split("/")[-1]: [
            {"epoch": e, **_stats([c[e].get(key) for c in curves if e in c])} for e in epochs
        ]
        for key in (FMT, COR)
    }
    finals = [(s or {}).get("final") or {} for s in summaries]
    reach90 = [s.get("epochs_to_format_90") for s in summaries if s]
    reach90 = [x for x in reach90 if x is not None]
    res: dict[str, Any] = {
        "seeds": [r["seed"] for r in runs],
        "failed_seeds": [r["seed"] for r in runs if "failed" in r],
        "per_epoch": per_epoch,
        "epochs_to_format_90": {
            "mean": float(np.mean(reach90)) if reach90 else None,
            "reached": len(reach90),
            "of": len(runs),
        },
        "final": {k.split("/")[-1]: _stats([f.get(k) for f in finals]) for k in (FMT, COR)},
        "final_values": {k.split("/")[-1]: [f.get(k) for f in finals] for k in (FMT, COR)},
        "compute": {
            k: _stats([((s or {}).get("compute") or {}).get(k) for s in summaries]) for k in COMPUTE
        },
    }
    tests = [(s or {}).get("test") or {} for s in summaries]
    res["test"] = {
        "format_accuracy": _stats([t.get(TEST_FMT) for t in tests]),
        "correctness": _stats([t.get(TEST_COR) for t in tests]),
        "values": {k.split("/")[-1]: [t.get(k) for t in tests if t] for k in (TEST_FMT, TEST_COR)},
        "n_examples": [t.get("n") for t in tests if t],  # test examples per run
    }
    stops = [s.get("stopped") for s in summaries if s]
    res["stopped_by_time_budget"] = {"stopped": stops.count("time_budget"), "of": len(runs)}
    res["elapsed_s"] = _stats([(s or {}).get("elapsed_s") for s in summaries])
    if inject_at:
        hits = [_first_epoch(c, NEW, 0.8, inject_at) for c in curves]
        got = [h - inject_at for h in hits if h is not None]
        res["epochs_to_new_pattern_80"] = {
            "mean_epochs_after_injection": float(np.mean(got)) if got else None,
            "reached": len(got),
            "of": len(runs),
            "measured": any(NEW in rec for c in curves for rec in c.values()),
        }
    return res


def build_results(runs: list[dict], inject_at: int = 0) -> dict[str, Any]:
    methods: dict[str, list[dict]] = {}
    for r in runs:
        methods.setdefault(r["method"], []).append(r)
    out = {m: summarize_method(rs, inject_at) for m, rs in methods.items()}
    base = out.get("asrl")
    for m, res in out.items():
        res["p_vs_asrl"] = {
            key: (
                welch_p(res["final_values"][key], base["final_values"][key])
                if base is not None and m != "asrl"
                else float("nan")
            )
            for key in ("format_accuracy", "correctness")
        }
        res["test"]["p_vs_asrl"] = {
            key: (
                welch_p(res["test"]["values"][key], base["test"]["values"][key])
                if base is not None and m != "asrl"
                else float("nan")
            )
            for key in ("format_accuracy", "correctness")
        }
    return out


def _pm(s: dict[str, Any], pct: bool = True) -> str:
    if s["n"] == 0:
        return "–"
    k = 100 if pct else 1
    return f"{s['mean'] * k:.1f} ± {s['std'] * k:.1f}" if pct else f"{s['mean']:.3g}"


def _p(v: float) -> str:
    return "–" if v != v else f"{v:.3g}"


def render_report(
    results: dict[str, Any], command: str, overrides: list[str], args: argparse.Namespace
) -> str:
    lines = [
        "# asrl compare",
        "",
        f"Command: `{command}`",
        "",
        f"Config: `{args.config}`; seeds: {args.seeds}; overrides applied to every run: "
        + (", ".join(f"`{o}`" for o in overrides) or "none"),
    ]
    if args.preset:
        lines.append(f"Preset `{args.preset}` (shrinks data and epochs with the overrides above).")
    budget = getattr(args, "time_budget_s", None)
    if budget is not None:
        stopped = ", ".join(
            f"{m} {r['stopped_by_time_budget']['stopped']}/{r['stopped_by_time_budget']['of']}"
            for m, r in results.items()
        )
        lines += [
            "",
            f"Time budget: {budget:g} s of training per run (`schedule.time_budget_s`: the "
            "epoch loop, not the model load or the initial and test evals; each run stops at "
            f"the first phase boundary past it). Runs it stopped: {stopped}.",
        ]
    lines += [
        "",
        "Final = last held-out eval of each run; mean ± std over seeds (%). p = Welch's t-test "
        "vs asrl on the final values (– when fewer than 2 seeds on a side).",
        "",
        "| method | final format acc | final correctness | epochs to 90% format (reached) "
        "| p fmt vs asrl | p corr vs asrl | tokens trained | tokens generated | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in results.items():
        e90 = r["epochs_to_format_90"]
        e90s = f"{e90['mean']:.1f}" if e90["mean"] is not None else "–"
        c = r["compute"]
        lines.append(
            f"| {m} | {_pm(r['final']['format_accuracy'])} | {_pm(r['final']['correctness'])} "
            f"| {e90s} ({e90['reached']}/{e90['of']}) | {_p(r['p_vs_asrl']['format_accuracy'])} "
            f"| {_p(r['p_vs_asrl']['correctness'])} | {_pm(c['tokens_trained'], False)} "
            f"| {_pm(c['tokens_generated'], False)} | {_pm(c['seconds'], False)} |"
        )
    lines += _test_table(results)
    for key, title in (("format_accuracy", "Format accuracy"), ("correctness", "Correctness")):
        lines += _per_epoch_table(results, key, title)
    if args.inject_at:
        lines += [
            "",
            f"## New data: {args.inject_count} `{args.inject_mix}` records at epoch "
            f"{args.inject_at}",
            "",
            "| method | epochs after injection to 80% correctness on the new pattern (reached) |",
            "|---|---|",
        ]
        for m, r in results.items():
            x = r["epochs_to_new_pattern_80"]
            v = f"{x['mean_epochs_after_injection']:.1f}" if x["reached"] else "–"
            note = "" if x["measured"] else " (never evaluated: raise eval.max_examples)"
            lines.append(f"| {m} | {v} ({x['reached']}/{x['of']}){note} |")
    failed = {m: r["failed_seeds"] for m, r in results.items() if r["failed_seeds"]}
    if failed:
        lines += ["", f"Failed runs (seeds): {failed}"]
    lines += ["", "![curves](curves.png)", ""]
    return "\n".join(lines)


def _test_table(results: dict[str, Any]) -> list[str]:
    """The test split, evaluated once when each run ended (never used to stop or select)."""
    lines = [
        "",
        "## Test split (evaluated once, at the end of each run)",
        "",
        "Held out from everything else: no early stopping or choice of epoch looked at it. "
        "Mean ± std over seeds (%); p = Welch's t-test vs asrl on the per-seed test values.",
        "",
        "| method | test format acc | test correctness | p fmt vs asrl | p corr vs asrl "
        "| test examples per run |",
        "|---|---|---|---|---|---|",
    ]
    for m, r in results.items():
        t = r["test"]
        n = sorted({x for x in t["n_examples"] if x is not None})
        lines.append(
            f"| {m} | {_pm(t['format_accuracy'])} | {_pm(t['correctness'])} "
            f"| {_p(t['p_vs_asrl']['format_accuracy'])} | {_p(t['p_vs_asrl']['correctness'])} "
            f"| {', '.join(map(str, n)) or '–'} |"
        )
    return lines


def _per_epoch_table(results: dict[str, Any], key: str, title: str) -> list[str]:
    """Mean ± std over seeds (%) of the last held-out eval of each epoch, a row per method."""
    epochs = sorted({p["epoch"] for r in results.values() for p in r["per_epoch"][key]})
    lines = [
        "",
        f"## {title} per epoch (held-out, after the epoch's last phase; mean ± std %)",
        "",
        "| method | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
        "|---|" + "---|" * len(epochs),
    ]
    for m, r in results.items():
        by_epoch = {p["epoch"]: p for p in r["per_epoch"][key]}
        cells = [_pm(by_epoch[e]) if e in by_epoch else "–" for e in epochs]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def write_outputs(
    out: Path, runs: list[dict], args: argparse.Namespace, overrides: list[str], command: str
) -> dict[str, Any]:
    from asrl.analysis.plots import plot_curves

    results = build_results(runs, args.inject_at)
    doc = {
        "command": command,
        "overrides": overrides,
        "time_budget_s": getattr(args, "time_budget_s", None),
        "methods": results,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    (out / "report.md").write_text(render_report(results, command, overrides, args))
    plot_curves(results, out / "curves.png")
    return doc
