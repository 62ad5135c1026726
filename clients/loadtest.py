"""Load-test harness: closed loop (N requests in flight) or open loop (Poisson arrivals) on one RPC.

Requests are serialized once up front and responses are not decoded, so the generator spends as
little CPU per call as gRPC allows: on a shared machine, every cycle it saves is one the server gets.
Open-loop latency is measured from each request's *scheduled* send time, so a stalled server cannot
hide its queueing delay (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import csv
import json
import math
import multiprocessing as mp
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import grpc

from towerserve.server.core.rpcs import HEALTH_CHECK, RECOMMENDER
from towerserve.server.core.tables import format_table
from towerserve.v1 import recommender_pb2 as pb

from .balancing import channel_options
from .types import RetryPolicy

# The RPCs a load test can drive, by the Python clients' names (from the proto's descriptors), plus
# "health", the server's own empty-RPC ceiling.
_RPCS = {RECOMMENDER[name].python_name: RECOMMENDER[name] for name in ("Recommend", "Score", "Evaluate")}
_RPCS["record_interactions"] = RECOMMENDER["RecordInteractions"]  # one event per call: a click stream
RPCS = (*_RPCS, "health")


def parse_duration(text: str | float) -> float:
    """'30s', '2m', '500ms', '1h' or a plain number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise ValueError(f"duration must look like 30s, 2m, 500ms or 10 (got {text!r})")
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]


def read_ids(path: Path | str, column: str = "user_id") -> list[str]:
    """Ids from a users.csv / items.csv, or a folder holding one (data set or serving artifacts)."""
    path = Path(path)
    name = "users.csv" if column == "user_id" else "items.csv"
    if path.is_dir():
        for candidate in (path / name, path / "catalog" / name, path / "serving" / "catalog" / name):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise FileNotFoundError(f"{path}: no {name} (looked in ., catalog/, serving/catalog/)")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if column not in (reader.fieldnames or []):
            raise ValueError(f"{path}: no {column!r} column")
        return [row[column] for row in reader]


@dataclass(frozen=True)
class LoadTestConfig:
    """One load test.

    Attributes:
        target: "host:port".
        rpc: recommend | score | evaluate | health (the server's own empty-RPC ceiling).
        concurrency: requests kept in flight (closed loop).
        duration: seconds measured (after warmup).
        rate: when set, open loop: Poisson arrivals at this many requests per second.
        warmup: seconds run but not measured (connections, caches, JIT-free but still cold paths).
        user_ids / item_ids: drawn at random for each request.
        top_n: Recommend's top_n. score_pairs: pairs per Score request.
        evaluate_protocol: "notebook" or "full".
        procs: generator processes (each with its own event loop and connection).
        token: bearer token. tls_root: CA file for TLS (None: plaintext); tls_cert/tls_key: client
            certificate for mutual TLS.
        timeout: per-request deadline.
        max_in_flight: open-loop cap; arrivals beyond it are counted as dropped.
        seed: request sampling seed.
    """

    target: str
    rpc: str = "recommend"
    concurrency: int = 32
    duration: float = 30.0
    rate: float | None = None
    warmup: float = 1.0
    user_ids: Sequence[str] = ()
    item_ids: Sequence[str] = ()
    top_n: int = 10
    score_pairs: int = 10
    evaluate_protocol: str = "notebook"
    procs: int = 1
    token: str | None = field(default=None, repr=False)
    tls_root: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    timeout: float = 10.0
    max_in_flight: int = 20_000
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        if self.rpc not in RPCS:
            raise ValueError(f"rpc must be one of {RPCS} (got {self.rpc!r})")
        if self.concurrency < 1 or self.procs < 1 or self.duration <= 0:
            raise ValueError("concurrency, procs and duration must be positive")
        if self.rate is not None and self.rate <= 0:
            raise ValueError(f"rate must be > 0 (got {self.rate})")
        if self.rpc in ("recommend", "score", "record_interactions") and not self.user_ids:
            raise ValueError(f"--rpc {self.rpc} needs user ids (--users users.csv or an artifacts folder)")
        if self.rpc in ("score", "record_interactions") and not self.item_ids:
            raise ValueError(f"--rpc {self.rpc} needs item ids (--items items.csv or an artifacts folder)")
        if self.evaluate_protocol not in ("notebook", "full"):
            raise ValueError(
                f"evaluate_protocol must be 'notebook' or 'full' (got {self.evaluate_protocol!r})"
            )
        if self.warmup < 0 or self.timeout <= 0 or self.top_n < 1 or self.score_pairs < 1:
            raise ValueError("warmup must be >= 0, timeout > 0, top_n and score_pairs >= 1")


@dataclass
class LoadTestResult:
    rpc: str
    mode: str
    concurrency: int
    rate: float | None
    seconds: float
    requests: int
    ok: int
    qps: float
    latency_ms: dict[str, float]
    errors: dict[str, int]
    dropped: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lat = self.latency_ms
        rows = [
            [
                self.rpc,
                self.mode,
                self.concurrency if self.rate is None else f"{self.rate:g}/s",
                self.requests,
                round(self.qps, 1),
                lat.get("p50"),
                lat.get("p90"),
                lat.get("p99"),
                lat.get("max"),
                sum(self.errors.values()) + self.dropped,
            ]
        ]
        out = format_table(
            ["rpc", "mode", "load", "requests", "qps", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"],
            rows,
            digits=3,
        )
        if self.errors:
            out += "\nerrors by code: " + ", ".join(f"{k}: {v}" for k, v in sorted(self.errors.items()))
        if self.dropped:
            out += f"\ndropped (client in-flight cap reached): {self.dropped}"
        return out


def _requests(cfg: LoadTestConfig, rng: random.Random, n: int = 2048) -> tuple[str, list[bytes]]:
    """(method path, a pool of serialized requests)."""
    if cfg.rpc == "health":
        return HEALTH_CHECK, [b""]
    rpc = _RPCS[cfg.rpc]
    if cfg.rpc == "recommend":
        users = [rng.choice(cfg.user_ids) for _ in range(n)]
        return rpc.path, [rpc.request(user_id=u, top_n=cfg.top_n).SerializeToString() for u in users]
    if cfg.rpc == "score":
        return rpc.path, [
            rpc.request(
                pairs=[
                    pb.ScorePair(user_id=rng.choice(cfg.user_ids), item_id=rng.choice(cfg.item_ids))
                    for _ in range(cfg.score_pairs)
                ]
            ).SerializeToString()
            for _ in range(n // 8)
        ]
    if cfg.rpc == "record_interactions":  # one event per call, a fresh write id each (a retry-free stream)
        return rpc.path, [
            rpc.request(
                events=[
                    pb.InteractionEvent(
                        user_id=rng.choice(cfg.user_ids), item_id=rng.choice(cfg.item_ids), kind="click"
                    )
                ],
                write_id=f"lt-{cfg.seed}-{j}-{rng.getrandbits(48):x}",
            ).SerializeToString()
            for j in range(n)
        ]
    proto = pb.PROTOCOL_NOTEBOOK if cfg.evaluate_protocol == "notebook" else pb.PROTOCOL_FULL
    return rpc.path, [rpc.request(protocol=proto).SerializeToString()]


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    """The smallest value with at least a share q of the samples at or below it (sorted input)."""
    n = len(sorted_values)
    return sorted_values[min(n - 1, max(0, math.ceil(q * n - 1e-9) - 1))]


def percentiles(latencies: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds (nearest rank)."""
    if not latencies:
        return {}
    s = sorted(latencies)
    return {
        "p50": nearest_rank(s, 0.50) * 1e3,
        "p90": nearest_rank(s, 0.90) * 1e3,
        "p99": nearest_rank(s, 0.99) * 1e3,
        "max": s[-1] * 1e3,
        "mean": sum(s) / len(s) * 1e3,
    }


async def _run(cfg: LoadTestConfig, worker: int = 0) -> tuple[list[float], dict[str, int], int, float]:
    """Runs one generator; returns (latencies s, errors by code, dropped, measured seconds).

    Long because the channel, the request pool and the counters it fills are set up for, and shared by, the open- and closed-loop senders defined inside it.
    """
    rng = random.Random(cfg.seed * 1000 + worker)
    method, pool = _requests(cfg, rng)
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    creds = (
        grpc.ssl_channel_credentials(read(cfg.tls_root), read(cfg.tls_key), read(cfg.tls_cert))
        if (cfg.tls_root or cfg.tls_cert)
        else None
    )
    # round_robin over every address the target names, and no retries: a load test counts failures.
    options = channel_options(cfg.target, RetryPolicy(attempts=1))
    channel = (
        grpc.aio.secure_channel(cfg.target, creds, options)
        if creds
        else grpc.aio.insecure_channel(cfg.target, options)
    )
    call = channel.unary_unary(method)  # bytes in, bytes out: nothing decoded on the hot path
    metadata = (("authorization", f"Bearer {cfg.token}"),) if cfg.token else None
    latencies: list[float] = []
    errors: dict[str, int] = {}
    dropped = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    t_measure = start + cfg.warmup
    t_end = t_measure + cfg.duration
    in_flight = 0

    async def one(scheduled: float) -> None:
        nonlocal in_flight
        in_flight += 1
        try:
            await call(rng.choice(pool), timeout=cfg.timeout, metadata=metadata)
            code = None
        except grpc.aio.AioRpcError as err:
            code = err.code().name
        finally:
            in_flight -= 1
        now = loop.time()
        # Closed loop: only calls finishing inside the window count (QPS = completions / window).
        # Open loop: every call scheduled inside the window counts, however late it finishes.
        if scheduled >= t_measure and (now <= t_end if cfg.rate is None else scheduled < t_end):
            if code is None:
                latencies.append(now - scheduled)
            else:
                errors[code] = errors.get(code, 0) + 1

    async def closed() -> None:
        while (t := loop.time()) < t_end:
            await one(t)

    async def progress() -> None:
        last = 0
        while loop.time() < t_end:
            await asyncio.sleep(1.0)
            now = loop.time()
            done = len(latencies) + sum(errors.values())
            phase = "warmup" if now < t_measure else f"{now - t_measure:5.1f}s/{cfg.duration:g}s"
            recent = latencies[last:]
            p99 = percentiles(recent).get("p99", 0.0) if recent else 0.0
            print(
                f"\r[{cfg.rpc} {phase}] {done} ok+err  {len(recent)} ok/s  p99 {p99:.2f} ms  "
                f"errors {sum(errors.values())}   ",
                end="",
                file=sys.stderr,
                flush=True,
            )
            last = len(latencies)
        print(file=sys.stderr)

    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=cfg.timeout)
        except TimeoutError:
            raise ConnectionError(f"cannot connect to {cfg.target} within {cfg.timeout:g} s") from None
        tasks = [asyncio.create_task(progress())] if cfg.progress and worker == 0 else []
        if cfg.rate is None:
            await asyncio.gather(*(closed() for _ in range(cfg.concurrency)))
        else:
            rate = cfg.rate / cfg.procs
            pending = set()
            t = start
            while t < t_end:
                delay = t - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if in_flight >= cfg.max_in_flight:
                    dropped += t >= t_measure
                else:
                    task = asyncio.create_task(one(t))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                t += rng.expovariate(rate)
            if pending:
                await asyncio.wait(pending, timeout=cfg.timeout)
        for task in tasks:
            task.cancel()
    finally:
        await channel.close()
    return latencies, errors, dropped, cfg.duration


def _worker(args) -> tuple[list[float], dict[str, int], int, float]:
    cfg, w = args
    return asyncio.run(_run(cfg, w))


def run_loadtest(cfg: LoadTestConfig) -> LoadTestResult:
    """Runs the test (in ``procs`` processes when > 1) and aggregates the measurements."""
    cfg.validate()
    concurrency = cfg.concurrency
    if cfg.procs == 1:
        parts = [asyncio.run(_run(cfg))]
    else:
        share = replace(cfg, concurrency=max(1, cfg.concurrency // cfg.procs))
        concurrency = share.concurrency * cfg.procs  # what was really in flight
        with mp.get_context("spawn").Pool(cfg.procs) as pool:
            parts = pool.map(_worker, [(share, w) for w in range(cfg.procs)])
    latencies = [x for p in parts for x in p[0]]
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p[1].items():
            errors[k] = errors.get(k, 0) + v
    dropped = sum(p[2] for p in parts)
    seconds = cfg.duration
    requests = len(latencies) + sum(errors.values())
    return LoadTestResult(
        rpc=cfg.rpc,
        mode="closed" if cfg.rate is None else "open",
        concurrency=concurrency,
        rate=cfg.rate,
        seconds=seconds,
        requests=requests,
        ok=len(latencies),
        qps=len(latencies) / seconds,
        latency_ms=percentiles(latencies),
        errors=errors,
        dropped=dropped,
    )


def result_json(result: LoadTestResult) -> str:
    return json.dumps(result.to_json(), indent=2, sort_keys=True)
