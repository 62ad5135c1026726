"""Dynamic batching (server/api/batcher.py, Engine.answer_batch): batched answers are the unbatched
ones, each request keeps its own errors, a lone request is not held back, and a batch leaves when
its delay runs out whatever the pool is doing."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pipeline
import pytest
from pipeline import running_server

from towerserve.clients.client import RecommenderClient, TowerserveError, User
from towerserve.server.api.batcher import Batcher


def _requests(engine) -> list[dict]:
    """64 mixed Recommends that all need the pool on an IVF bundle: known users (index search, some
    filtered or with a history), unseen users (a tower pass; some with new texts: the encoder), and
    one bad unseen user."""
    cats = list(engine.catalog.categories)
    items = list(engine.catalog.ids[:40])
    out: list[dict] = []
    for j in range(64):
        user = engine.user_ids[j % len(engine.user_ids)]
        kind = j % 4
        if kind == 0:
            out.append({"user_id": user, "top_n": 5 + j % 7})
        elif kind == 1:
            out.append({"user_id": user, "top_n": 10, "categories": [cats[j % len(cats)]]})
        elif kind == 2:
            out.append({"user_id": user, "top_n": 8, "history": items[j % 30 : j % 30 + 3]})
        else:
            p = engine.profile
            # Half of them bring a text the encoder has not seen (it must run for them alone).
            job = p.profession if j % 8 == 3 else f"a profession never seen {j}"
            out.append({"user": User(age=20 + j, profession=job, personality=p.personality), "top_n": 6})
    out[13] = {"user": User(age=-1, profession="x", personality="y"), "top_n": 5}  # INVALID_ARGUMENT
    return out


def _answers(target: str, requests: list[dict]) -> list:
    """Every request at once (64 threads released together): (item ids, scores) or the status code."""
    start = threading.Barrier(len(requests))

    def one(kw):
        with RecommenderClient(target, timeout=60) as c:
            start.wait()
            try:
                got = c.recommend(**kw)
            except TowerserveError as err:
                return err.code
            return [i.item_id for i in got.items], [i.score for i in got.items]

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_batched_answers_equal_unbatched_ones_and_a_bad_request_fails_alone(serving, tmp_path):
    from prometheus_client import CollectorRegistry

    bundle = pipeline.ivf_copy(serving, tmp_path / "ivf")
    registry = CollectorRegistry()
    config = {"model": "two_tower", "candidate_budget_mb": 0}  # no lists: every request to the pool
    with (
        running_server(bundle, batch_size=1, **config) as alone,
        running_server(bundle, registry=registry, batch_size=64, batch_delay_us=20_000, **config) as batched,
    ):
        engine = batched.holder.get()
        assert engine.ann is not None and engine.ann.kind == "ivf"
        requests = _requests(engine)
        want = _answers(f"127.0.0.1:{alone.port}", requests)
        got = _answers(f"127.0.0.1:{batched.port}", requests)
        batches = registry.get_sample_value("towerserve_batch_size_count")
        sent = registry.get_sample_value("towerserve_batch_size_sum")
    assert want[13] == got[13] == grpc.StatusCode.INVALID_ARGUMENT
    for j, (w, g) in enumerate(zip(want, got)):
        if j == 13:
            continue
        assert g[0] == w[0], (j, requests[j])
        assert g[1] == pytest.approx(w[1], abs=1e-6), (j, requests[j])
    assert sent == 64 and batches < 64  # some went together (the first alone: nothing was running)


def _run_in(pool_size: int, slow: dict[str, float]):
    """A Batcher over a real thread pool whose ``run`` sleeps ``slow[first arg]`` seconds and records
    each batch's arguments."""
    batches: list[list] = []

    def run(key, batch):
        batches.append([a for (a,) in batch])
        time.sleep(max(slow.get(a, 0.0) for (a,) in batch))
        return [f"answer {a}" for (a,) in batch]

    return ThreadPoolExecutor(pool_size), run, batches


def test_a_lone_request_leaves_at_once_and_a_waiting_one_within_the_delay():
    executor, run, batches = _run_in(2, {"slow": 3.0})
    batcher = Batcher(executor, run, max_size=4, max_delay_us=300_000, workers=2)  # 0.3 s

    async def scenario():
        lone, queued, size = await batcher.submit("k", "lone")
        assert (lone, size) == ("answer lone", 1)
        assert queued < 0.3  # nothing was running: it did not wait for the delay (a thread hand-off)
        slow = asyncio.ensure_future(batcher.submit("k", "slow"))
        await asyncio.sleep(0.05)  # the slow batch is in the pool now
        t0 = time.perf_counter()
        waiting = [asyncio.ensure_future(batcher.submit("k", f"w{j}")) for j in range(3)]
        done = await asyncio.gather(*waiting)
        took = time.perf_counter() - t0
        # They left together when the delay ran out, not when the 3 s batch came back.
        assert {s for _, _, s in done} == {3}
        assert all(q >= 0.25 for _, q, _ in done) and took < 2.5, (done, took)
        await slow
        # More than max_size at once: batches of at most 4.
        many = await asyncio.gather(*(batcher.submit("k", f"m{j}") for j in range(10)))
        assert [a for a, _, _ in many] == [f"answer m{j}" for j in range(10)]

    try:
        asyncio.run(scenario())
    finally:
        executor.shutdown()
    assert batches[:3] == [["lone"], ["slow"], ["w0", "w1", "w2"]]
    assert max(len(b) for b in batches[3:]) <= 4 and sum(len(b) for b in batches[3:]) == 10


def test_with_every_thread_busy_requests_wait_here_and_leave_together_when_one_returns():
    """Nothing is sent to a pool with no free thread (it would queue there as a small batch): the
    requests that arrive meanwhile leave as one batch when the running one comes back."""
    executor, run, batches = _run_in(1, {"slow": 1.0})
    batcher = Batcher(executor, run, max_size=8, max_delay_us=50_000, workers=1)

    async def scenario():
        slow = asyncio.ensure_future(batcher.submit("k", "slow"))
        await asyncio.sleep(0.1)  # well past the delay: the timer must not send them to a busy pool
        t0 = time.perf_counter()
        done = await asyncio.gather(*(batcher.submit("k", f"w{j}") for j in range(3)))
        await slow
        return done, time.perf_counter() - t0

    try:
        done, took = asyncio.run(scenario())
    finally:
        executor.shutdown()
    assert batches == [["slow"], ["w0", "w1", "w2"]]
    assert {s for _, _, s in done} == {3} and took >= 0.5  # they waited for the slow batch


def test_each_request_gets_its_own_result_or_error_and_keys_never_mix():
    executor = ThreadPoolExecutor(1)
    seen: list[tuple] = []

    def run(key, batch):
        seen.append((key, [a for (a,) in batch]))
        return [ValueError(a) if a.startswith("bad") else (key, a) for (a,) in batch]

    batcher = Batcher(executor, run, max_size=8, max_delay_us=50_000)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit("A", "a0"))
        rest = [
            asyncio.ensure_future(batcher.submit(k, a)) for k, a in [("A", "a1"), ("B", "b1"), ("A", "bad")]
        ]
        results = await asyncio.gather(first, *rest, return_exceptions=True)
        return results

    try:
        results = asyncio.run(scenario())
    finally:
        executor.shutdown()
    assert results[0][0] == ("A", "a0") and results[1][0] == ("A", "a1") and results[2][0] == ("B", "b1")
    assert isinstance(results[3], ValueError) and str(results[3]) == "bad"
    assert all(len({k}) == 1 for k, _ in seen)
    assert sorted(a for _, b in seen for a in b) == ["a0", "a1", "b1", "bad"]
    assert ("B", ["b1"]) in seen  # B's request never shared A's batch
