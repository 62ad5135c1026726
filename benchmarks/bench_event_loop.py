"""Health Check latency while the worker pool is saturated, next to the same server idle.

A real `towerserve serve` answers heavy Recommends from a load process — unseen users with
professions no table or cache holds (text encoder, user tower, catalogue scan) and known users past
their candidate list (the exact or index path) — while this process times sequential health
Checks. It prints health p50/p99 idle and under load and their ratio (issue 11's goal: p99 under
load <= 2x idle), and the load's Recommend throughput.

    python benchmarks/bench_event_loop.py [--artifacts artifacts/seed] [--seconds 20] [--callers 6]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ARTIFACTS, NOTE, ServerProcess, child_env, serving_dir, table, write_result  # noqa: E402

LOAD = textwrap.dedent(
    """
    import sys, threading, time
    import grpc
    from towerserve.v1 import recommender_pb2 as pb
    port, seconds, known, callers = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    stop = time.monotonic() + seconds
    done = [0] * callers
    def caller(c):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            rec = ch.unary_unary("/towerserve.v1.Recommender/Recommend",
                request_serializer=pb.RecommendRequest.SerializeToString,
                response_deserializer=pb.RecommendResponse.FromString)
            j = 0
            while time.monotonic() < stop:
                j += 1
                words = " ".join(["engineering data music law"] * (1 + j % 5))
                user = pb.UserAttributes(age=30, profession=f"p{c}-{j} {words}", personality=f"calm {j}")
                rec(pb.RecommendRequest(user=user, top_n=50), timeout=30)
                rec(pb.RecommendRequest(user_id=known, top_n=50, exclude_seen=False), timeout=30)
                done[c] += 2
    threads = [threading.Thread(target=caller, args=(c,)) for c in range(callers)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(sum(done) / seconds)
    """
)


def check_latencies(port: int, seconds: float) -> np.ndarray:
    """Sequential health Checks (2 ms apart) for ``seconds``: their latencies in ms."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        out, stop = [], time.monotonic() + seconds
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            out.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.002)
    return np.array(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    ap.add_argument("--seconds", type=float, default=20.0, help="each phase (idle, loaded)")
    ap.add_argument("--callers", type=int, default=6)
    ap.add_argument("--threads", type=int, help="the server's worker pool size (default: serve's)")
    args = ap.parse_args()
    serving = serving_dir(args.artifacts)
    with open(serving / "catalog" / "users.csv") as fh:
        fh.readline()
        known = fh.readline().split(",")[0]
    extra = ["--threads", str(args.threads)] if args.threads else []
    with ServerProcess(serving, *extra, tag="bench_event_loop") as server:
        idle = check_latencies(server.port, args.seconds)
        load = subprocess.Popen(
            [sys.executable, "-c", LOAD, str(server.port), str(args.seconds + 4), known, str(args.callers)],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        time.sleep(2)
        busy = check_latencies(server.port, args.seconds)
        qps = float(load.communicate(timeout=120)[0].strip() or "nan")
    rows = [
        ["idle", len(idle), f"{np.median(idle):.3f}", f"{np.percentile(idle, 99):.3f}"],
        ["under load", len(busy), f"{np.median(busy):.3f}", f"{np.percentile(busy, 99):.3f}"],
    ]
    print(table(["health Check", "checks", "p50 ms", "p99 ms"], rows))
    ratio = np.percentile(busy, 99) / np.percentile(idle, 99)
    print(f"p99 under load / idle: {ratio:.2f}x (goal <= 2x); load: {qps:.0f} heavy Recommend/s")
    print(NOTE)
    write_result(
        "bench_event_loop",
        {"idle_ms": idle.tolist(), "busy_ms": busy.tolist(), "ratio_p99": ratio, "qps": qps},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
