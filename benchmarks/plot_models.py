"""Models against the baselines across data sets, one table and one PNG: `.venv/bin/python
benchmarks/plot_models.py artifacts/latent artifacts/content` (any number of `towerserve train`
artifacts folders; each folder's name labels its column).

For every folder and split it prints holdout NDCG@10 of each model and baseline, and each trained
model as a multiple of EASE and of the Oracle, then writes benchmarks/figures/models_by_data.png
(grouped bars, one group per folder and split). Reads metrics.json only: no training, no test data
beyond what `towerserve train` already evaluated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, table, write_result  # noqa: E402

ORDER = ("random", "mostpop", "itemknn", "ease", "seed", "two_tower", "hybrid", "oracle")
NAMES = {
    "random": "Random",
    "mostpop": "MostPopular",
    "itemknn": "ItemKNN",
    "ease": "EASE",
    "seed": "seed",
    "two_tower": "two_tower",
    "hybrid": "hybrid",
    "oracle": "Oracle",
}
MODELS = ("seed", "two_tower", "hybrid")


def collect(folders: list[Path], metric: str) -> dict[str, dict[str, float]]:
    """{"<folder> <split>": {kind: value}} for every split each folder's metrics.json has."""
    out: dict[str, dict[str, float]] = {}
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        for split in ("holdout", "cold"):
            if split in metrics:
                row = metrics[split]
                out[f"{folder.name} {split}"] = {k: float(row[k][metric]) for k in ORDER if row.get(k)}
    return out


def plot(scores: dict[str, dict[str, float]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(scores)
    kinds = [k for k in ORDER if any(k in s for s in scores.values())]
    width = 0.8 / len(kinds)
    fig, ax = plt.subplots(figsize=(max(7.0, 2.2 * len(groups)), 4.2))
    for j, kind in enumerate(kinds):
        xs = [g + (j - (len(kinds) - 1) / 2) * width for g in range(len(groups))]
        ys = [scores[name].get(kind, 0.0) for name in groups]
        ax.bar(xs, ys, width, label=NAMES[kind], hatch="//" if kind == "oracle" else None)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: models and baselines (full ranking, training positives masked)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="`towerserve train` artifacts folders")
    parser.add_argument("--metric", default="ndcg@10")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "figures" / "models_by_data.png")
    args = parser.parse_args()
    scores = collect(args.folders, args.metric)
    kinds = [k for k in ORDER if any(k in s for s in scores.values())]
    print(table(["", *scores], [[NAMES[k], *(_f(s.get(k)) for s in scores.values())] for k in kinds]))
    rows = []
    for kind in MODELS:
        for base in ("ease", "oracle"):
            cells = [_ratio(s.get(kind), s.get(base)) for s in scores.values()]
            if any(c != "-" for c in cells):
                rows.append([f"{kind} / {NAMES[base]}", *cells])
    print(table(["ratio", *scores], rows))
    plot(scores, args.metric, args.out)
    print(f"wrote {args.out}")
    write_result("plot_models", {"metric": args.metric, "scores": scores})


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.3f}"


if __name__ == "__main__":
    main()
