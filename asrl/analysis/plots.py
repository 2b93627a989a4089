"""``asrl plot RUNDIR [-o FILE.png]``: one run's learning curves from its metrics.jsonl.

Panels: held-out format accuracy, correctness, validation loss and reward (one point per
evaluation), SFT loss, GRPO loss and GRPO reward (one point per phase), train-set size per
epoch. The x axis counts epochs of training done: the evaluations inside epoch ``e`` are
spread over ``(e - 1, e]`` in the order they ran, so with ASRL the post-SFT evaluation sits
at ``e - 0.5`` and the post-GRPO one at ``e``; the initial evaluation is at 0. The marker
says which phase an evaluation followed. A metric the run did not log gets "no data".
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from asrl.errors import PlotError
from asrl.tracking.jsonl import read_jsonl

MARKERS = {"init": "s", "sft": "o", "grpo": "^"}
OTHER_MARKER = "D"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a line that does not parse (one being written) is skipped."""
    path = Path(path)
    if not path.is_file():
        raise PlotError(f"{path} not found")
    return [rec for rec in read_jsonl(path) if isinstance(rec.get("epoch"), int) and "phase" in rec]


def _positions(records: list[dict[str, Any]]) -> list[float]:
    """x for each record: the k records of epoch e sit at e - 1 + i/k, i = 1..k (epoch 0: 0)."""
    per_epoch: dict[int, int] = defaultdict(int)
    for r in records:
        per_epoch[r["epoch"]] += 1
    seen: dict[int, int] = defaultdict(int)
    xs = []
    for r in records:
        e = r["epoch"]
        seen[e] += 1
        xs.append(0.0 if e == 0 else e - 1 + seen[e] / per_epoch[e])
    return xs


def _points(records: list[dict[str, Any]], key: str) -> list[tuple[float, float, str]]:
    """(x, value, label) for the records that logged ``key`` with a number."""
    out = []
    for x, r in zip(_positions(records), records):
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((x, float(v), str(r.get("eval/after", r["phase"]))))
    return out


def _no_data(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _line_panel(
    ax: Any,
    title: str,
    series: list[tuple[str, list[tuple[float, float, str]]]],
    ylim: tuple[float, float] | None = None,
) -> None:
    series = [(name, pts) for name, pts in series if pts]
    if not series:
        _no_data(ax, title)
        return
    for name, pts in series:
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        (line,) = ax.plot(xs, ys, "-", alpha=0.6, label=name if len(series) > 1 else None)
        # one marker per phase the point followed (init / sft / grpo / ...)
        by_label: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for x, y, label in pts:
            by_label[label].append((x, y))
        for label, xy in by_label.items():
            ax.plot(
                [p[0] for p in xy],
                [p[1] for p in xy],
                MARKERS.get(label, OTHER_MARKER),
                color=line.get_color(),
                markersize=5,
            )
    ax.set_title(title)
    ax.set_xlabel("epoch")
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)


def _epoch_ticks(ax: Any, max_epoch: int) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlim(-0.5, max(max_epoch, 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _title(run_dir: Path) -> str:
    title = run_dir.resolve().name
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
        method = (cfg.get("schedule") or {}).get("method")
        model = (cfg.get("model") or {}).get("name")
        title += f" — {method or '?'} on {model or '?'}, seed {cfg.get('seed', '?')}"
    except (OSError, ValueError, AttributeError):
        pass
    return title


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render RUNDIR/metrics.jsonl's curves to ``out`` (default RUNDIR/curves.png)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PlotError(f"run directory not found: {run_dir}")
    records = read_metrics(run_dir / "metrics.jsonl")
    out = Path(out) if out is not None else run_dir / "curves.png"

    evals = [r for r in records if r["phase"] == "eval"]
    by_phase = {p: [r for r in records if r["phase"] == p] for p in ("sft", "grpo", "data")}
    # phases other than eval/data/test (e.g. chord's blended phase) also log train losses
    train = [r for r in records if r["phase"] not in ("eval", "data", "test")]
    max_epoch = max((r["epoch"] for r in records), default=0)

    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5), constrained_layout=True)
    a = axes.ravel()
    _line_panel(
        a[0],
        "held-out format accuracy",
        [("", _points(evals, "eval/format_accuracy"))],
        (-0.05, 1.05),
    )
    _line_panel(
        a[1], "held-out correctness", [("", _points(evals, "eval/correctness"))], (-0.05, 1.05)
    )
    _line_panel(a[2], "validation loss", [("", _points(evals, "eval/val_loss"))])
    _line_panel(a[3], "held-out reward mean", [("", _points(evals, "eval/reward_mean"))])
    _line_panel(a[4], "SFT loss (train)", [("", _points(train, "train/sft_loss"))])
    _line_panel(a[5], "GRPO loss (train)", [("", _points(train, "train/grpo_loss"))])
    _line_panel(
        a[6], "GRPO reward mean (train)", [("", _points(by_phase["grpo"], "train/reward_mean"))]
    )

    sizes: dict[int, float] = {}
    for r in by_phase["data"]:
        v = r.get("data/train_size")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            sizes[r["epoch"]] = float(v)  # the last look of the epoch wins
    if sizes:
        ax = a[7]
        ax.bar(list(sizes), list(sizes.values()), color="tab:gray", alpha=0.7, width=0.6)
        ax.set_title("train-set size (start of epoch)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3, axis="y")
    else:
        _no_data(a[7], "train-set size (start of epoch)")

    for ax in a:
        if ax.has_data():
            _epoch_ticks(ax, max_epoch)
    used = sorted({r.get("eval/after", "?") for r in evals} | {r["phase"] for r in train})
    handles = [
        Line2D([], [], marker=MARKERS.get(k, OTHER_MARKER), linestyle="", color="black", label=k)
        for k in used
        if k != "?"
    ]
    fig.suptitle(_title(run_dir), fontsize=12)
    if handles:
        fig.legend(
            handles=handles,
            title="after / phase",
            loc="outside right center",
            fontsize=8,
            title_fontsize=8,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _plot(args: argparse.Namespace) -> int:
    try:
        out = plot_run(args.run_dir, args.output)
    except PlotError as e:
        print(f"asrl plot: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="learning curves of one run (metrics.jsonl) as a PNG",
        description="Render RUNDIR/metrics.jsonl's learning curves to one PNG.",
    )
    p.add_argument("run_dir", metavar="RUNDIR", help="a training output directory")
    p.add_argument("-o", "--output", metavar="FILE.png", help="default: RUNDIR/curves.png")
    p.set_defaults(func=_plot)


# `asrl compare`'s curves.png: format accuracy and correctness per epoch, one line per
# method, with a +- std band.
def plot_curves(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    panels = (("format_accuracy", "held-out format accuracy"), ("correctness", "correctness"))
    for ax, (key, title) in zip(axes, panels):
        for method, res in results.items():
            pts = [p for p in res["per_epoch"][key] if p["n"] > 0]
            if not pts:
                continue
            x = np.array([p["epoch"] for p in pts])
            m = np.array([p["mean"] for p in pts])
            s = np.array([p["std"] for p in pts])
            (line,) = ax.plot(x, m, marker="o", label=method)
            ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)
