"""The training report: a Markdown summary with metric tables and PNG plots against the baselines."""

from __future__ import annotations

from pathlib import Path

from towerserve.server.core.tables import SUMMARY_METRICS, metrics_table

from .evalsample import NEW_ITEMS_KEY
from .plots import metric_bars, training_curves

REPORT_METRICS = SUMMARY_METRICS + ("notebook_score",)
BASELINES = ("random", "mostpop", "itemknn", "ease", "oracle")


def ratios(metrics: dict, model: str, key: str = "ndcg@10") -> dict[str, float | None]:
    """The model's ``key`` as a multiple of each baseline's (None where a baseline is missing)."""
    value = metrics[model][key]
    return {b: (value / metrics[b][key] if metrics.get(b) and metrics[b][key] else None) for b in BASELINES}


def hybrid_section(metrics: dict) -> list[str]:
    """The hybrid's recipe search as a table: one row per candidate (loss, temperature, ...), its
    validation NDCG@10 (what chose), epochs, seconds, and its test NDCG@10 (reported, never used)."""
    rec = (metrics.get("holdout", {}).get("hybrid") or {}).get("recipe")
    if not rec or not rec.get("candidates"):
        return []
    chosen = rec["chosen"]
    keys = ("loss", "negatives", "temperature", "learning_rate", "id_dropout", "dim", "pooling")
    rows = []
    for c in rec["candidates"]:
        mark = "**chosen**" if all(c.get(k) == chosen.get(k) for k in chosen if k != "epochs") else ""
        rows.append(
            [c.get(k) for k in keys]
            + [c["val_ndcg@10"], c.get("test_ndcg@10"), c["epochs"], c["seconds"], mark]
        )
    from towerserve.server.core.tables import format_table

    headers = [*keys, "val ndcg@10", "test ndcg@10", "epochs", "seconds", ""]
    share = rec.get("validation_share", 0.1)
    return [
        "## hybrid: loss and recipe comparison (holdout split)",
        "",
        f"Each candidate trained on {100 * (1 - share):.0f} % of every user's training positives and was judged on "
        f"the other {100 * share:.0f} % (validation NDCG@10, which chose); the chosen one was refitted on "
        "all of them. Test NDCG@10 of each candidate's validation-split model is shown for comparison only.",
        "",
        "```",
        format_table(headers, rows),
        "```",
        "",
    ]


def segment_section(metrics: dict, models) -> list[str]:
    """Each segment's NDCG@10 against MostPopular: known users (the holdout split), unseen users (the
    cold split) and new items (the cold split's held-out items, ranked among themselves)."""
    segments = (("known users", "holdout", "ndcg@10"), ("unseen users", "cold", "ndcg@10"))
    segments += (("new items", "cold", NEW_ITEMS_KEY),)
    rows = []
    for name, split, key in segments:
        table = metrics.get(split) or {}
        floor = (table.get("mostpop") or {}).get(key)
        if floor is None:
            continue
        for model in models:
            value = (table.get(model) or {}).get(key)
            if value is not None:
                rows.append([name, model, value, floor, value / floor if floor else None])
    if not rows:
        return []
    from towerserve.server.core.tables import format_table

    return [
        "## Segments against MostPopular",
        "",
        "NDCG@10 per segment; new items are ranked among the new items only (MostPopular has no count "
        "for them: its figure is a tie-broken order, the floor).",
        "",
        "```",
        format_table(["segment", "model", "ndcg@10", "mostpop", "× mostpop"], rows),
        "```",
        "",
    ]


def sample_lines(rows: dict, evaluation: dict | None) -> list[str]:
    """Says on how many users the table was judged and NDCG@10's 95 % interval per row (when sampled)."""
    if not evaluation or evaluation.get("sample") is None:
        return []
    ci = [
        f"{name} [{r['ndcg@10_ci95_low']:.4f}, {r['ndcg@10_ci95_high']:.4f}]"
        for name, r in rows.items()
        if r and "ndcg@10_ci95_low" in r
    ]
    return [
        f"Judged on a fixed sample of {evaluation['sample']} users (seed {evaluation['seed']}), the same for "
        "every row; NDCG@10 95 % intervals (normal approximation over users): " + "; ".join(ci) + ".",
        "",
    ]


def _runtime(encoder: dict) -> str:
    """What embedded the training texts: torch, or an exported ONNX variant (`train --text-encoder`)."""
    if encoder.get("runtime") == "onnxruntime":
        return f"embedded with the ONNX {encoder['variant']} graph"
    return "embedded with torch"


def write_report(root: Path, manifest: dict, metrics: dict, histories: dict) -> Path:
    """Writes report/report.md, report/training_curves.png and report/metrics_<split>.png."""
    out = root / "report"
    out.mkdir(exist_ok=True)
    training_curves(histories, out / "training_curves.png")
    lines = [
        "# towerserve training report",
        "",
        f"Data: `{manifest['data']['root']}` — {manifest['data']['users']} users × {manifest['data']['items']} items, "
        f"{manifest['data']['positives']} positives ({100 * manifest['data']['density']:.2f} %).",
        f"Encoder: `{manifest['encoder'].get('name', manifest['encoder']['model'])}` ({manifest['encoder']['dim']} dims, "
        f"{manifest['encoder']['pooling']} pooling, {_runtime(manifest['encoder'])}). "
        f"Recipe: `{manifest['recipe']['preset']}`. "
        f"Default (served) model: **{manifest['default_model']}** (best holdout NDCG@10).",
        "",
    ]
    for split, table in metrics.items():
        order = [m for m in manifest["models"]] + [b for b in BASELINES]
        rows = {k: table.get(k) for k in order if k in table}
        metric_bars(
            rows,
            ["ndcg@10", "recall@10", "hitrate@10", "mrr"],
            out / f"metrics_{split}.png",
            title=f"{split} split: models against baselines",
        )
        lines += [f"## {split} split", "", "```", metrics_table(rows, REPORT_METRICS), "```", ""]
        lines += sample_lines(rows, manifest.get("evaluation", {}).get(split))
        for model in manifest["models"]:
            r = ratios(table, model)
            parts = [f"{r[b]:.2f}× {b}" for b in BASELINES if r[b] is not None]
            lines.append(f"- {model}: NDCG@10 = " + ", ".join(parts))
        lines += ["", f"![{split}](metrics_{split}.png)", ""]
    lines += segment_section(metrics, list(manifest["models"]))
    lines += hybrid_section(metrics)
    lines += ["## Training curves", "", "![curves](training_curves.png)", "", "## Timings (seconds)", ""]
    lines += [f"- {k}: {v:.1f}" for k, v in manifest["timings"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
