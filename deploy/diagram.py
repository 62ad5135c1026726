"""Draws deploy/scaling.svg and deploy/scaling.png: replicas, client-side balancing, the shared
catalogue journal and the batch path (docs/scaling.md).

    python deploy/diagram.py [--out deploy/scaling]

The picture is data: each box and arrow below is one line, so a change to the architecture is a
change here, and the committed images are regenerated from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# (key, x, y, width, height, label, colour): the canvas is 16 x 9 units.
BOXES = [
    (
        "clients",
        0.3,
        6.6,
        3.2,
        1.6,
        "backend services\nRecommenderClient\n`dns:///towerserve:50051`",
        "#e8f0fe",
    ),
    ("dns", 0.3, 3.9, 3.2, 1.4, "headless Service\n(DNS: every ready pod)", "#fef7e0"),
    ("r1", 5.0, 6.9, 3.4, 1.3, "replica 1\nmodel + catalogue in memory", "#e6f4ea"),
    ("r2", 5.0, 5.1, 3.4, 1.3, "replica 2\nmodel + catalogue in memory", "#e6f4ea"),
    ("r3", 5.0, 3.3, 3.4, 1.3, "replica N (HPA: CPU)\nmodel + catalogue in memory", "#e6f4ea"),
    ("pg", 10.2, 6.7, 3.3, 1.7, "PostgreSQL\ncatalogue journal\n(upserts, deletes)", "#fce8e6"),
    ("bundle", 10.2, 3.3, 3.3, 1.3, "serving bundle\n(read-only volume)", "#f3e8fd"),
    (
        "ray",
        5.0,
        0.6,
        3.4,
        1.6,
        "Ray Data batch jobs\nbatch embed / recommend\n(actor pool, ONNX)",
        "#e0f7fa",
    ),
    ("kv", 10.2, 0.8, 3.3, 1.3, "recs.parquet / vectors.parquet\n→ key-value store", "#f1f3f4"),
]
# (from, to, label, style): "-" call path, "--" data path.
ARROWS = [
    ("clients", "dns", "resolve", "--"),
    ("clients", "r1", "round_robin\n(retry UNAVAILABLE)", "-"),
    ("clients", "r2", "", "-"),
    ("clients", "r3", "", "-"),
    ("r1", "pg", "write before OK", "-"),
    ("pg", "r2", "follow (poll 0.25 s)", "--"),
    ("pg", "r3", "", "--"),
    ("bundle", "r3", "load / Reload", "--"),
    ("bundle", "ray", "", "--"),
    ("ray", "kv", "write", "-"),
]


def _anchor(box, toward):
    """The point on ``box``'s edge facing the centre of ``toward``."""
    _, x, y, w, h, *_ = box
    _, tx, ty, tw, th, *_ = toward
    cx, cy, ox, oy = x + w / 2, y + h / 2, tx + tw / 2, ty + th / 2
    dx, dy = ox - cx, oy - cy
    scale = min(w / 2 / abs(dx) if dx else float("inf"), h / 2 / abs(dy) if dy else float("inf"))
    return cx + dx * scale, cy + dy * scale


def render(out: Path, boxes, arrows, height: float, title: tuple[float, str], notes) -> list[Path]:
    """Draws ``boxes`` and ``arrows`` (the tables above) on a 16 x ``height`` canvas with ``title`` ((y, text))
    on top and ``notes`` ((x, y, text, fontsize), grey) and writes ``out``.svg and ``out``.png. The one
    renderer of the project's box-and-arrow pictures (docs/architecture.py uses it too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, small, diffable
    plt.rcParams["svg.hashsalt"] = "towerserve"  # stable ids: a regenerated SVG diffs only where it changed
    fig, ax = plt.subplots(figsize=(16, height), dpi=100)
    ax.set_xlim(0, 16)
    ax.set_ylim(0, height)
    ax.axis("off")
    by_key = {b[0]: b for b in boxes}
    for _key, x, y, w, h, label, colour in boxes:
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#5f6368", lw=1.2))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=11)
    for src, dst, label, style in arrows:
        a, b = _anchor(by_key[src], by_key[dst]), _anchor(by_key[dst], by_key[src])
        ax.add_patch(
            FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=16, lw=1.4, ls=style, color="#3c4043")
        )
        if label:
            ax.text(
                (a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.15, label, ha="center", fontsize=9, color="#1a73e8"
            )
    ax.text(8, title[0], title[1], ha="center", fontsize=15, weight="bold")
    for x, y, text, size, *bold in notes:
        ax.text(x, y, text, fontsize=size, color="#5f6368", **({"weight": "bold"} if bold else {}))
    written = []
    for suffix in (".svg", ".png"):
        path = out.with_suffix(suffix)
        fig.savefig(path, bbox_inches="tight", metadata={"Date": None} if suffix == ".svg" else None)
        written.append(path)
    plt.close(fig)
    return written


NOTES = [(0.3, 2.6, "serving path: one user-tower pass + a dot product\nper request, inside one replica", 9)]


def draw(out: Path) -> list[Path]:
    return render(out, BOXES, ARROWS, 9, (8.75, "towerserve: scaling out"), NOTES)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "scaling")
    args = ap.parse_args(argv)
    for path in draw(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
