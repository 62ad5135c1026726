"""The item index as the catalogue grows: the search layer, and a real server on a bundle of that size.

Part 1, the search layer (one thread, one process, side by side per size): exact scoring against
each index kind (IVF, HNSW) through server/engine/ranking.py, for the same users with 20 seen items each:
build time (export tunes the knob to the recall floor), index size, recall@10 of the served answer
vs the exact one, median/p99 ms per request, and a single-item upsert past the towers (columns
written, index add). Item vectors are the trained seed-scale two-tower's, tiled to size and
jittered (benchmarks/scale_bundle.py); queries are its known users' vectors.

Part 2 (--server): per size, a serving bundle tiled to that many items and users (scale_bundle.py,
index chosen by export's `auto`), a real `towerserve serve`, then: seconds to SERVING, server RSS,
and closed-loop Recommend (random known users, top 10) next to health Check at concurrency 32,
alternated; Recommend p50/p99 and QPS, health p99, and the QPS ratio; then single-item UpsertItems
over gRPC (texts the encoder has cached, and new texts). Each size is served once per
``--batch-sizes`` entry (default 1,32: dynamic batching off, then on at its default), one after the
other on the same bundle, so the rows compare batching side by side.

    python benchmarks/bench_scale.py [--sizes 10000,100000,1000000] [--server] [--kinds ivf,hnsw]
        [--model hybrid] [--batch-sizes 1,32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_ARTIFACTS,
    NOTE,
    OUT_DIR,
    ServerProcess,
    median,
    pct,
    serving_dir,
    table,
    write_result,
)
from bench_loadtest import run  # noqa: E402
from scale_bundle import scale, tiled_vectors, user_queries  # noqa: E402

from towerserve.export.index import DEFAULT_MIN_RECALL, build_and_tune, exact_top10  # noqa: E402
from towerserve.server.catalog.index import AnnIndex  # noqa: E402
from towerserve.server.catalog.snapshot import build_catalog, upserted  # noqa: E402
from towerserve.server.core.csr import CSR  # noqa: E402
from towerserve.server.core.features import load_tables  # noqa: E402
from towerserve.server.core.types import NewItemData  # noqa: E402
from towerserve.server.engine.ranking import admissible, ann_rank, rank  # noqa: E402

USERS, SEEN, TOP_N, MODEL = 300, 20, 10, "two_tower"


def _catalog(items: np.ndarray, users: np.ndarray, seen: CSR, ann):
    n = len(items)
    empty = [""] * n
    return build_catalog(
        ids=[str(j) for j in range(n)],
        price=np.zeros(n),
        category=["c"] * n,
        description=empty,
        features=empty,
        vectors=items,
        users=users[:1],
        seen=seen,
        candidates=0,
        user_independent=False,
        ann=ann,
    )


def search_layer(n: int, kinds: list[str], base: np.ndarray, queries: np.ndarray) -> list[dict]:
    import faiss

    rng = np.random.default_rng(n)
    items = tiled_vectors(base, n, rng)
    users = queries[:USERS]
    seen = CSR.from_pairs(np.repeat(np.arange(USERS), SEEN), rng.integers(0, n, USERS * SEEN), USERS, n)
    exact_cat = _catalog(items, users, seen, None)
    t_exact = []
    want = []
    for u in range(USERS):
        t0 = time.perf_counter()
        want.append(
            rank(exact_cat, users[u], TOP_N, set(), admissible(exact_cat, None, None, None), seen.row(u))[0]
        )
        t_exact.append((time.perf_counter() - t0) * 1e3)
    out = []
    exact = exact_top10(items, queries)
    for kind in kinds:
        faiss.omp_set_num_threads(os.cpu_count() or 1)  # build on every core, as export does
        index, tuned = build_and_tune(items, kind, queries, DEFAULT_MIN_RECALL, exact)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "index.faiss"
            faiss.write_index(index, str(path))
            size_mb = path.stat().st_size / 2**20
            ann = AnnIndex.load(path, kind, tuned.knob, tuned.recall, n, np.empty(0, dtype=np.int64))
        cat = _catalog(items, users, seen, ann)
        t_ann, hits = [], 0
        for u in range(USERS):
            t0 = time.perf_counter()
            got = ann_rank(cat, users[u], TOP_N, set(), None, seen.row(u))[0]
            t_ann.append((time.perf_counter() - t0) * 1e3)
            hits += len(set(got) & set(want[u]))
        t_up = []
        for k in range(20):  # half replacements (a tombstone and an add), half new items
            item = NewItemData(str(int(rng.integers(0, n))) if k % 2 else f"new{k}", "d", "f", 1.0, "c")
            vec = tiled_vectors(base, 1, rng)
            t0 = time.perf_counter()
            cat, rows, *_ = upserted(cat, [item], vec, users[:1], seen, False)
            ann.upsert(rows, vec)
            t_up.append((time.perf_counter() - t0) * 1e3)
        out.append(
            {
                "items": n,
                "kind": kind,
                "knob": tuned.knob,
                "build_s": tuned.build_seconds,
                "index_mb": size_mb,
                "recall_at_10": hits / (USERS * TOP_N),
                "exact_p50_ms": median(t_exact),
                "exact_p99_ms": pct(t_exact, 99),
                "ann_p50_ms": median(t_ann),
                "ann_p99_ms": pct(t_ann, 99),
                "upsert_p50_ms": median(t_up),
            }
        )
        print(f"{n} items, {kind}: built in {tuned.build_seconds:.1f} s", flush=True)
    return out


def server_at(n: int, src: Path, duration: float, model: str, batch_sizes: list[int]) -> list[dict]:
    """A real server on a bundle tiled to n items and n users, once per batch size: load time, RSS,
    c=32 Recommend vs health."""
    bundle = OUT_DIR / f"scale_{n}"
    scale(src, bundle, n, n, model, "auto", DEFAULT_MIN_RECALL)
    return [measure_server(bundle, duration, b) for b in batch_sizes]


def measure_server(bundle: Path, duration: float, batch_size: int | None = None) -> dict:
    """A real server on a serving bundle (tiled, or one `towerserve export` wrote: --bundle), with
    ``--batch-size batch_size`` (None: the server's default)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["models"][manifest["default_model"]]["splits"]["holdout"]
    index = entry.get("index") or {"kind": "exact", "recall_at_10": 1.0}
    size_mb = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file()) / 2**20
    users = _first_ids(bundle, "users.csv", 2000)
    n_users, n_items = _count(bundle, "users.csv"), _count(bundle, "items.csv")
    t0 = time.perf_counter()
    extra = () if batch_size is None else ("--batch-size", str(batch_size))
    with ServerProcess(bundle, *extra, tag=f"bench_scale_{n_items}") as server:
        ready = time.perf_counter() - t0
        rss_loaded = server.status()["VmRSS"] / 1024
        health, rec = [], []
        for r in range(2):
            health.append(run(server.target, "health", 32, users, duration, 1.0, seed=r))
            rec.append(run(server.target, "recommend", 32, users, duration, 1.0, seed=r))
        upsert_known, upsert_new = _upserts(server.target, bundle)
        mem = server.status()
    print(f"{n_items} items x {n_users} users: server measured", flush=True)
    return {
        "items": n_items,
        "users": n_users,
        "index": index["kind"],
        "batch_size": batch_size,
        "index_recall_at_10": index["recall_at_10"],
        "index_build_s": index.get("build_seconds", 0.0),
        "bundle_mb": size_mb,
        "serving_after_s": ready,
        "rss_loaded_mb": rss_loaded,
        "rss_peak_mb": mem["VmHWM"] / 1024,
        "health_qps": median([h["qps"] for h in health]),
        "health_p99_ms": median([h["p99_ms"] for h in health]),
        "recommend_qps": median([x["qps"] for x in rec]),
        "recommend_p50_ms": median([x["p50_ms"] for x in rec]),
        "recommend_p99_ms": median([x["p99_ms"] for x in rec]),
        "errors": sum(x["errors"] for x in rec + health),
        "upsert_known_texts_ms": upsert_known,
        "upsert_new_texts_ms": upsert_new,
    }


def _upserts(target: str, bundle: Path, calls: int = 10) -> tuple[float, float]:
    """Median client ms of single-item UpsertItems on an idle server: replacing existing items with
    texts the encoder has cached, then adding items whose texts are new (the encoder runs)."""
    import csv

    import grpc

    from towerserve.v1 import recommender_pb2 as pb
    from towerserve.v1 import recommender_pb2_grpc

    with open(bundle / "catalog" / "items.csv", newline="", encoding="utf-8") as fh:
        rows = [r for _, r in zip(range(calls + 1), csv.DictReader(fh))]
    ids, category = [r["item_id"] for r in rows], rows[0]["category"]  # a category the model knows

    def one(stub, item_id: str, text: str) -> float:
        item = pb.NewItem(item_id=item_id, description=text, features=text, price=10.0, category=category)
        t0 = time.perf_counter()
        stub.UpsertItems(pb.UpsertItemsRequest(items=[item]), timeout=30)
        return (time.perf_counter() - t0) * 1e3

    with grpc.insecure_channel(target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        one(stub, ids[0], "a short description")  # the text enters the encoder's cache
        known = [one(stub, i, "a short description") for i in ids[1:]]
        new = [one(stub, f"brand_new_{k}", f"a brand new text {k}") for k in range(calls)]
    return median(known), median(new)


def _first_ids(bundle: Path, name: str, n: int) -> list[str]:
    with open(bundle / "catalog" / name, encoding="utf-8") as fh:
        fh.readline()
        return [line.split(",", 1)[0] for _, line in zip(range(n), fh)]


def _count(bundle: Path, name: str) -> int:
    """Rows of a catalogue CSV (a quoted text never holds a newline: the writer escapes none)."""
    with open(bundle / "catalog" / name, "rb") as fh:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="catalogue sizes (default 10000,100000)")
    ap.add_argument("--kinds", default="ivf,hnsw", help="index kinds for part 1 (default ivf,hnsw)")
    ap.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help="the trained bundle to tile")
    ap.add_argument("--server", action="store_true", help="also part 2: a real server per size")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per load run in part 2")
    ap.add_argument("--skip-search", action="store_true", help="part 2 only")
    ap.add_argument(
        "--model",
        default=MODEL,
        help=f"the model to tile (default {MODEL}; the manifest's default if absent)",
    )
    ap.add_argument(
        "--batch-sizes",
        default="1,32",
        help="part 2 once per server --batch-size (default 1,32: dynamic batching off, then at its default)",
    )
    ap.add_argument(
        "--bundle",
        type=Path,
        help="part 2 on this serving bundle as exported (e.g. the 1M pipeline's), instead of tiled ones",
    )
    args = ap.parse_args()
    serving = serving_dir(args.artifacts)
    sizes = [int(x) for x in args.sizes.split(",")]
    manifest = json.loads((serving / "manifest.json").read_text())
    model = args.model if args.model in manifest["models"] else manifest["default_model"]
    split = manifest["models"][model]["splits"]["holdout"]
    batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    base = np.load(serving / split["item_vectors_file"])
    queries = user_queries(serving, split, load_tables(serving / "catalog" / "embeddings.npz"))
    result: dict = {}
    if not args.skip_search:
        rows = [r for n in sizes for r in search_layer(n, args.kinds.split(","), base, queries)]
        result["search"] = rows
        print(
            table(
                [
                    "items",
                    "index",
                    "build s",
                    "MB",
                    "recall@10",
                    "exact p50/p99 ms",
                    "index p50/p99 ms",
                    "x",
                    "upsert ms",
                ],
                [
                    [
                        f"{r['items']:,}",
                        f"{r['kind']} ({'efSearch' if r['kind'] == 'hnsw' else 'nprobe'} {r['knob']})",
                        f"{r['build_s']:.1f}",
                        f"{r['index_mb']:.1f}",
                        f"{r['recall_at_10']:.3f}",
                        f"{r['exact_p50_ms']:.3f} / {r['exact_p99_ms']:.3f}",
                        f"{r['ann_p50_ms']:.3f} / {r['ann_p99_ms']:.3f}",
                        f"{r['exact_p50_ms'] / r['ann_p50_ms']:.1f}",
                        f"{r['upsert_p50_ms']:.2f}",
                    ]
                    for r in rows
                ],
            )
        )
    if args.server or args.bundle:
        if args.bundle:
            rows = [measure_server(serving_dir(args.bundle), args.duration, b) for b in batch_sizes]
        else:
            rows = [r for n in sizes for r in server_at(n, serving, args.duration, model, batch_sizes)]
        result["server"] = rows
        print(
            table(
                [
                    "items x users",
                    "index (recall@10)",
                    "batch",
                    "bundle MB",
                    "ready s",
                    "RSS MB",
                    "Rec p50/p99 ms",
                    "health p99 ms",
                    "Rec QPS",
                    "health QPS",
                    "ratio",
                    "upsert ms (known / new texts)",
                ],
                [
                    [
                        f"{r['items']:,} x {r['users']:,}",
                        f"{r['index']} ({r['index_recall_at_10']:.3f})",
                        "default" if r["batch_size"] is None else str(r["batch_size"]),
                        f"{r['bundle_mb']:.0f}",
                        f"{r['serving_after_s']:.1f}",
                        f"{r['rss_loaded_mb']:.0f}",
                        f"{r['recommend_p50_ms']:.2f} / {r['recommend_p99_ms']:.2f}",
                        f"{r['health_p99_ms']:.2f}",
                        f"{r['recommend_qps']:.0f}",
                        f"{r['health_qps']:.0f}",
                        f"{r['recommend_qps'] / r['health_qps']:.2f}",
                        f"{r['upsert_known_texts_ms']:.1f} / {r['upsert_new_texts_ms']:.1f}",
                    ]
                    for r in rows
                ],
            )
        )
    print(NOTE)
    write_result("bench_scale", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
