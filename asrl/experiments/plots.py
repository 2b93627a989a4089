"""curves.png: format accuracy and correctness per epoch, one line per method, ± std band."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
