"""Every row of server.errors.ERROR_TABLE, triggered for real over gRPC: status code and message."""

from __future__ import annotations

import csv
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
import pipeline
import pytest
from pipeline import server_and_channel as running_server
from prometheus_client import CollectorRegistry

from towerserve.server.app import ServerConfig, create_server
from towerserve.server.deadline import check_deadline
from towerserve.server.errors import ERROR_TABLE, GENERIC_INTERNAL, DeadlineExceeded
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
    "deadline too short for the work": "test_a_deadline_too_short_for_evaluate",
    "Reload of a bad artifacts folder": "test_server_ops.py::test_hot_reload_under_load_then_a_bad_folder_is_refused",
    "anything unexpected": "test_unexpected_errors_are_internal_with_a_generic_message",
}


@pytest.fixture(scope="module")
def serving(tmp_path_factory) -> Path:
    return pipeline.build_all(tmp_path_factory.getbasetemp())["serving"]


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
def ctx(loaded, serving) -> Ctx:
    info = recommender_pb2_grpc.RecommenderStub(loaded[1]).GetModelInfo(pb.GetModelInfoRequest())
    with open(serving / "catalog" / "users.csv", newline="") as fh:
        user = next(csv.DictReader(fh))["user_id"]
    with open(serving / "catalog" / "items.csv", newline="") as fh:
        item = next(csv.DictReader(fh))["item_id"]
    return Ctx(info, user, item)


@dataclass(frozen=True)
class Case:
    id: str
    row: str  # ERROR_TABLE condition prefix
    method: str  # "Service/Method"
    build: Callable[[Ctx], object]  # a request message, or raw bytes sent as they are
    code: grpc.StatusCode
    message: Callable[[Ctx], str] | str  # a substring the status details must contain
    server: str = "loaded"


def _rec(**kw) -> Callable[[Ctx], pb.RecommendRequest]:
    return lambda c: pb.RecommendRequest(user_id=c.user, top_n=5, **kw)


def _cold(top_n=5, **attrs) -> Callable[[Ctx], pb.RecommendRequest]:
    return lambda c: pb.RecommendRequest(user=c.attrs(**attrs), top_n=top_n)


REC, SCORE, EVAL = "Recommender/Recommend", "Recommender/Score", "Recommender/Evaluate"
UPSERT = "Recommender/UpsertItems"
LONG_TEXT, SHORT_TEXT = 5000, 200

CASES = [
    # NOT_FOUND
    Case(
        "unknown-user",
        UNKNOWN,
        REC,
        lambda c: pb.RecommendRequest(user_id="nobody_0000", top_n=5),
        NOT_FOUND,
        "unknown user_id 'nobody_0000'",
    ),
    Case(
        "unknown-user-in-score",
        UNKNOWN,
        SCORE,
        lambda c: pb.ScoreRequest(pairs=[pb.ScorePair(user_id="nobody_0000", item_id=c.item)]),
        NOT_FOUND,
        "unknown user_id 'nobody_0000'",
    ),
    Case(
        "unknown-item-in-score",
        UNKNOWN,
        SCORE,
        lambda c: pb.ScoreRequest(
            pairs=[
                pb.ScorePair(user_id=c.user, item_id=c.item),
                pb.ScorePair(user_id=c.user, item_id="no_such_item"),
            ]
        ),
        NOT_FOUND,
        "unknown item_id 'no_such_item' (pair 1)",
    ),
    Case(
        "unknown-item-inline",
        UNKNOWN,
        EVAL,
        lambda c: pb.EvaluateRequest(interactions=[pb.Interaction(user_id=c.user, item_id="no_such_item")]),
        NOT_FOUND,
        "unknown item_id 'no_such_item' (interaction 0)",
    ),
    # top_n
    Case(
        "top-n-0",
        TOP_N,
        REC,
        lambda c: pb.RecommendRequest(user_id=c.user, top_n=0),
        INVALID,
        lambda c: f"top_n must be in [1, {c.info.max_top_n}] (got 0)",
    ),
    Case(
        "top-n-negative",
        TOP_N,
        REC,
        lambda c: pb.RecommendRequest(user_id=c.user, top_n=-3),
        INVALID,
        "(got -3)",
    ),
    Case(
        "top-n-max-plus-1",
        TOP_N,
        REC,
        lambda c: pb.RecommendRequest(user_id=c.user, top_n=c.info.max_top_n + 1),
        INVALID,
        lambda c: f"top_n must be in [1, {c.info.max_top_n}] (got {c.info.max_top_n + 1})",
    ),
    # batches
    Case(
        "score-empty",
        BATCH,
        SCORE,
        lambda c: pb.ScoreRequest(),
        INVALID,
        lambda c: f"pairs must hold 1..{c.info.max_score_pairs} pairs (got 0)",
    ),
    Case(
        "score-oversized",
        BATCH,
        SCORE,
        lambda c: pb.ScoreRequest(
            pairs=[pb.ScorePair(user_id=c.user, item_id=c.item)] * (c.info.max_score_pairs + 1)
        ),
        INVALID,
        lambda c: f"(got {c.info.max_score_pairs + 1})",
    ),
    Case(
        "upsert-empty",
        BATCH,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(),
        INVALID,
        lambda c: f"items must hold 1..{c.info.max_upsert_items} items (got 0)",
    ),
    Case(
        "upsert-oversized",
        BATCH,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(
            items=[c.new_item(item_id=f"x{j}") for j in range(c.info.max_upsert_items + 1)]
        ),
        INVALID,
        lambda c: f"items must hold 1..{c.info.max_upsert_items} items (got {c.info.max_upsert_items + 1})",
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
        lambda c: f"interactions must hold 1..{c.info.max_inline_interactions} pairs",
    ),
    # who
    Case(
        "neither-user",
        NEITHER,
        REC,
        lambda c: pb.RecommendRequest(top_n=5),
        INVALID,
        "give either user_id or user attributes",
    ),
    Case(
        "neither-user-in-score",
        NEITHER,
        SCORE,
        lambda c: pb.ScoreRequest(pairs=[pb.ScorePair(item_id=c.item)]),
        INVALID,
        "give either user_id or user attributes",
    ),
    # numbers
    Case("age-nan", NUMBERS, REC, _cold(age=float("nan")), INVALID, "user.age must be in (0, 150] (got nan)"),
    Case("age-inf", NUMBERS, REC, _cold(age=float("inf")), INVALID, "user.age must be in (0, 150] (got inf)"),
    Case("age-0", NUMBERS, REC, _cold(age=0.0), INVALID, "user.age must be in (0, 150] (got 0.0)"),
    Case("age-negative", NUMBERS, REC, _cold(age=-1.0), INVALID, "(got -1.0)"),
    Case("age-151", NUMBERS, REC, _cold(age=151.0), INVALID, "user.age must be in (0, 150] (got 151.0)"),
    Case(
        "age-nan-in-score",
        NUMBERS,
        SCORE,
        lambda c: pb.ScoreRequest(pairs=[pb.ScorePair(user=c.attrs(age=float("nan")), item_id=c.item)]),
        INVALID,
        "user.age must be in (0, 150]",
    ),
    Case(
        "price-range-inverted",
        NUMBERS,
        REC,
        _rec(price_range=pb.PriceRange(min=500.0, max=100.0)),
        INVALID,
        "price_range.min 500.0 is above price_range.max 100.0",
    ),
    Case(
        "price-range-nan",
        NUMBERS,
        REC,
        _rec(price_range=pb.PriceRange(max=float("nan"))),
        INVALID,
        "price_range.max must be a finite number (got nan)",
    ),
    Case(
        "upsert-price-nan",
        NUMBERS,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(items=[c.new_item(price=float("nan"))]),
        INVALID,
        "items[0].price must be in [0, 1e+09] (got nan)",
    ),
    Case(
        "upsert-price-negative",
        NUMBERS,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(items=[c.new_item(price=-1.0)]),
        INVALID,
        "items[0].price must be in [0, 1e+09] (got -1.0)",
    ),
    # texts
    Case(
        "empty-user-id",
        TEXT,
        REC,
        lambda c: pb.RecommendRequest(user_id="", top_n=5),
        INVALID,
        "user_id must not be empty",
    ),
    Case("empty-profession", TEXT, REC, _cold(profession=""), INVALID, "user.profession must not be empty"),
    Case(
        "blank-profession", TEXT, REC, _cold(profession="   "), INVALID, "user.profession must not be empty"
    ),
    Case(
        "profession-201",
        TEXT,
        REC,
        _cold(profession="p" * (SHORT_TEXT + 1)),
        INVALID,
        "user.profession is 201 characters; the limit is 200",
    ),
    Case(
        "personality-201",
        TEXT,
        REC,
        _cold(personality="p" * (SHORT_TEXT + 1)),
        INVALID,
        "user.personality is 201 characters; the limit is 200",
    ),
    Case(
        "score-empty-item-id",
        TEXT,
        SCORE,
        lambda c: pb.ScoreRequest(pairs=[pb.ScorePair(user_id=c.user)]),
        INVALID,
        "pairs[0].item_id must not be empty",
    ),
    Case(
        "description-5001",
        TEXT,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(items=[c.new_item(description="d" * (LONG_TEXT + 1))]),
        INVALID,
        "items[0].description is 5001 characters; the limit is 5000",
    ),
    Case(
        "features-empty",
        TEXT,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(items=[c.new_item(features="")]),
        INVALID,
        "items[0].features must not be empty",
    ),
    Case(
        "item-id-201",
        TEXT,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(items=[c.new_item(item_id="i" * 201)]),
        INVALID,
        "items[0].item_id is 201 characters; the limit is 200",
    ),
    Case(
        "category-empty",
        TEXT,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(items=[c.new_item(), c.new_item(item_id="item_y", category="")]),
        INVALID,
        "items[1].category must not be empty",
    ),
    # required attribute
    Case(
        "missing-personality",
        MISSING,
        REC,
        lambda c: pb.RecommendRequest(user=pb.UserAttributes(age=30.0, profession="science"), top_n=5),
        INVALID,
        "user.personality is required",
    ),
    # ks and duplicates
    Case(
        "ks-0", KS, EVAL, lambda c: pb.EvaluateRequest(ks=[0]), INVALID, "ks must be in [1, 1000] (got [0])"
    ),
    Case(
        "ks-1001",
        KS,
        EVAL,
        lambda c: pb.EvaluateRequest(ks=[10, 1001]),
        INVALID,
        "ks must be in [1, 1000] (got [1001])",
    ),
    Case(
        "upsert-duplicate-ids",
        KS,
        UPSERT,
        lambda c: pb.UpsertItemsRequest(items=[c.new_item(item_id="dup"), c.new_item(item_id="dup")]),
        INVALID,
        "items[1].item_id 'dup' appears twice in the request",
    ),
    # bytes: field 1 (user_id) holding invalid UTF-8, then top_n=5
    Case(
        "invalid-utf8",
        BYTES,
        REC,
        lambda c: b"\x0a\x03\xff\xfe\xfd\x18\x05",
        INVALID,
        "request is not a valid towerserve.v1.RecommendRequest",
    ),
    # server state
    Case(
        "not-loaded",
        UNLOADED,
        REC,
        lambda c: pb.RecommendRequest(user_id=c.user, top_n=5),
        grpc.StatusCode.UNAVAILABLE,
        "the model is loading",
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
    expected = case.message(ctx) if callable(case.message) else case.message
    assert (err.value.code(), expected in err.value.details()) == (case.code, True), err.value.details()
    assert case.code == _row(case.row)[1]


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
    """The biggest inline Evaluate takes the server ~0.3 s; a 50 ms deadline must stop it.

    (A 1 us deadline is no test here: gRPC keeps deadlines at millisecond resolution and the tiny
    recorded splits evaluate in under a millisecond, so such calls often succeed.)
    """
    registry = CollectorRegistry()
    running = create_server(
        ServerConfig(artifacts=serving, host="127.0.0.1", port=0, model="two_tower"),
        metrics_registry=registry,
    )
    try:
        running.load()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            pairs = [pb.Interaction(user_id=ctx.user, item_id=ctx.item)] * ctx.info.max_inline_interactions
            with pytest.raises(grpc.RpcError) as err:
                stub.Evaluate(pb.EvaluateRequest(interactions=pairs), timeout=0.05)
            # gRPC's own deadline or the server's check inside Evaluate: both are DEADLINE_EXCEEDED.
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "deadline" in err.value.details().lower()

            # The server gave up too (its check raised) instead of finishing work nobody waits for.
            labels = {"method": "/towerserve.v1.Recommender/Evaluate", "code": "DEADLINE_EXCEEDED"}
            deadline = time.monotonic() + 20
            while registry.get_sample_value("towerserve_requests_total", labels) != 1.0:
                assert time.monotonic() < deadline, (
                    "the server never ended the Evaluate with DEADLINE_EXCEEDED"
                )
                time.sleep(0.05)
            assert registry.get_sample_value("towerserve_requests_total", {**labels, "code": "OK"}) is None

            assert stub.Evaluate(pb.EvaluateRequest(split=pb.SPLIT_COLD), timeout=30).users > 0
    finally:
        running.stop(0)


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
    assert err.value.message == f"deadline exceeded ({max(left, 0.0) * 1000:.0f} ms left)"


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


def test_generic_internal_message_carries_no_details():
    assert GENERIC_INTERNAL == "internal error; the server logged the details"
    assert not any(s in GENERIC_INTERNAL for s in ("{", "%", "Traceback", "Error", "/"))


def test_unexpected_errors_are_internal_with_a_generic_message(caplog):
    """Every RPC goes through servicer.rpc; an unplanned exception there must become INTERNAL with the
    generic message, the details going to the log only. Loading now refuses every inconsistent artifact
    we can build, so the fault here is a handler of the test's own, served by a real grpc.aio server."""
    import asyncio

    from towerserve.server.servicer import rpc

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
    assert "secret detail" not in err.details()
    assert "secret detail" in caplog.text and "Traceback" in caplog.text  # the details went to the log


def test_an_oversized_user_id_gets_a_domain_error(loaded):
    stub = recommender_pb2_grpc.RecommenderStub(loaded[1])
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(pb.RecommendRequest(user_id="u" * 20_000, top_n=5))
    assert err.value.code() in (NOT_FOUND, INVALID), err.value.details()
    assert len(err.value.details()) < 1000


@pytest.mark.filterwarnings(
    "ignore::RuntimeWarning"
)  # numpy's overflow warnings are the symptom, not the test
def test_a_huge_price_never_yields_nan_scores_or_filtered_out_items(serving, ctx):
    with running_server(serving, model="two_tower") as (_, channel):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        try:
            stub.UpsertItems(
                pb.UpsertItemsRequest(items=[ctx.new_item(item_id="pricey", price=1e300, category="yacht")])
            )
        except grpc.RpcError as err:  # refusing it is a fine fix
            assert err.code() == INVALID and "price" in err.details()
            return
        got = stub.Recommend(pb.RecommendRequest(user_id=ctx.user, top_n=5, categories=["yacht"]))
        assert [(it.item_id, it.category) for it in got.items] == [("pricey", "yacht")]
        assert 0.0 <= got.items[0].score <= 1.0
        score = stub.Score(pb.ScoreRequest(pairs=[pb.ScorePair(user_id=ctx.user, item_id="pricey")])).scores[
            0
        ]
        assert 0.0 <= score <= 1.0


_TWO_SERVERS = textwrap.dedent("""
    import sys
    from pathlib import Path
    from towerserve.server.app import ServerConfig, create_server
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


def test_readme_error_table_is_the_code_table():
    from towerserve.server.errors import error_table_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert error_table_markdown() in readme, (
        "README's Errors table differs from server/errors.py: ERROR_TABLE"
    )
