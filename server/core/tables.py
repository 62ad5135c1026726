"""Plain-text tables for the command line and the training report (pure python, importable everywhere)."""

# It lives in server/, the package every other one may import, because trainer/report.py and the
# client commands both print these tables and trainer/ must not import clients/.

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

# The metric columns the command line shows (training prints notebook_score too).
SUMMARY_METRICS = ("ndcg@10", "recall@10", "hitrate@10", "map@10", "mrr", "auc", "coverage@10")


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 4) -> str:
    """Left-aligns text and right-aligns numbers under a header and a rule."""
    cells = [[_cell(v, digits) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[c]) for r in cells]) for c, h in enumerate(headers)]
    numeric = [
        all(isinstance(row[c], (int, float)) or row[c] is None for row in rows) and rows
        for c in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if numeric[c] else v.ljust(w) for c, (v, w) in enumerate(zip(values, widths))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def metrics_table(results: dict[str, dict[str, float] | None], columns: Sequence[str]) -> str:
    """One row per model (``None`` rows print as skipped), one column per metric key."""
    rows = []
    for name, metrics in results.items():
        rows.append([name] + [None if metrics is None else metrics.get(c) for c in columns])
    return format_table(["model", *columns], rows)
