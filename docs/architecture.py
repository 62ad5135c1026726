"""Draws docs/architecture.svg and docs/architecture.png: the clients, the server's subpackages and the
offline pipeline that feeds them (the README's picture).

    python docs/architecture.py [--out docs/architecture]

The picture is data, as deploy/diagram.py's is: each box and arrow below is one line, so a change to
the architecture is a change here, and the committed images are regenerated from it
(tests/test_docs.py checks that the committed SVG is this script's output).
"""

from __future__ import annotations

import argparse
from pathlib import Path

# (key, x, y, width, height, label, colour): the canvas is 16 x 10 units.
BOXES = [
    (
        "core",
        4.0,
        8.35,
        11.7,
        0.75,
        "server/core: numpy-only records, features, ranking metrics, manifest, wire (imported by every package)",
        "#f1f3f4",
    ),
    ("clients", 0.3, 6.2, 2.8, 1.7, "clients/\nclient library · CLI\nload test", "#e8f0fe"),
    ("api", 4.0, 6.2, 3.3, 1.7, "server/api\nservicer · interceptors\nholder (reload, journal)", "#e6f4ea"),
    ("engine", 8.1, 6.2, 3.3, 1.7, "server/engine\nengine · inputs · towers\nONNX Runtime", "#e6f4ea"),
    (
        "catalog",
        12.2,
        6.2,
        3.5,
        1.7,
        "server/catalog\nsnapshot · FAISS index\ncandidate lists · journal store",
        "#e6f4ea",
    ),
    (
        "journal",
        12.2,
        3.9,
        3.5,
        1.3,
        "catalogue journal\nSQLite (--state-dir) or\nPostgreSQL (--catalog-url)",
        "#fce8e6",
    ),
    ("batch", 4.0, 3.9, 3.3, 1.3, "server/batch\nRay Data jobs\n(embed, recommend)", "#e0f7fa"),
    ("data", 0.3, 3.9, 3.0, 1.3, "data (CSV)\ngenerate · import movielens", "#fef7e0"),
    ("trainer", 0.3, 0.8, 3.0, 1.6, "trainer/\nKeras towers\ntext embeddings", "#f3e8fd"),
    ("artifacts", 4.0, 0.8, 3.3, 1.6, "artifacts\nmodels, metrics, report", "#f1f3f4"),
    ("export", 8.1, 0.8, 3.3, 1.6, "export/\nONNX + item index\nparity and recall gates", "#f3e8fd"),
    ("bundle", 12.2, 0.8, 3.5, 1.6, "serving bundle\nA/serving + manifest.json", "#f3e8fd"),
]
# (from, to, label, style): "-" call path, "--" data path.
ARROWS = [
    ("clients", "api", "gRPC", "-"),
    ("api", "engine", "", "-"),
    ("engine", "catalog", "", "-"),
    ("catalog", "journal", "write before OK", "-"),
    ("batch", "engine", "", "-"),
    ("data", "trainer", "", "--"),
    ("trainer", "artifacts", "write", "--"),
    ("artifacts", "export", "", "--"),
    ("export", "bundle", "write", "--"),
    ("bundle", "engine", "load / Reload", "--"),
    ("bundle", "batch", "", "--"),
]


def _anchor(box, toward):
    """The point on ``box``'s edge facing the centre of ``toward``."""
    _, x, y, w, h, *_ = box
    _, tx, ty, tw, th, *_ = toward
    cx, cy, ox, oy = x + w / 2, y + h / 2, tx + tw / 2, ty + th / 2
    dx, dy = ox - cx, oy - cy
    scale = min(w / 2 / abs(dx) if dx else float("inf"), h / 2 / abs(dy) if dy else float("inf"))
    return cx + dx * scale, cy + dy * scale


def draw(out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt.rcParams["svg.fonttype"] = "none"  # text stays text: searchable, small, diffable
    plt.rcParams["svg.hashsalt"] = "towerserve"  # stable ids: a regenerated SVG diffs only where it changed
    fig, ax = plt.subplots(figsize=(16, 10), dpi=100)
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 10)
    ax.axis("off")
    by_key = {b[0]: b for b in BOXES}
    for _key, x, y, w, h, label, colour in BOXES:
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="#5f6368", lw=1.2))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=11)
    for src, dst, label, style in ARROWS:
        a, b = _anchor(by_key[src], by_key[dst]), _anchor(by_key[dst], by_key[src])
        ax.add_patch(
            FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=16, lw=1.4, ls=style, color="#3c4043")
        )
        if label:
            ax.text(
                (a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.15, label, ha="center", fontsize=9, color="#1a73e8"
            )
    ax.text(8, 9.65, "towerserve: architecture", ha="center", fontsize=15, weight="bold")
    ax.text(0.3, 8.55, "online: serving", fontsize=10, color="#5f6368", weight="bold")
    ax.text(4.0, 2.75, "offline: data → model → bundle", fontsize=10, color="#5f6368", weight="bold")
    ax.text(0.3, 0.25, "solid: calls    dashed: files written and read", fontsize=9, color="#5f6368")
    written = []
    for suffix in (".svg", ".png"):
        path = out.with_suffix(suffix)
        fig.savefig(path, bbox_inches="tight", metadata={"Date": None} if suffix == ".svg" else None)
        written.append(path)
    plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "architecture")
    args = ap.parse_args(argv)
    for path in draw(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
