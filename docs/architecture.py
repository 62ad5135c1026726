"""Draws docs/architecture.svg and docs/architecture.png: the clients, the server's subpackages and the
offline pipeline that feeds them (the README's picture).

    python docs/architecture.py [--out docs/architecture]

The picture is data, drawn by deploy/diagram.py's renderer: each box and arrow below is one line, so a change to
the architecture is a change here, and the committed images are regenerated from it
(tests/test_docs.py checks that the committed SVG is this script's output).
"""

from __future__ import annotations

import argparse
import importlib.util
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


NOTES = [
    (0.3, 8.55, "online: serving", 10, "bold"),
    (4.0, 2.75, "offline: data → model → bundle", 10, "bold"),
    (0.3, 0.25, "solid: calls    dashed: files written and read", 9),
]


def _renderer():
    """deploy/diagram.py's render: the project's one box-and-arrow renderer (both are scripts)."""
    spec = importlib.util.spec_from_file_location(
        "diagram", Path(__file__).resolve().parents[1] / "deploy" / "diagram.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.render


def draw(out: Path) -> list[Path]:
    return _renderer()(out, BOXES, ARROWS, 10, (9.65, "towerserve: architecture"), NOTES)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "architecture")
    args = ap.parse_args(argv)
    for path in draw(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
