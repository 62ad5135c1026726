"""Batch jobs on a local Ray against the same work in one plain process: rows/s and Ray's overhead.

Both jobs (`towerserve batch embed` and `batch recommend`) run as Ray Data jobs on a local Ray (an
actor per CPU, each loading the bundle) and, just before and just after, as a plain loop over the
same callable classes in this process (one Engine, then batches, then one Parquet file). Each timing
covers loading the model, the work and writing the output; starting Ray itself is timed apart. The embed
input is the catalogue with every text made new, so each item runs the text encoder and the item
tower, as a catalogue of unseen items would.

    python benchmarks/bench_batch.py [--artifacts artifacts/seed] [--items 1000] [--top-n 100]
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyarrow.parquet as pq  # noqa: E402
from _common import DEFAULT_ARTIFACTS, NOTE, serving_dir, table, write_result  # noqa: E402

from towerserve.server.batch.jobs import (  # noqa: E402
    ItemEmbedder,
    UserRecommender,
    apply_local,
    read_items,
    users_table,
)
from towerserve.server.batch.runner import Bundle, embed, known_users, ray_session, recommend  # noqa: E402
from towerserve.server.catalog.snapshot import read_csv  # noqa: E402


def new_items(serving: Path, n: int, dst: Path) -> Path:
    """``n`` items cycling through the catalogue with new ids and texts the exported tables lack."""
    rows = read_csv(serving / "catalog" / "items.csv", ("item_id",))
    with open(dst, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["item_id", "description", "features", "price", "category"])
        w.writeheader()
        for k in range(n):
            r = rows[k % len(rows)]
            w.writerow(
                {
                    "item_id": f"bench_{k}",
                    "description": f"{r['description']} Edition {k}.",
                    "features": f"{r['features']}, batch {k}",
                    "price": r["price"],
                    "category": r["category"],
                }
            )
    return dst


def plain(make, table_in, batch_size: int, out: Path) -> float:
    """Seconds for the job in this process: build the callable (loads the model), map, write."""
    t0 = time.perf_counter()
    pq.write_table(apply_local(make(), table_in, batch_size), out)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    ap.add_argument("--items", type=int, default=1000, help="items to embed, every text new (default 1000)")
    ap.add_argument("--top-n", type=int, default=100)
    args = ap.parse_args(argv)
    serving = serving_dir(args.artifacts).resolve()
    bundle = Bundle(str(serving))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_batch-") as tmp:
        tmp = Path(tmp)
        items_csv = new_items(serving, args.items, tmp / "items.csv")
        n_users = known_users(str(serving))
        jobs = {
            "embed": (
                args.items,
                lambda: plain(lambda: ItemEmbedder(bundle), read_items(items_csv), 256, tmp / "e.parquet"),
                lambda cpus: embed(bundle, items_csv, tmp / "e-ray", actors=cpus),
            ),
            "recommend": (
                n_users,
                lambda: plain(
                    lambda: UserRecommender(bundle, args.top_n), users_table(n_users), 1000, tmp / "r.parquet"
                ),
                lambda cpus: recommend(bundle, tmp / "r-ray", actors=cpus, top_n=args.top_n),
            ),
        }
        plain_s, ray_res = {}, {}
        t0 = time.perf_counter()
        with ray_session() as cpus:
            ray_start = time.perf_counter() - t0
            # Plain, Ray, plain: this machine's load drifts within minutes, so the plain figure is the
            # mean of one run before and one after the Ray job (Ray idles meanwhile, as it would).
            for name, (_, run_plain, run_ray) in jobs.items():
                before = run_plain()
                ray_res[name] = run_ray(cpus)
                plain_s[name] = (before, run_plain())
    for name, (n, _, _) in jobs.items():
        r = ray_res[name]
        p = sum(plain_s[name]) / 2
        rows.append(
            {
                "job": name,
                "rows": n,
                "plain_runs_s": list(plain_s[name]),
                "plain_s": p,
                "plain_rows_per_s": n / p,
                "ray_s": r.seconds,
                "ray_rows_per_s": r.rows_per_second,
                "actors": r.actors,
                "ray_over_plain": r.seconds / p,
            }
        )
    print(f"{serving}: {n_users} users; local Ray started in {ray_start:.1f} s with {cpus} CPUs ({NOTE})")
    print(
        table(
            ["job", "rows", "plain process", "rows/s", f"Ray, {cpus} actors", "rows/s", "Ray time / plain"],
            [
                [
                    r["job"],
                    f"{r['rows']:,}",
                    f"{r['plain_s']:.1f} s ({r['plain_runs_s'][0]:.1f}, {r['plain_runs_s'][1]:.1f})",
                    f"{r['plain_rows_per_s']:,.0f}",
                    f"{r['ray_s']:.1f} s",
                    f"{r['ray_rows_per_s']:,.0f}",
                    f"{r['ray_over_plain']:.2f}",
                ]
                for r in rows
            ],
        )
    )
    path = write_result(
        "bench_batch",
        {
            "artifacts": str(serving),
            "top_n": args.top_n,
            "ray_start_s": ray_start,
            "cpus": cpus,
            "jobs": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
