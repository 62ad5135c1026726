"""What recording interactions costs: RecordInteractions' server time, and Recommend for users with
recorded interactions next to the same users without, measured side by side in one run.

A real `towerserve serve --state-dir` (SQLite journal, fsync per commit) on ARTIFACTS. Server time is
the ``server-timing`` trailer's ``compute`` (handler start to reply, journal commit included);
latency is the client's. Recommend alternates a user without recorded interactions and one with
(each user records ``--events-per-user`` events first), so both see the same machine state.

    python benchmarks/bench_interactions.py [--artifacts artifacts/seed] [--calls 500]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_ARTIFACTS,
    NOTE,
    ServerProcess,
    machine,
    median,
    pct,
    serving_dir,
    table,
    write_result,
)


def _server_ms(call) -> float:
    for key, value in call.trailing_metadata() or ():
        if key == "server-timing":
            return float(re.search(r"compute;dur=([0-9.]+)", value).group(1))
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--events-per-user", type=int, default=5)
    args = p.parse_args()
    serving = serving_dir(args.artifacts)

    import grpc

    from towerserve.server.catalog.snapshot import read_csv
    from towerserve.v1 import recommender_pb2 as pb
    from towerserve.v1 import recommender_pb2_grpc as rpc

    users = [r["user_id"] for r in read_csv(serving / "catalog" / "users.csv", ("user_id",))]
    items = [r["item_id"] for r in read_csv(serving / "catalog" / "items.csv", ("item_id",))]
    rng = random.Random(0)
    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(serving, "--state-dir", tmp, tag="interactions") as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stub = rpc.RecommenderStub(channel)
        record_ms, record_lat = [], []
        sample = rng.sample(users, min(len(users), 2 * args.calls))
        with_events, without = sample[: len(sample) // 2], sample[len(sample) // 2 :]
        for j in range(args.calls):
            user = with_events[j % len(with_events)]
            req = pb.RecordInteractionsRequest(
                events=[pb.InteractionEvent(user_id=user, item_id=rng.choice(items), kind="click")],
                write_id=f"bench-{j}",
            )
            t0 = time.perf_counter()
            _, call = stub.RecordInteractions.with_call(req, timeout=30)
            record_lat.append((time.perf_counter() - t0) * 1e3)
            record_ms.append(_server_ms(call))
        for user in with_events:  # everyone in the "with" group has events-per-user events
            events = [
                pb.InteractionEvent(user_id=user, item_id=rng.choice(items))
                for _ in range(args.events_per_user)
            ]
            stub.RecordInteractions(pb.RecordInteractionsRequest(events=events), timeout=30)
        lat = {"without": [], "with": []}
        server_ms = {"without": [], "with": []}
        for j in range(args.calls):
            for group, pool in (("without", without), ("with", with_events)):
                t0 = time.perf_counter()
                _, call = stub.Recommend.with_call(
                    pb.RecommendRequest(user_id=pool[j % len(pool)], top_n=10), timeout=30
                )
                lat[group].append((time.perf_counter() - t0) * 1e3)
                server_ms[group].append(_server_ms(call))
    results = {
        "record_one_event": {
            "server_p50_ms": median(record_ms),
            "server_p99_ms": pct(record_ms, 0.99),
            "latency_p50_ms": median(record_lat),
        },
        "recommend": {
            g: {
                "server_p50_ms": median(server_ms[g]),
                "latency_p50_ms": median(lat[g]),
                "latency_p99_ms": pct(lat[g], 0.99),
            }
            for g in lat
        },
    }
    r = results["recommend"]
    results["recommend_ratio_latency_p50"] = r["with"]["latency_p50_ms"] / r["without"]["latency_p50_ms"]
    results["recommend_ratio_server_p50"] = r["with"]["server_p50_ms"] / r["without"]["server_p50_ms"]
    print(
        table(
            ["what", "server p50 ms", "latency p50 ms"],
            [
                [
                    "RecordInteractions, 1 event (SQLite, fsync)",
                    f"{results['record_one_event']['server_p50_ms']:.3f}",
                    f"{results['record_one_event']['latency_p50_ms']:.3f}",
                ],
                [
                    "Recommend, user without recorded interactions",
                    f"{r['without']['server_p50_ms']:.3f}",
                    f"{r['without']['latency_p50_ms']:.3f}",
                ],
                [
                    f"Recommend, user with {args.events_per_user}+ recorded",
                    f"{r['with']['server_p50_ms']:.3f}",
                    f"{r['with']['latency_p50_ms']:.3f}",
                ],
                [
                    "ratio with / without",
                    f"{results['recommend_ratio_server_p50']:.2f}x",
                    f"{results['recommend_ratio_latency_p50']:.2f}x",
                ],
            ],
        )
    )
    print(NOTE)
    write_result("bench_interactions", {"machine": machine(), "artifacts": str(serving), **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
