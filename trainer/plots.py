"""PNG plots people compare: metric bars against baselines and training curves (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers or CI
import matplotlib.pyplot as plt  # noqa: E402


def metric_bars(
    results: dict[str, dict[str, float] | None], metrics: Sequence[str], path: Path | str, title: str = ""
) -> Path:
    """Grouped bars: one group per metric, one bar per model/baseline (skipped rows left out)."""
    names = [n for n, m in results.items() if m is not None]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(metrics), 4.2))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        values = [results[name].get(m, 0.0) for m in metrics]
        bars = ax.bar([i + j * width for i in range(len(metrics))], values, width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    ax.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(metrics))], metrics)
    ax.set_ylabel("value")
    ax.set_ylim(0, max([results[n].get(m, 0.0) for n in names for m in metrics] + [0.01]) * 1.25)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def training_curves(histories: dict[str, dict[str, list[float]]], path: Path | str) -> Path:
    """Loss (and validation loss) per epoch, one panel per model."""
    fig, axes = plt.subplots(
        1, max(1, len(histories)), figsize=(4.5 * max(1, len(histories)), 3.6), squeeze=False
    )
    for ax, (name, hist) in zip(axes[0], histories.items()):
        for key, values in hist.items():
            if "loss" in key:
                ax.plot(range(1, len(values) + 1), values, marker="o", label=key)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (cross-entropy)")
        ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path | str) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)  # figures are not garbage-collected while pyplot holds them
    return path
