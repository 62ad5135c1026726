"""A serving bundle at any scale, tiled from a trained one, for the serving benchmarks (bench_scale --server).

Training at a million users and items takes hours here; the serving side only needs a bundle of the
right shape. This copies a trained serving folder and tiles it: user r is a copy of user r mod U0
(same attributes and training history, id ``<id>~<k>``), item j a copy of item j mod N0 with its
vector jittered (half of each dimension's spread: copies land near their source item, not on it:
exact twins that no index could tell apart). The user tower is the trained one, and known users'
vectors are computed and stored by export's own step (export/users.py), as in production; item
vectors are not the item tower's output for the copies (the server never re-checks that), and
upserts still go through the towers. The approximate index is built and recall-gated by export's
own code, and the manifest is rewritten with every hash.

    python benchmarks/scale_bundle.py --src artifacts/seed/serving --out /tmp/b1m --users 1000000 \
        --items 1000000 [--model two_tower] [--index auto]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from towerserve.export.index import DEFAULT_MIN_RECALL, export_index  # noqa: E402
from towerserve.export.users import export_user_vectors  # noqa: E402
from towerserve.server.core.features import FieldSpec, feature_matrix, load_tables, save_tables  # noqa: E402
from towerserve.server.core.manifest import SERVED_SPLIT, ModelSplit, ServingManifest, file_entries  # noqa: E402
from towerserve.server.core.splits import RecordedSplit, load_recorded_split, save_recorded_split  # noqa: E402

JITTER = 0.5


def _tile_csv(src: Path, dst: Path, n: int, id_column: str) -> np.ndarray:
    """Writes ``n`` rows tiled from ``src``; returns each new row's source row."""
    with open(src, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    n0 = len(rows)
    source = np.arange(n) % n0
    with open(dst, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in range(n):
            row = dict(rows[r % n0])
            if r >= n0:
                row[id_column] = f"{row[id_column]}~{r // n0}"
            w.writerow(row)
    return source


def tiled_vectors(v: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` item vectors: row j is row j mod len(v), jittered by JITTER of each dimension's spread."""
    noise = rng.standard_normal((n, v.shape[1])).astype(np.float32)
    return (v[np.arange(n) % len(v)] + JITTER * v.std(axis=0) * noise).astype(np.float32)


def user_queries(serving: Path, split: dict, tables, n: int = 1000) -> np.ndarray:
    """The first ``n`` known users' vectors from the trained user tower (features-only towers)."""
    import onnxruntime as ort

    specs = [FieldSpec.from_json(d) for d in split["features"]["user"]]
    with open(serving / "catalog" / "users.csv", newline="", encoding="utf-8") as fh:
        rows = [r for _, r in zip(range(n), csv.DictReader(fh))]
    raw = {sp.name: np.array([float(r[sp.name]) for r in rows]) for sp in specs if sp.kind == "minmax"}
    sess = ort.InferenceSession(
        str(serving / split["user_tower"]["file"]), providers=["CPUExecutionProvider"]
    )
    feats = feature_matrix(specs, tables, raw, np.arange(len(rows)))
    return sess.run([split["user_tower"]["output"]], {split["user_tower"]["input"]: feats})[0]


def _tile_split(s: RecordedSplit, u_src: np.ndarray, n_items: int, n_users0: int) -> RecordedSplit:
    from towerserve.server.core.csr import CSR

    def tile(c: CSR) -> CSR:
        lengths = np.diff(c.indptr)[u_src]
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(c.indptr.dtype)
        starts = c.indptr[u_src]
        idx = np.concatenate([c.indices[a : a + n] for a, n in zip(starts, lengths)]) if len(u_src) else []
        return CSR(indptr, np.asarray(idx, dtype=c.indices.dtype), n_items)

    copies = len(u_src) // n_users0
    nb_u = np.concatenate([s.notebook_users + k * n_users0 for k in range(copies)])
    nb_i = np.tile(s.notebook_items, copies)
    return RecordedSplit(s.name, tile(s.train), tile(s.test), nb_u, nb_i, s.cold_users, s.cold_items)


def scale(src: Path, out: Path, users: int, items: int, model: str, index: str, min_recall: float) -> dict:
    t0 = time.perf_counter()
    manifest = json.loads((src / "manifest.json").read_text())
    n_users0 = manifest["catalog"]["users"]
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.npy", "*.faiss", "catalog", "splits"))
    (out / "catalog").mkdir()
    (out / "splits").mkdir()
    u_src = _tile_csv(src / "catalog" / "users.csv", out / "catalog" / "users.csv", users, "user_id")
    i_src = _tile_csv(src / "catalog" / "items.csv", out / "catalog" / "items.csv", items, "item_id")
    tables = {  # user fields index users, item fields items (the sizes tell them apart)
        name: dataclasses.replace(t, index=t.index[u_src] if len(t.index) == n_users0 else t.index[i_src])
        for name, t in load_tables(src / "catalog" / "embeddings.npz").items()
    }
    save_tables(out / "catalog" / "embeddings.npz", tables)
    for rel in manifest["splits"].values():
        split = load_recorded_split(src / rel["file"])
        save_recorded_split(out / rel["file"], _tile_split(split, u_src, items, n_users0))
    rng = np.random.default_rng(0)
    kept = {k: v for k, v in manifest["models"].items() if k == model}
    age = _column(out / "catalog" / "users.csv", "age")
    for entry in kept.values():
        for split, s in entry["splits"].items():
            tiled = tiled_vectors(np.load(src / s["item_vectors_file"]), items, rng)
            np.save(out / s["item_vectors_file"], tiled)
            s.pop("index", None)
            if split == SERVED_SPLIT:
                s["index"] = _index(out, s, tables, tiled, index, min_recall)
            # Known users' vectors as export stores them (the server maps them at start).
            s.pop("user_vectors", None)
            train = load_recorded_split(out / manifest["splits"][split]["file"]).train
            stored = export_user_vectors(
                out,
                Path(s["item_vectors_file"]).parent,
                ModelSplit.from_json(s),
                split,
                tables,
                {"age": age},
                users,
                train,
            )
            s["user_vectors"] = stored.to_json()
    manifest["models"] = kept
    manifest["default_model"] = model
    manifest["catalog"].update(users=users, items=items)
    for name in list(manifest.get("files", {})):
        if not (out / name).is_file():
            del manifest["files"][name]
    for kind_dir in (out / "models").iterdir():
        if kind_dir.name not in kept:
            shutil.rmtree(kind_dir)
    manifest["files"] = {k: v.to_json() for k, v in file_entries(out).items()}
    ServingManifest.from_json(manifest)  # the server's own typed check, before anything is written
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return {
        "seconds": time.perf_counter() - t0,
        "index": manifest["models"][model]["splits"][SERVED_SPLIT]["index"],
    }


def _column(path: Path, name: str) -> np.ndarray:
    with open(path, newline="", encoding="utf-8") as fh:
        return np.array([float(r[name]) for r in csv.DictReader(fh)])


def _index(out: Path, s: dict, tables, vectors: np.ndarray, kind: str, min_recall: float) -> dict:
    """Export's index step, queried with 1,000 known users' vectors from the trained user tower."""
    queries = user_queries(out, s, tables)
    return export_index(
        out, Path(s["item_vectors_file"]).parent, kind, vectors, queries, min_recall
    ).to_json()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--src", type=Path, required=True, help="a trained serving folder (e.g. artifacts/seed/serving)"
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--users", type=int, required=True)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--model", default="two_tower")
    ap.add_argument("--index", default="auto", choices=("auto", "exact", "hnsw", "ivf"))
    ap.add_argument("--min-recall", type=float, default=DEFAULT_MIN_RECALL)
    args = ap.parse_args()
    r = scale(args.src, args.out, args.users, args.items, args.model, args.index, args.min_recall)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
