"""The acceptance load test: Recommend vs the server's own empty health RPC, paired round by round, at concurrency 1/8/32/64, and --workers 2 vs 1: `.venv/bin/python benchmarks/bench_loadtest.py` (~3-3.5 min; --quick ~1.5 min).

A real `towerserve serve` subprocess; closed-loop runs of clients.loadtest.run_loadtest in this
process. Per concurrency, health and recommend (top_n 10, random known users) alternate H R H R ...
for --rounds pairs, so a noisy neighbour hits both sides of a pair alike; the verdicts use the median
of the pairwise ratios (recommend / health, round i with round i). Health is the ceiling of any RPC on
this server and this load generator, so "recommend QPS >= 0.75 x health QPS" says Recommend's own
work is small next to gRPC's per-call cost. Part (c) alternates a 1-worker and a `--workers 2`
server at concurrency 32 with 2 generator processes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ARTIFACTS, ServerProcess, median, serving_dir, table, verdict, write_result  # noqa: E402

CONCURRENCY = (1, 8, 32, 64)
TARGET_AT = 32
TARGET_QPS_RATIO = 0.75
TARGET_P99_RATIO = 1.5


def run(
    target: str,
    rpc: str,
    concurrency: int,
    users,
    duration: float,
    warmup: float,
    procs: int = 1,
    seed: int = 0,
) -> dict:
    from towerserve.clients.loadtest import LoadTestConfig, run_loadtest

    cfg = LoadTestConfig(
        target=target,
        rpc=rpc,
        concurrency=concurrency,
        duration=duration,
        warmup=warmup,
        user_ids=users,
        top_n=10,
        procs=procs,
        progress=False,
        seed=seed,
    )
    r = run_loadtest(cfg)
    errors = sum(r.errors.values()) + r.dropped
    return {
        "qps": r.qps,
        "p50_ms": r.latency_ms.get("p50", float("nan")),
        "p99_ms": r.latency_ms.get("p99", float("nan")),
        "ok": r.ok,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        help=f"training artifacts (its serving/ folder is served; default {DEFAULT_ARTIFACTS})",
    )
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per run (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="H/R pairs per concurrency (default 3)")
    parser.add_argument(
        "--concurrency",
        type=lambda s: tuple(int(x) for x in s.split(",")),
        default=CONCURRENCY,
        help="comma-separated (default 1,8,32,64)",
    )
    parser.add_argument("--quick", action="store_true", help="duration 2 s, 2 rounds")
    parser.add_argument("--skip-workers", action="store_true", help="skip part (c), --workers 2 vs 1")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds = 2.0, 2

    from towerserve.clients.loadtest import read_ids

    serving = serving_dir(args.artifacts)
    users = read_ids(serving)
    result: dict = {
        "serving": str(serving),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "concurrency": {},
    }
    rows = []
    with ServerProcess(serving, tag="bench_loadtest-1w") as one:
        print(
            f"server `{' '.join(one.cmd)}` SERVING (pid {one.pid}); {args.rounds} x (health, recommend) "
            f"of {args.duration:g} s + {args.warmup:g} s warm-up per concurrency",
            file=sys.stderr,
        )
        for c in args.concurrency:
            health, rec = [], []
            for r in range(args.rounds):
                health.append(run(one.target, "health", c, users, args.duration, args.warmup, seed=r))
                rec.append(run(one.target, "recommend", c, users, args.duration, args.warmup, seed=r))
                print(
                    f"  c={c} round {r + 1}: health {health[-1]['qps']:.0f} qps p99 {health[-1]['p99_ms']:.2f} ms, "
                    f"recommend {rec[-1]['qps']:.0f} qps p99 {rec[-1]['p99_ms']:.2f} ms",
                    file=sys.stderr,
                )
            qps_ratio = median([b["qps"] / a["qps"] for a, b in zip(health, rec)])
            p99_ratio = median([b["p99_ms"] / a["p99_ms"] for a, b in zip(health, rec)])
            errors = sum(x["errors"] for x in health + rec)
            row = {
                "concurrency": c,
                "health_qps": median([x["qps"] for x in health]),
                "recommend_qps": median([x["qps"] for x in rec]),
                "health_p99_ms": median([x["p99_ms"] for x in health]),
                "recommend_p99_ms": median([x["p99_ms"] for x in rec]),
                "recommend_p50_ms": median([x["p50_ms"] for x in rec]),
                "qps_ratio": qps_ratio,
                "p99_ratio": p99_ratio,
                "errors": errors,
                "health_runs": health,
                "recommend_runs": rec,
            }
            rows.append(row)
            result["concurrency"][str(c)] = row
        rc1 = one.stop()
    print(
        f"\nclosed loop, 1 server process, 1 generator process in the benchmark's process; medians of "
        f"{args.rounds} rounds; ratios = median of pairwise (recommend / health)"
    )
    print(
        table(
            [
                "conc",
                "health qps",
                "recommend qps",
                "qps ratio",
                "health p99 ms",
                "recommend p99 ms",
                "p99 ratio",
                "errors",
            ],
            [
                [
                    r["concurrency"],
                    f"{r['health_qps']:.0f}",
                    f"{r['recommend_qps']:.0f}",
                    f"{r['qps_ratio']:.3f}",
                    f"{r['health_p99_ms']:.2f}",
                    f"{r['recommend_p99_ms']:.2f}",
                    f"{r['p99_ratio']:.3f}",
                    r["errors"],
                ]
                for r in rows
            ],
        )
    )
    at = result["concurrency"].get(str(TARGET_AT))
    targets = {}
    if at is not None:
        targets = {
            "qps_ratio": {
                "value": at["qps_ratio"],
                "target": f">= {TARGET_QPS_RATIO}",
                "pass": at["qps_ratio"] >= TARGET_QPS_RATIO,
            },
            "p99_ratio": {
                "value": at["p99_ratio"],
                "target": f"<= {TARGET_P99_RATIO}",
                "pass": at["p99_ratio"] <= TARGET_P99_RATIO,
            },
        }
        print(
            f"at concurrency {TARGET_AT}: QPS ratio {at['qps_ratio']:.3f} (target >= {TARGET_QPS_RATIO}): "
            f"{verdict(targets['qps_ratio']['pass'])}; p99 ratio {at['p99_ratio']:.3f} (target <= "
            f"{TARGET_P99_RATIO}): {verdict(targets['p99_ratio']['pass'])}"
        )
        if at["errors"]:
            print(f"  {at['errors']} errors at concurrency {TARGET_AT}: see the JSON")
    else:
        print(f"concurrency {TARGET_AT} not measured: no verdict")
    print(f"server exit code after SIGTERM: {rc1}")
    result["targets_at_32"] = targets
    result["server_exit_code"] = rc1

    # ---------------------------------------------------------------- (c) --workers 2 vs 1
    if not args.skip_workers:
        with (
            ServerProcess(serving, tag="bench_loadtest-1w") as one,
            ServerProcess(serving, "--workers", "2", tag="bench_loadtest-2w") as two,
        ):
            w1, w2 = [], []
            for r in range(args.rounds):
                w1.append(
                    run(
                        one.target, "recommend", TARGET_AT, users, args.duration, args.warmup, procs=2, seed=r
                    )
                )
                w2.append(
                    run(
                        two.target, "recommend", TARGET_AT, users, args.duration, args.warmup, procs=2, seed=r
                    )
                )
                print(
                    f"  workers round {r + 1}: 1 worker {w1[-1]['qps']:.0f} qps, 2 workers {w2[-1]['qps']:.0f} qps",
                    file=sys.stderr,
                )
            codes = (one.stop(), two.stop())
        ratio = median([b["qps"] / a["qps"] for a, b in zip(w1, w2)])
        print(
            f"\n(c) recommend at concurrency {TARGET_AT}, 2 generator processes, servers alternated round by round"
        )
        print(
            table(
                ["server", "recommend qps", "p99 ms", "errors"],
                [
                    [
                        "--workers 1",
                        f"{median([x['qps'] for x in w1]):.0f}",
                        f"{median([x['p99_ms'] for x in w1]):.2f}",
                        sum(x["errors"] for x in w1),
                    ],
                    [
                        "--workers 2",
                        f"{median([x['qps'] for x in w2]):.0f}",
                        f"{median([x['p99_ms'] for x in w2]):.2f}",
                        sum(x["errors"] for x in w2),
                    ],
                ],
            )
        )
        print(
            f"2 workers / 1 worker QPS: {ratio:.3f} (median of pairwise ratios). Note: this machine has 2 cores, "
            "shared by the server worker(s) AND the 2 load-generator processes, so this ratio says little about "
            "a host where the server has cores of its own."
        )
        print(f"exit codes after SIGTERM: 1-worker {codes[0]}, 2-worker supervisor {codes[1]}")
        result["workers"] = {
            "concurrency": TARGET_AT,
            "procs": 2,
            "one_worker_runs": w1,
            "two_worker_runs": w2,
            "one_worker_qps": median([x["qps"] for x in w1]),
            "two_worker_qps": median([x["qps"] for x in w2]),
            "ratio_2_over_1": ratio,
            "exit_codes": list(codes),
            "note": "2 cores shared by the server workers and the load generators",
        }
    path = write_result("bench_loadtest", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
