"""Soak: 64 concurrent callers of mixed RPCs against a real `towerserve serve` for a minute.

Known and unseen users' Recommends, Score batches, small inline Evaluates, GetModelInfo, health
Checks, and UpsertItems / DeleteItems through the catalogue journal (--state-dir), each caller on its
own ids so every call should succeed. Prints per-RPC counts, errors by status code, p50/p99 latency
(after the warm-up), and the server's RSS when the warm-up ends and at the end. Then every id a
caller wrote is read back, from the server and from a fresh one on the same journal: present if its
last acknowledged write was an upsert, NOT_FOUND if a delete. Goals: no error, nothing read back
wrong, and RSS growth under 5 % after the warm-up (a leak per call shows as steady growth); exit 1
otherwise.

    python benchmarks/soak.py [--artifacts A/serving] [--seconds 60] [--callers 64] [--warmup 10]
                              [--state-dir D]

Without --artifacts it serves the tests' tiny pipeline (built once under benchmarks/out, as fuzz.py).
New texts come from bounded pools (a few hundred professions and item texts), so the encoder runs
during the warm-up and its LRU cache is full before RSS is first read; afterwards growth means a leak.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT_DIR, ServerProcess, pct, serving_dir, table, write_result  # noqa: E402

POOL = 300  # distinct new texts per kind
OWN_IDS = 12  # catalogue ids each caller upserts and deletes
# RPC -> share of the calls.
MIX = {
    "Recommend": 0.30,
    "Recommend(unseen)": 0.10,
    "Score": 0.12,
    "Score(unseen)": 0.05,
    "Evaluate": 0.02,
    "GetModelInfo": 0.03,
    "Health.Check": 0.10,
    "UpsertItems": 0.16,
    "DeleteItems": 0.12,
}


def _ids(serving: Path, name: str, column: str) -> list[str]:
    with open(serving / "catalog" / name, newline="", encoding="utf-8") as fh:
        return [r[column] for r in csv.DictReader(fh)]


class Requests:
    """Builds each caller's next request; ids and texts from the catalogue and bounded pools."""

    def __init__(self, serving: Path, seed: int):
        from towerserve.v1 import recommender_pb2 as pb

        self.pb = pb
        self.users = _ids(serving, "users.csv", "user_id")
        self.items = _ids(serving, "items.csv", "item_id")
        tag = f"{seed:x}"
        self.professions = [f"soak {tag} profession {k}" for k in range(POOL)]
        self.texts = [f"soak {tag} item text {k}: " + "word " * (k % 40) for k in range(POOL)]

    def unseen(self, rng: random.Random):
        return self.pb.UserAttributes(
            age=rng.uniform(18, 90), profession=rng.choice(self.professions), personality="Traveler"
        )

    def build(self, rpc: str, caller: int, rng: random.Random):
        pb = self.pb
        if rpc == "Recommend":
            return pb.RecommendRequest(user_id=rng.choice(self.users), top_n=rng.choice((5, 10, 20)))
        if rpc == "Recommend(unseen)":
            return pb.RecommendRequest(user=self.unseen(rng), top_n=10)
        if rpc in ("Score", "Score(unseen)"):
            pairs = [
                pb.ScorePair(item_id=rng.choice(self.items), user_id=rng.choice(self.users))
                if rpc == "Score"
                else pb.ScorePair(item_id=rng.choice(self.items), user=self.unseen(rng))
                for _ in range(rng.choice((1, 8, 64)))
            ]
            return pb.ScoreRequest(pairs=pairs)
        if rpc == "Evaluate":
            inter = [
                pb.Interaction(user_id=rng.choice(self.users), item_id=rng.choice(self.items))
                for _ in range(200)
            ]
            return pb.EvaluateRequest(ks=[10], interactions=inter)
        if rpc == "GetModelInfo":
            return pb.GetModelInfoRequest()
        if rpc == "Health.Check":
            from grpc_health.v1 import health_pb2

            return health_pb2.HealthCheckRequest()
        own = [f"soak_{caller}_{k}" for k in rng.sample(range(OWN_IDS), rng.choice((1, 2, 4)))]
        if rpc == "DeleteItems":
            return pb.DeleteItemsRequest(item_ids=own)
        return pb.UpsertItemsRequest(
            items=[
                pb.NewItem(
                    item_id=i,
                    description=rng.choice(self.texts),
                    features=rng.choice(self.texts),
                    price=round(rng.uniform(1, 500), 2),
                    category=rng.choice(("soak a", "soak b")),
                )
                for i in own
            ]
        )


def _path(rpc: str) -> str:
    from towerserve.server.core.rpcs import HEALTH_CHECK, RPCS

    return HEALTH_CHECK if rpc == "Health.Check" else RPCS[rpc.split("(")[0]].path


async def soak(target: str, requests: Requests, args, server: ServerProcess) -> dict:
    import grpc

    channels = [grpc.aio.insecure_channel(target) for _ in range(8)]
    calls: list[tuple[float, str, str, float]] = []  # (start offset, rpc, code, seconds)
    written = args.written  # item id -> whether the last acknowledged write left it in the catalogue
    rss: list[tuple[float, int]] = []
    t0 = time.monotonic()
    end = t0 + args.seconds
    names, weights = list(MIX), list(MIX.values())
    shown = Counter()  # the first few failures of each kind are printed as they happen

    async def caller(c: int) -> None:
        rng = random.Random(args.seed * 1000 + c)
        stubs = {rpc: channels[c % len(channels)].unary_unary(_path(rpc)) for rpc in names}
        while time.monotonic() < end:
            rpc = rng.choices(names, weights)[0]
            request = requests.build(rpc, c, rng)
            payload = request.SerializeToString()
            start = time.monotonic()
            try:
                await stubs[rpc](payload, timeout=60)
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
                shown[rpc, code] += 1
                if shown[rpc, code] <= 3:
                    print(f"!! {rpc}: {code}: {err.details()}", flush=True)
            calls.append((start - t0, rpc, code, time.monotonic() - start))
            if rpc in ("UpsertItems", "DeleteItems"):  # each id is one caller's: its last write decides
                ids = [x.item_id for x in request.items] if rpc == "UpsertItems" else list(request.item_ids)
                for i in ids:
                    written[i] = (rpc == "UpsertItems") if code == "OK" else None  # None: unknown

    async def sample() -> None:
        while time.monotonic() < end:
            rss.append((time.monotonic() - t0, server.status()["VmRSS"]))
            await asyncio.sleep(1.0)

    await asyncio.gather(sample(), *(caller(c) for c in range(args.callers)))
    rss.append((time.monotonic() - t0, server.status()["VmRSS"]))
    for ch in channels:
        await ch.close()
    return {"calls": calls, "rss": rss}


def read_back(target: str, user: str, written: dict[str, bool | None]) -> list[str]:
    """The ids whose presence disagrees with their last acknowledged write (a Score of each: OK when
    the catalogue holds it, NOT_FOUND when not)."""
    import grpc

    from towerserve.v1 import recommender_pb2 as pb
    from towerserve.v1 import recommender_pb2_grpc

    wrong = []
    with grpc.insecure_channel(target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        for item_id, present in sorted(written.items()):
            if present is None:
                continue
            try:
                stub.Score(pb.ScoreRequest(pairs=[pb.ScorePair(user_id=user, item_id=item_id)]), timeout=30)
                found = True
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                found = False
            if found != present:
                wrong.append(
                    f"{item_id}: {'there' if found else 'missing'}, last write {'upsert' if present else 'delete'}"
                )
    return wrong


def report(calls, rss, warmup: float) -> dict:
    by_rpc, errors, lat = Counter(), Counter(), defaultdict(list)
    for start, rpc, code, seconds in calls:
        by_rpc[rpc] += 1
        if code != "OK":
            errors[f"{rpc} {code}"] += 1
        elif start >= warmup:
            lat[rpc].append(seconds * 1e3)
    warm_rss = next((kb for t, kb in rss if t >= warmup), rss[-1][1])
    end_rss = rss[-1][1]
    # The trend after the warm-up (least squares): a leak per call is a steady slope, noise is not.
    after = [(t, kb) for t, kb in rss if t >= warmup]
    slope = 0.0
    if len(after) > 2:
        mt, mk = sum(t for t, _ in after) / len(after), sum(kb for _, kb in after) / len(after)
        var = sum((t - mt) ** 2 for t, _ in after)
        slope = sum((t - mt) * (kb - mk) for t, kb in after) / var * 60 if var else 0.0
    rows = [
        (
            rpc,
            by_rpc[rpc],
            sum(n for k, n in errors.items() if k.startswith(rpc + " ")),
            f"{pct(lat[rpc], 0.50):.2f}",
            f"{pct(lat[rpc], 0.99):.2f}",
        )
        for rpc in MIX
    ]
    return {
        "table": table(("rpc", "calls", "errors", "p50 ms", "p99 ms"), rows),
        "calls": sum(by_rpc.values()),
        "by_rpc": dict(by_rpc),
        "errors": dict(errors),
        "p50_ms": {rpc: pct(lat[rpc], 0.50) for rpc in MIX},
        "p99_ms": {rpc: pct(lat[rpc], 0.99) for rpc in MIX},
        "rss_kb_warm": warm_rss,
        "rss_kb_end": end_rss,
        "rss_growth": (end_rss - warm_rss) / warm_rss,
        "rss_kb_per_minute": slope,
        "rss_series": rss,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifacts", type=Path, help="serving bundle (default: the tests' tiny pipeline)")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--callers", type=int, default=64)
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before RSS and latency count")
    ap.add_argument("--state-dir", type=Path, help="catalogue journal folder (default: a new temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-rss-growth",
        type=float,
        default=0.05,
        help="the RSS goal: growth after the warm-up below this fraction (the suite's short run, where "
        "the journal's first pages and the encoder cache still fill, gives more room)",
    )
    ap.add_argument(
        "--without",
        default="",
        help="RPCs left out of the mix, comma-separated (to tell where growth comes from)",
    )
    args = ap.parse_args(argv)
    for rpc in filter(None, args.without.split(",")):
        if rpc not in MIX:
            ap.error(f"--without: {rpc!r} is not one of {', '.join(MIX)}")
        MIX.pop(rpc)
    if args.artifacts:
        serving = serving_dir(args.artifacts)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        import pipeline

        serving = pipeline.build_all(OUT_DIR / "fuzz-pipeline")["serving"]
    args.written = {}
    requests = Requests(serving, args.seed)
    with tempfile.TemporaryDirectory(prefix="soak-state-") as tmp:
        state = args.state_dir or Path(tmp)
        extra = ("--host", "127.0.0.1", "--state-dir", str(state))
        with ServerProcess(serving, *extra, tag="soak") as server:
            out = asyncio.run(soak(f"127.0.0.1:{server.port}", requests, args, server))
            alive = server.proc.poll() is None
            wrong_live = read_back(f"127.0.0.1:{server.port}", requests.users[0], args.written)
        # What the journal holds, read back by a fresh server: nothing acknowledged lost.
        with ServerProcess(serving, *extra, tag="soak-restart") as again:
            wrong_restart = read_back(f"127.0.0.1:{again.port}", requests.users[0], args.written)
    r = report(out["calls"], out["rss"], args.warmup)
    known = sum(v is not None for v in args.written.values())
    print(
        f"read back: {known} written ids, {len(wrong_live)} wrong live, {len(wrong_restart)} wrong after a restart"
    )
    for w in (wrong_live + wrong_restart)[:5]:
        print(f"!! {w}")
    print(f"\n{r['calls']} calls from {args.callers} callers in {args.seconds:.0f} s against {serving}")
    print(r["table"])
    print(f"errors: {sum(r['errors'].values())} {r['errors'] or ''}")
    print(
        f"server RSS after the {args.warmup:.0f} s warm-up {r['rss_kb_warm']} kB, at the end {r['rss_kb_end']} kB "
        f"({r['rss_growth']:+.1%}, trend {r['rss_kb_per_minute']:+.0f} kB/min); goal: 0 errors and growth "
        f"< {args.max_rss_growth:.0%}"
    )
    ok = (
        alive and not r["errors"] and r["rss_growth"] < args.max_rss_growth and not wrong_live + wrong_restart
    )
    r.pop("table")
    r["read_back"] = {"ids": known, "wrong_live": wrong_live, "wrong_after_restart": wrong_restart}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "written"}
    print(f"wrote {write_result('soak', {'serving': str(serving), 'args': settings, **r})}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
