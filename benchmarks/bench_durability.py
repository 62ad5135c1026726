"""What durability costs: the journal's commit against the alternatives, and a real server with and without it.

1. Store layer, one item per commit, side by side on the same disk: the SQLite journal
   (WAL, synchronous=FULL: what the server uses), SQLite with synchronous=NORMAL (no fsync per commit:
   fast, not durable against power loss), and a hand-written append-only log with an fsync per record.
2. A real `towerserve serve` with and without `--state-dir`: single-item UpsertItems latency over
   gRPC (the journal's share of an acknowledged write), then start-up time with N journaled items
   to replay (texts re-encoded, the item tower run) next to start-up with an empty journal.
3. Two servers on one journal (SQLite, and a real PostgreSQL when Debian's package is installed):
   from an UpsertItems OK on one to the item served by the other (the journal poll, 0.25 s).

    python benchmarks/bench_durability.py [--artifacts artifacts/seed] [--commits 300] [--upserts 200] [--replay 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_ARTIFACTS,
    NOTE,
    OUT_DIR,
    ServerProcess,
    machine,
    median,
    pct,
    serving_dir,
    table,
    write_result,
)

from towerserve.server.catalog.store import SQLiteStore  # noqa: E402
from towerserve.server.core.types import NewItemData  # noqa: E402


def _item(k: int, tag: str = "bench") -> NewItemData:
    return NewItemData(f"{tag}-{k}", f"a benchmark item number {k} for the journal", "durable", 10.0, "bench")


def _time_each(fn, n: int) -> list[float]:
    out = []
    for k in range(n):
        t0 = time.perf_counter()
        fn(k)
        out.append(time.perf_counter() - t0)
    return out


def store_layer(n: int, where: Path) -> dict[str, list[float]]:
    """Seconds per single-item commit for each way of making a write durable."""
    results = {}
    with tempfile.TemporaryDirectory(dir=where) as tmp:
        full = SQLiteStore(Path(tmp) / "full")
        results["sqlite WAL, synchronous=FULL (served)"] = _time_each(lambda k: full.upsert([_item(k)]), n)
        full.close()
        normal = SQLiteStore(Path(tmp) / "normal")
        normal._db.execute("PRAGMA synchronous=NORMAL")  # WAL fsynced only at checkpoints
        results["sqlite WAL, synchronous=NORMAL (not durable)"] = _time_each(
            lambda k: normal.upsert([_item(k)]), n
        )
        normal.close()
        with open(Path(tmp) / "append.log", "ab") as log:

            def append(k: int) -> None:
                it = _item(k)
                log.write((json.dumps(it.__dict__) + "\n").encode())
                log.flush()
                os.fsync(log.fileno())

            results["append-only log + fsync per record"] = _time_each(append, n)
    return results


def server_upserts(serving: Path, n: int, state_dir: Path | None) -> list[float]:
    from towerserve.clients.client import ItemData, RecommenderClient

    extra = ("--state-dir", str(state_dir)) if state_dir else ()
    with ServerProcess(serving, *extra, tag="durability") as server, RecommenderClient(server.target) as c:
        for k in range(10):  # warm: first encoder runs, first journal pages
            c.upsert_items([ItemData(f"warm-{k}", "warm up text", "warm", 1.0, "bench")])
        out = []
        for k in range(n):
            t0 = time.perf_counter()
            c.upsert_items([ItemData(f"u-{k}", f"a benchmark item number {k}", "durable", 10.0, "bench")])
            out.append(time.perf_counter() - t0)
        return out


def start_seconds(serving: Path, state_dir: Path) -> float:
    with ServerProcess(serving, "--state-dir", str(state_dir), tag="durability-start") as server:
        return server.ready_seconds


def propagation(serving: Path, journal: tuple[str, str], n: int) -> list[float]:
    """Seconds from an UpsertItems OK on one server to the item in another's answers (two servers
    on one journal, as --workers processes or replicas are)."""
    from towerserve.clients.client import ItemData, RecommenderClient

    with (
        ServerProcess(serving, *journal, tag="durability-a") as a,
        ServerProcess(serving, *journal, tag="durability-b") as b,
        RecommenderClient(a.target) as ca,
        RecommenderClient(b.target) as cb,
    ):
        out = []
        for k in range(n):
            category = f"propagation-{k}"
            ca.upsert_items([ItemData(f"p-{k}", "a propagated item", "shared", 1.0, category)])
            t0 = time.perf_counter()
            while True:
                info = cb.model_info()
                if category in info.categories:
                    break
                time.sleep(0.005)
            out.append(time.perf_counter() - t0)
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    ap.add_argument("--commits", type=int, default=300, help="single-item commits per store variant")
    ap.add_argument("--upserts", type=int, default=200, help="single-item UpsertItems per server")
    ap.add_argument("--replay", type=int, default=1000, help="journaled items replayed at start")
    ap.add_argument("--propagate", type=int, default=20, help="upserts timed from one server to another")
    args = ap.parse_args(argv)
    serving = serving_dir(args.artifacts)
    OUT_DIR.mkdir(parents=True, exist_ok=True)

    print(f"1. one item per durable commit ({args.commits} each, same disk: {OUT_DIR})")
    layer = store_layer(args.commits, OUT_DIR)
    base = median(layer["append-only log + fsync per record"])
    print(
        table(
            ["variant", "p50 ms", "p99 ms", "p50 / append+fsync"],
            [
                [k, f"{median(v) * 1e3:.3f}", f"{pct(v, 0.99) * 1e3:.3f}", f"{median(v) / base:.2f}"]
                for k, v in layer.items()
            ],
        )
    )

    print(f"\n2. single-item UpsertItems over gRPC, {args.upserts} each, {serving}")
    with tempfile.TemporaryDirectory(dir=OUT_DIR) as tmp:
        state = Path(tmp) / "state"
        memory = server_upserts(serving, args.upserts, None)
        journaled = server_upserts(serving, args.upserts, state)
        print(
            table(
                ["server", "p50 ms", "p99 ms"],
                [
                    ["in memory only", f"{median(memory) * 1e3:.2f}", f"{pct(memory, 0.99) * 1e3:.2f}"],
                    [
                        "--state-dir journal",
                        f"{median(journaled) * 1e3:.2f}",
                        f"{pct(journaled, 0.99) * 1e3:.2f}",
                    ],
                ],
            )
        )
        ratio = median(journaled) / median(memory)
        print(f"journaled / in-memory p50: {ratio:.2f}x")

        empty = Path(tmp) / "empty"
        SQLiteStore(empty).close()
        full = Path(tmp) / "full"
        store = SQLiteStore(full)
        for start in range(0, args.replay, 500):
            store.upsert([_item(k, "replay") for k in range(start, min(args.replay, start + 500))])
        store.close()
        t_empty, t_full = start_seconds(serving, empty), start_seconds(serving, full)
        per_item = (t_full - t_empty) / args.replay
        print(
            f"\nstart to SERVING: empty journal {t_empty:.2f} s, {args.replay} journaled items {t_full:.2f} s "
            f"(replay ~{per_item * 1e3:.2f} ms per item)"
        )

    print(f"\n3. an upsert acknowledged by server A, until server B serves it ({args.propagate} each)")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from postgres import fresh_database, pg_bin, postgres_server

    spread = {}
    with tempfile.TemporaryDirectory(dir=OUT_DIR) as tmp:
        spread["SQLite --state-dir"] = propagation(
            serving, ("--state-dir", str(Path(tmp) / "s")), args.propagate
        )
    if pg_bin() is not None:
        with postgres_server() as url:
            journal = ("--catalog-url", fresh_database(url))
            spread["PostgreSQL --catalog-url"] = propagation(serving, journal, args.propagate)
    print(
        table(
            ["journal", "p50 ms", "p99 ms", "max ms"],
            [
                [k, f"{median(v) * 1e3:.0f}", f"{pct(v, 0.99) * 1e3:.0f}", f"{max(v) * 1e3:.0f}"]
                for k, v in spread.items()
            ],
        )
    )
    print(NOTE)
    write_result(
        "bench_durability",
        {
            "machine": machine(),
            "store_ms": {k: {"p50": median(v) * 1e3, "p99": pct(v, 0.99) * 1e3} for k, v in layer.items()},
            "upsert_ms": {
                "memory": {"p50": median(memory) * 1e3, "p99": pct(memory, 0.99) * 1e3},
                "journal": {"p50": median(journaled) * 1e3, "p99": pct(journaled, 0.99) * 1e3},
            },
            "start_seconds": {"empty": t_empty, "replay": t_full, "items": args.replay},
            "propagation_ms": {k: {"p50": median(v) * 1e3, "max": max(v) * 1e3} for k, v in spread.items()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
