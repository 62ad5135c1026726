"""Every row of server.errors.ERROR_TABLE, triggered for real over gRPC: status code and message."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from messages import mentions, missing
from pipeline import server_and_channel as running_server
from prometheus_client import CollectorRegistry

from towerserve.server.api.app import ServerConfig, create_server
from towerserve.server.engine import evaluation
from towerserve.server.engine.deadline import check_deadline
from towerserve.server.engine.engine import Engine, EngineConfig
from towerserve.server.engine.errors import ERROR_TABLE, GENERIC_INTERNAL, DeadlineExceeded
from towerserve.v1 import recommender_pb2 as pb
from towerserve.v1 import recommender_pb2_grpc

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND

# ERROR_TABLE rows, by the start of their condition text.
UNKNOWN = "unknown user_id or item_id"
TOP_N = "top_n <= 0 or > max_top_n"
BATCH = "empty or oversized batch"
NEITHER = "neither user_id nor user attributes"
NUMBERS = "age NaN, <= 0 or > 150"
TEXT = "text empty where required"
MISSING = "a required attribute missing"
KS = "ks outside 1..1000"
BYTES = "request bytes that do not parse"
UNLOADED = "model not loaded or warming up"
# Rows that depend on server state or configuration rather than on one request's content; each has a
# test of its own (here or in test_server_ops.py).
ELSEWHERE = {
    "more concurrent RPCs than": "test_more_concurrent_rpcs_than_allowed_are_refused",
    "missing or wrong bearer token": "test_server_ops.py::test_token_is_required_and_never_logged",
    "a bearer token whose right is too low": "test_privilege.py::test_each_token_calls_what_its_right_allows",
    "deadline too short for the work": "test_a_deadline_too_short_for_evaluate",
    "Reload of a bad artifacts folder": "test_server_ops.py::test_hot_reload_under_load_then_a_bad_folder_is_refused",
    "anything unexpected": "test_unexpected_errors_are_internal_with_a_generic_message",
    "UpsertItems or DeleteItems while the catalogue journal is unreachable": (
        "test_consistency.py::test_postgres_stopped_under_load_then_back"
    ),
    "UpsertItems or DeleteItems when the journal has no room": (
        "test_journal_faults.py::test_a_full_disk_refuses_writes_and_loses_nothing_acknowledged"
    ),
    "UpsertItems or DeleteItems when the journal file or folder": (
        "test_journal_faults.py::test_a_read_only_journal_is_refused_at_start_naming_the_path"
    ),
}


@pytest.fixture(scope="module")
def loaded(serving):
    # two_tower reads personality, so "required attribute missing" is reachable.
    with running_server(serving, model="two_tower") as (running, channel):
        yield running, channel


@pytest.fixture(scope="module")
def unloaded(serving):
    with running_server(serving, load=False) as (running, channel):
        yield running, channel


@dataclass(frozen=True)
class Ctx:
    """What a case may need to build its request: the limits and a real user and item."""

    info: pb.GetModelInfoResponse
    user: str
    item: str

    def attrs(self, **kw) -> pb.UserAttributes:
        return pb.UserAttributes(**{"age": 30.0, "profession": "science", "personality": "Traveler", **kw})

    def new_item(self, **kw) -> pb.NewItem:
        return pb.NewItem(
            **{
                "item_id": "item_x",
                "description": "A tent.",
                "features": "Waterproof",
                "price": 10.0,
                "category": "tent",
                **kw,
            }
        )


@pytest.fixture(scope="module")
def ctx(loaded, users, items) -> Ctx:
    info = recommender_pb2_grpc.RecommenderStub(loaded[1]).GetModelInfo(pb.GetModelInfoRequest())
    assert "personality" in info.user_fields  # what makes "missing-personality" an error
    return Ctx(info, users[0]["user_id"], next(iter(items)))


@dataclass(frozen=True)
class Case:
    id: str
    row: str  # ERROR_TABLE condition prefix
    method: str  # "Service/Method"
    build: Callable[[Ctx], object]  # a request message, or raw bytes sent as they are
    code: grpc.StatusCode
    # What the status details must name, each taken from the request the case sends (or from
    # GetModelInfo's limits): the field at fault, the value that arrived, the bound it broke. Not
    # the server's wording, which may change freely.
    says: Callable[[Ctx], tuple[str, ...]] | tuple[str, ...]
    server: str = "loaded"


def _rec(**kw) -> Callable[[Ctx], pb.RecommendRequest]:
    return lambda c: pb.RecommendRequest(user_id=c.user, top_n=5, **kw)


def _cold(top_n=5, **attrs) -> Callable[[Ctx], pb.RecommendRequest]:
    return lambda c: pb.RecommendRequest(user=c.attrs(**attrs), top_n=top_n)


def _upsert(**kw) -> Callable[[Ctx], pb.UpsertItemsRequest]:
    return lambda c: pb.UpsertItemsRequest(items=[c.new_item(**kw)])


REC, SCORE, EVAL = "Recommender/Recommend", "Recommender/Score", "Recommender/Evaluate"
UPSERT = "Recommender/UpsertItems"
# The limits recommender.proto and ERROR_TABLE document (GetModelInfo reports only the batch sizes).
MAX_AGE, MAX_PRICE, SHORT_TEXT, LONG_TEXT, MAX_K = 150, 1e9, 200, 5000, 1000
GHOST_USER, GHOST_ITEM = "nobody_0000", "no_such_item"
NAN, INF = float("nan"), float("inf")

CASES = [
    # NOT_FOUND
    Case(
        "unknown-user",
        UNKNOWN,
        REC,
        lambda c: pb.RecommendRequest(user_id=GHOST_USER, top_n=5),
        NOT_FOUND,
        ("user_id", repr(GHOST_USER)),
    ),
    Case(
        "unknown-user-in-score",
        UNKNOWN,
        SCORE,
        lambda c: pb.ScoreRequest(pairs=[pb.ScorePair(user_id=GHOST_USER, item_id=c.item)]),
        NOT_FOUND,
        ("user_id", repr(GHOST_USER)),
    ),
    Case(
        "unknown-item-in-score",
        UNKNOWN,
        SCORE,
        lambda c: pb.ScoreRequest(
            pairs=[
                pb.ScorePair(user_id=c.user, item_id=c.item),
                pb.ScorePair(user_id=c.user, item_id=GHOST_ITEM),
            ]
        ),
        NOT_FOUND,
        ("item_id", repr(GHOST_ITEM), "pair 1"),  # the second pair is the bad one
    ),
    Case(
        "unknown-item-inline",
        UNKNOWN,
        EVAL,
        lambda c: pb.EvaluateRequest(interactions=[pb.Interaction(user_id=c.user, item_id=GHOST_ITEM)]),
        NOT_FOUND,
        ("item_id", repr(GHOST_ITEM), "interaction 0"),
    ),
    # top_n
    Case(
        "top-n-0",
        TOP_N,
        REC,
        lambda c: pb.RecommendRequest(user_id=c.user, top_n=0),
        INVALID,
        lambda c: ("top_n", "0", str(c.info.max_top_n)),
    ),
    Case(
        "top-n-negative",
        TOP_N,
        REC,
        lambda c: pb.RecommendRequest(user_id=c.user, top_n=-3),
        INVALID,
        lambda c: ("top_n", "-3", str(c.info.max_top_n)),
    ),
    Case(
        "top-n-max-plus-1",
        TOP_N,
        REC,
        lambda c: pb.RecommendRequest(user_id=c.user, top_n=c.info.max_top_n + 1),
        INVALID,
        lambda c: ("top_n", str(c.info.max_top_n + 1), str(c.info.max_top_n)),
    ),
    # batches
    Case(
        "score-empty",
        BATCH,
        SCORE,
        lambda c: pb.ScoreRequest(),
        INVALID,
        lambda c: ("pairs", "0", str(c.info.max_score_pairs)),
    ),
    Case(
        "score-oversized",
        BATCH,
        SCORE,
        lambda c: pb.ScoreRequest(
            pairs=[pb.ScorePair(user_id=c.user, item_id=c.item)] * (c.info.max_score_pairs + 1)
        ),
        INVALID,
        lambda c: ("pairs", str(c.info.max_score_pairs + 1), str(c.info.max_score_pairs)),
    ),
    Case(
        "upsert-empty",
        BATCH,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(),
        INVALID,
        lambda c: ("items", "0", str(c.info.max_upsert_items)),
    ),
    Case(
        "upsert-oversized",
        BATCH,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(
            items=[c.new_item(item_id=f"x{j}") for j in range(c.info.max_upsert_items + 1)]
        ),
        INVALID,
        lambda c: ("items", str(c.info.max_upsert_items + 1), str(c.info.max_upsert_items)),
    ),
    Case(
        "recommend-too-many-categories",
        BATCH,
        REC,
        lambda c: pb.RecommendRequest(
            user_id=c.user, top_n=3, categories=[f"c{j}" for j in range(c.info.max_categories + 1)]
        ),
        INVALID,
        lambda c: ("categories", str(c.info.max_categories + 1), str(c.info.max_categories)),
    ),
    Case(
        "recommend-too-many-exclusions",
        BATCH,
        REC,
        lambda c: pb.RecommendRequest(
            user_id=c.user, top_n=3, exclude_item_ids=[f"x{j}" for j in range(c.info.max_exclude_items + 1)]
        ),
        INVALID,
        lambda c: ("exclude_item_ids", str(c.info.max_exclude_items + 1), str(c.info.max_exclude_items)),
    ),
    Case(
        "inline-oversized",
        BATCH,
        EVAL,
        lambda c: pb.EvaluateRequest(
            interactions=[pb.Interaction(user_id=c.user, item_id=c.item)]
            * (c.info.max_inline_interactions + 1)
        ),
        INVALID,
        lambda c: (
            "interactions",
            str(c.info.max_inline_interactions + 1),
            str(c.info.max_inline_interactions),
        ),
    ),
    # who
    Case("neither-user", NEITHER, REC, lambda c: pb.RecommendRequest(top_n=5), INVALID, ("user_id", "user")),
    Case(
        "neither-user-in-score",
        NEITHER,
        SCORE,
        lambda c: pb.ScoreRequest(pairs=[pb.ScorePair(item_id=c.item)]),
        INVALID,
        ("user_id", "user"),
    ),
    # numbers: the value as the server received it, a float (so 0 arrives as 0.0)
    Case("age-nan", NUMBERS, REC, _cold(age=NAN), INVALID, ("user.age", str(NAN), str(MAX_AGE))),
    Case("age-inf", NUMBERS, REC, _cold(age=INF), INVALID, ("user.age", str(INF), str(MAX_AGE))),
    Case("age-0", NUMBERS, REC, _cold(age=0.0), INVALID, ("user.age", str(0.0), str(MAX_AGE))),
    Case("age-negative", NUMBERS, REC, _cold(age=-1.0), INVALID, ("user.age", str(-1.0), str(MAX_AGE))),
    Case("age-151", NUMBERS, REC, _cold(age=151.0), INVALID, ("user.age", str(151.0), str(MAX_AGE))),
    Case(
        "age-nan-in-score",
        NUMBERS,
        SCORE,
        lambda c: pb.ScoreRequest(pairs=[pb.ScorePair(user=c.attrs(age=NAN), item_id=c.item)]),
        INVALID,
        ("user.age", str(NAN)),
    ),
    Case(
        "price-range-inverted",
        NUMBERS,
        REC,
        _rec(price_range=pb.PriceRange(min=500.0, max=100.0)),
        INVALID,
        ("price_range.min", str(500.0), "price_range.max", str(100.0)),
    ),
    Case(
        "price-range-nan",
        NUMBERS,
        REC,
        _rec(price_range=pb.PriceRange(max=NAN)),
        INVALID,
        ("price_range.max", str(NAN)),
    ),
    Case("upsert-price-nan", NUMBERS, UPSERT, _upsert(price=NAN), INVALID, ("items[0].price", str(NAN))),
    Case(
        "upsert-price-negative",
        NUMBERS,
        UPSERT,
        _upsert(price=-1.0),
        INVALID,
        ("items[0].price", str(-1.0), "0"),
    ),
    Case(
        "upsert-price-1e300", NUMBERS, UPSERT, _upsert(price=1e300), INVALID, ("items[0].price", str(1e300))
    ),
    # texts
    Case(
        "empty-user-id",
        TEXT,
        REC,
        lambda c: pb.RecommendRequest(user_id="", top_n=5),
        INVALID,
        ("user_id",),
    ),
    Case("empty-profession", TEXT, REC, _cold(profession=""), INVALID, ("user.profession",)),
    Case("blank-profession", TEXT, REC, _cold(profession="   "), INVALID, ("user.profession",)),
    Case(
        "profession-too-long",
        TEXT,
        REC,
        _cold(profession="p" * (SHORT_TEXT + 1)),
        INVALID,
        ("user.profession", str(SHORT_TEXT + 1), str(SHORT_TEXT)),
    ),
    Case(
        "personality-too-long",
        TEXT,
        REC,
        _cold(personality="p" * (SHORT_TEXT + 1)),
        INVALID,
        ("user.personality", str(SHORT_TEXT + 1), str(SHORT_TEXT)),
    ),
    Case(
        "score-empty-item-id",
        TEXT,
        SCORE,
        lambda c: pb.ScoreRequest(pairs=[pb.ScorePair(user_id=c.user)]),
        INVALID,
        ("pairs[0].item_id",),
    ),
    Case(
        "description-too-long",
        TEXT,
        UPSERT,
        _upsert(description="d" * (LONG_TEXT + 1)),
        INVALID,
        ("items[0].description", str(LONG_TEXT + 1), str(LONG_TEXT)),
    ),
    Case("features-empty", TEXT, UPSERT, _upsert(features=""), INVALID, ("items[0].features",)),
    Case(
        "item-id-too-long",
        TEXT,
        UPSERT,
        _upsert(item_id="i" * (SHORT_TEXT + 1)),
        INVALID,
        ("items[0].item_id", str(SHORT_TEXT + 1), str(SHORT_TEXT)),
    ),
    Case(
        "category-empty",
        TEXT,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(items=[c.new_item(), c.new_item(item_id="item_y", category="")]),
        INVALID,
        ("items[1].category",),
    ),
    # required attribute
    Case(
        "missing-personality",
        MISSING,
        REC,
        lambda c: pb.RecommendRequest(user=pb.UserAttributes(age=30.0, profession="science"), top_n=5),
        INVALID,
        ("user.personality",),
    ),
    # ks, duplicates, ids over the limit
    Case("ks-0", KS, EVAL, lambda c: pb.EvaluateRequest(ks=[0]), INVALID, ("ks", "0", str(MAX_K))),
    Case(
        "ks-too-big",
        KS,
        EVAL,
        lambda c: pb.EvaluateRequest(ks=[10, MAX_K + 1]),
        INVALID,
        ("ks", str(MAX_K + 1), str(MAX_K)),
    ),
    Case(
        "upsert-duplicate-ids",
        KS,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(items=[c.new_item(item_id="dup"), c.new_item(item_id="dup")]),
        INVALID,
        ("items[1].item_id", repr("dup")),
    ),
    # An unknown id over the limit is refused for its length; the status stays short (checked below).
    Case(
        "user-id-20000",
        KS,
        REC,
        lambda c: pb.RecommendRequest(user_id="u" * 20_000, top_n=5),
        INVALID,
        ("user_id", "20000", str(SHORT_TEXT)),
    ),
    Case(
        "score-item-id-too-long",
        KS,
        SCORE,
        lambda c: pb.ScoreRequest(pairs=[pb.ScorePair(user_id=c.user, item_id="i" * (SHORT_TEXT + 1))]),
        INVALID,
        ("pairs[0].item_id", str(SHORT_TEXT + 1), str(SHORT_TEXT)),
    ),
    # bytes: field 1 (user_id) holding invalid UTF-8, then top_n=5
    Case(
        "invalid-utf8",
        BYTES,
        REC,
        lambda c: b"\x0a\x03\xff\xfe\xfd\x18\x05",
        INVALID,
        (pb.RecommendRequest.DESCRIPTOR.full_name,),
    ),
    # server state
    Case(
        "not-loaded",
        UNLOADED,
        REC,
        lambda c: pb.RecommendRequest(user_id=c.user, top_n=5),
        grpc.StatusCode.UNAVAILABLE,
        ("loading",),
        server="unloaded",
    ),
]


def _row(prefix: str) -> tuple[str, grpc.StatusCode]:
    rows = [r for r in ERROR_TABLE if r[0].startswith(prefix)]
    assert len(rows) == 1, f"ERROR_TABLE has {len(rows)} rows starting with {prefix!r}"
    return rows[0]


def _call(channel: grpc.Channel, method: str, request) -> bytes:
    raw = request if isinstance(request, bytes) else request.SerializeToString()
    call = channel.unary_unary(
        f"/towerserve.v1.{method}", request_serializer=None, response_deserializer=None
    )
    return call(raw, timeout=30)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_table(case: Case, loaded, unloaded, ctx):
    channel = (loaded if case.server == "loaded" else unloaded)[1]
    with pytest.raises(grpc.RpcError) as err:
        _call(channel, case.method, case.build(ctx))
    details = err.value.details()
    assert err.value.code() == case.code, details
    says = case.says(ctx) if callable(case.says) else case.says
    assert missing(details, says) == [], details
    assert len(details) < 1000  # ids and texts are quoted bounded, never echoed whole
    assert case.code == _row(case.row)[1]


def test_mentions_takes_whole_tokens_only():
    assert mentions("top_n must be in [1, 1000] (got 0)", "0")
    assert not mentions("top_n must be in [1, 1000] (got 1)", "0")
    assert not mentions("user.age must be in [1, 150] (got 0.0)", "0")
    assert not mentions("age 10.0", "0")
    assert missing("pairs must hold 1..10000 pairs (got 0)", ("pairs", "10000", "0", "1")) == []
    assert mentions("items[1].item_id 'dup' appears", "items[1].item_id")


def test_cases_cover_the_whole_error_table():
    covered = {_row(c.row)[0] for c in CASES}
    elsewhere = {_row(prefix)[0] for prefix in ELSEWHERE}
    assert not covered & elsewhere
    assert covered | elsewhere == {cond for cond, _ in ERROR_TABLE}, "a new ERROR_TABLE row needs a case here"
    content_codes = {
        code for cond, code in ERROR_TABLE if cond not in elsewhere and not cond.startswith(UNLOADED)
    }
    assert content_codes == {NOT_FOUND, INVALID}
    assert content_codes <= {c.code for c in CASES if c.server == "loaded"}
    for test in ELSEWHERE.values():  # the pointers stay true
        module, _, name = test.rpartition("::")
        source = (Path(__file__).parent / module).read_text() if module else Path(__file__).read_text()
        assert f"def {name}(" in source, test


def test_server_survives_the_error_cases(loaded, ctx):
    stub = recommender_pb2_grpc.RecommenderStub(loaded[1])
    assert len(stub.Recommend(pb.RecommendRequest(user_id=ctx.user, top_n=5)).items) == 5


# ------------------------------------------------------------------------------------------ deadline


def test_a_deadline_too_short_for_evaluate(serving, ctx):
    """A deadline a third as long as the biggest inline Evaluate takes ends the call DEADLINE_EXCEEDED,
    and the server counts it so instead of finishing it.

    (A 1 us deadline is no test here: gRPC keeps deadlines at millisecond resolution and the tiny
    recorded splits evaluate in under a millisecond, so such calls often succeed. A fixed 50 ms one
    is no test either: on a busy machine the ~5 MB request may still be arriving when it is up, so
    gRPC drops the call before any handler runs.)
    """
    registry = CollectorRegistry()
    running = create_server(
        ServerConfig(artifacts=serving, host="127.0.0.1", port=0, model="two_tower"),
        metrics_registry=registry,
    )
    evaluate = {"method": "/towerserve.v1.Recommender/Evaluate"}

    def count(code: str) -> float:
        return registry.get_sample_value("towerserve_requests_total", {**evaluate, "code": code}) or 0.0

    try:
        running.load()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            request = pb.EvaluateRequest(
                interactions=[pb.Interaction(user_id=ctx.user, item_id=ctx.item)]
                * ctx.info.max_inline_interactions
            )
            # Two full calls (the first also grows the connection's flow-control window); the faster
            # one sets the deadline, so a warm, quick repeat cannot finish inside it on a busy machine.
            took = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                done = stub.Evaluate(request, timeout=120)
                took = min(took, time.perf_counter() - t0)
                assert done.seconds > took / 2, "the work, not the transfer, must take most of the call"
            with pytest.raises(grpc.RpcError) as err:
                stub.Evaluate(request, timeout=took / 3)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err.value.details()

            give_up = time.monotonic() + max(20.0, 10 * took)
            while count("DEADLINE_EXCEEDED") != 1.0:
                assert time.monotonic() < give_up, (
                    "the server never ended the Evaluate with DEADLINE_EXCEEDED"
                )
                time.sleep(0.05)
            assert count("OK") == 2.0  # the two full calls only

            assert stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_COLD), timeout=30).users > 0
    finally:
        running.stop(0)


def test_evaluate_checks_the_deadline_during_the_work(serving, ctx):
    """Evaluate asks ``check`` before it starts and again while it ranks, so a deadline that passes
    midway stops the work; here the second check raises, as the deadline would."""
    engine = Engine(serving, EngineConfig(model="two_tower"))
    calls = []

    def check() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise DeadlineExceeded("deadline exceeded (0 ms left)")

    with pytest.raises(DeadlineExceeded):
        evaluation.evaluate(engine, inline=[(ctx.user, ctx.item)], check=check)
    assert calls == [0, 1]
    calls.clear()
    metrics, users = evaluation.evaluate(engine, inline=[(ctx.user, ctx.item)], check=lambda: calls.append(0))
    assert users == 1 and len(calls) >= 2  # the same call, unchecked by a deadline, completes


@pytest.mark.parametrize(
    "left,need,raises",
    [(0.0, 0.0, True), (-0.5, 0.0, True), (0.05, 0.1, True), (5.0, 0.0, False), (None, 0.0, False)],
)
def test_check_deadline(left, need, raises):
    check = check_deadline(lambda: left, need)
    if not raises:
        check()
        return
    with pytest.raises(DeadlineExceeded) as err:
        check()
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    # It says how much time was left, in milliseconds, none when the deadline has passed.
    left_ms = str(round(max(left, 0.0) * 1000))
    assert missing(err.value.message, ("deadline", left_ms)) == [], err.value.message


# ---------------------------------------------------------------------------------- concurrency limit


def test_more_concurrent_rpcs_than_allowed_are_refused(serving):
    with running_server(serving, max_concurrent_rpcs=1, threads=4) as (_, channel):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        stub.Evaluate(pb.EvaluateRequest())  # warm: user vectors cached
        outcomes: list[tuple[grpc.StatusCode, str]] = []
        lock = threading.Lock()

        def one(barrier: threading.Barrier) -> None:
            barrier.wait()
            try:
                stub.Evaluate(pb.EvaluateRequest(), timeout=30)
                result = (grpc.StatusCode.OK, "")
            except grpc.RpcError as err:
                result = (err.code(), err.details())
            with lock:
                outcomes.append(result)

        for _ in range(5):  # 30 calls at once nearly always collide; a few rounds make it certain
            barrier = threading.Barrier(30)
            threads = [threading.Thread(target=one, args=(barrier,)) for _ in range(30)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if any(code == grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in outcomes):
                break

        codes = [code for code, _ in outcomes]
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, outcomes
        assert all("Concurrent RPC limit exceeded" in m for c, m in outcomes if c != grpc.StatusCode.OK)
        assert stub.Evaluate(pb.EvaluateRequest()).users > 0


# ------------------------------------------------------------------------------------------ INTERNAL


def test_unexpected_errors_are_internal_with_a_generic_message(caplog):
    """Every RPC goes through servicer.rpc; an unplanned exception there must become INTERNAL with the
    generic message, the details going to the log only. Loading now refuses every inconsistent artifact
    we can build, so the fault here is a handler of the test's own, served by a real grpc.aio server."""
    import asyncio

    from towerserve.server.api.servicer import rpc

    class Faulty:
        @rpc
        async def Recommend(self, request, context):
            raise RuntimeError("secret detail at /srv/internal/path")

    async def call() -> grpc.aio.AioRpcError:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "towerserve.v1.Recommender",
                    {
                        "Recommend": grpc.unary_unary_rpc_method_handler(
                            Faulty().Recommend,
                            request_deserializer=pb.RecommendRequest.FromString,
                            response_serializer=pb.RecommendResponse.SerializeToString,
                        )
                    },
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                try:
                    await stub.Recommend(pb.RecommendRequest(user_id="u", top_n=1))
                except grpc.aio.AioRpcError as err:
                    return err
                raise AssertionError("the faulty handler answered OK")
        finally:
            await server.stop(0)

    caplog.set_level(logging.ERROR, logger="towerserve")
    err = asyncio.run(call())
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == GENERIC_INTERNAL
    leaks = ("secret detail", "/srv/internal/path", "RuntimeError", "Traceback")
    assert [s for s in leaks if s in err.details()] == []
    assert all(s in caplog.text for s in leaks)  # the details went to the log


def test_the_largest_allowed_price_gives_finite_scores_and_is_not_filtered_out(serving, ctx):
    """Prices above the limit are refused (the "upsert-price-1e300" case); the limit itself must
    still scale to finite features, so the item ranks and scores like any other."""
    biggest = float(MAX_PRICE)
    with running_server(serving, model="two_tower") as (_, channel):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        done = stub.UpsertItems(
            pb.UpsertItemsRequest(items=[ctx.new_item(item_id="pricey", price=biggest, category="yacht")])
        )
        assert done.inserted == 1
        got = stub.Recommend(pb.RecommendRequest(user_id=ctx.user, top_n=5, categories=["yacht"]))
        assert [(it.item_id, it.category, it.price) for it in got.items] == [("pricey", "yacht", biggest)]
        assert 0.0 <= got.items[0].score <= 1.0
        pair = pb.ScorePair(user_id=ctx.user, item_id="pricey")
        assert stub.Score(pb.ScoreRequest(pairs=[pair])).scores[0] == pytest.approx(
            got.items[0].score, abs=1e-5
        )


_TWO_SERVERS = textwrap.dedent("""
    import sys
    from pathlib import Path
    from towerserve.server.api.app import ServerConfig, create_server
    servers = [create_server(ServerConfig(artifacts=Path(sys.argv[1]), host="127.0.0.1", port=0)) for _ in range(2)]
    for s in servers:
        s.stop(0)
    print("two servers")
""")


def test_two_servers_in_one_process_with_default_metrics(serving):
    # A subprocess, so the global registry of this test process stays clean.
    done = subprocess.run(
        [sys.executable, "-c", _TWO_SERVERS, str(serving)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "two servers" in done.stdout, done.stderr[-2000:]
