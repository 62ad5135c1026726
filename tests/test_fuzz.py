"""Fuzzing every RPC of a real server: each case gets the status its contract documents.

Every case is tagged by construction (tests/fuzzing.py): a valid request must answer OK (and keep
the API's promises), an invalid one the code docs/api.md gives for its defect, and none, however
odd, INTERNAL, UNKNOWN, UNAVAILABLE or DEADLINE_EXCEEDED. benchmarks/fuzz.py runs the same
strategies 10,000+ times. Here a few hundred cases per model run derandomized (the same cases on
every run, so CI is reproducible) against servers with a catalogue journal (--state-dir), so
upserts, deletes and recorded interactions go through it too; the tally of (rpc, expected, got) is
printed (shown with -s).
"""

from __future__ import annotations

import contextlib

import fuzzing
import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline import server_and_channel

from towerserve.server.core.rpcs import RPCS
from towerserve.v1 import recommender_pb2 as pb

CASES = 520
HISTORY_CASES = 150
HISTORY_DEFECT_CASES = 40


def _settings(n: int) -> settings:
    # derandomize: the same cases every run (no example database either), so a red CI run replays.
    # deadline=None: a call may wait behind a reload or a 10,000-pair batch on a loaded machine.
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def _fuzz(channel: grpc.Channel, strategy: st.SearchStrategy, n: int) -> fuzzing.Tally:
    """Runs ``n`` cases of ``strategy``; fails on the first that breaks the contract (shrunk)."""
    call, tally = fuzzing.Caller(channel), fuzzing.Tally()

    @_settings(n)
    @given(case=strategy)
    def one(case: fuzzing.Case) -> None:
        why = tally.record(case, *call(case))
        assert why is None, f"{why}\n  request: {case.describe()}"

    try:
        one()
    finally:  # shown with -s, or beside a failure: (rpc, expected -> got) counts
        print("\n".join(tally.lines()))
    return tally


@contextlib.contextmanager
def _fuzzed_server(serving, tmp_path):
    """A server with a journal and a careful client's channel to it (fuzzing.CHANNEL_OPTIONS)."""
    with (
        server_and_channel(serving, state_dir=tmp_path / "state") as (running, _),
        grpc.insecure_channel(f"127.0.0.1:{running.port}", options=fuzzing.CHANNEL_OPTIONS) as channel,
    ):
        yield channel


def _both_ways(tally: fuzzing.Tally, rpcs) -> None:
    """Each RPC answered a valid case OK and an invalid one with its documented code: the cases
    reached past the checks, and the checks themselves were exercised."""
    for rpc in rpcs:
        assert tally.valid_ok(rpc) > 0, (rpc, "no valid case answered OK", tally.lines())
        refused = tally.refused_as_documented(rpc)
        assert refused > 0, (rpc, "no invalid case refused as documented", tally.lines())


def test_every_request_gets_its_documented_code(serving, tmp_path):
    with _fuzzed_server(serving, tmp_path) as channel:
        world = fuzzing.world(channel, serving, tmp_path / "no-such-folder")
        tally = _fuzz(channel, fuzzing.cases(world), CASES)
        assert tally.total >= 500, tally.lines()
        rpcs = ("Recommend", "Score", "Evaluate", "GetModelInfo", "UpsertItems", "DeleteItems")
        _both_ways(tally, (*rpcs, "RecordInteractions", "Reload", fuzzing.HEALTH))
        assert any(rpc.startswith("garbage:") for rpc, _ in tally.codes), tally.lines()
        assert fuzzing.health_status(channel) == "SERVING"


def test_histories_on_a_model_that_reads_them(hybrid, tmp_path):
    """The hybrid reads request histories (max_history > 0): odd ones for known and unseen users."""
    with _fuzzed_server(hybrid, tmp_path) as channel:
        world = fuzzing.world(channel, hybrid, tmp_path / "no-such-folder")
        assert world.limits["max_history"] > 0
        tally = _fuzz(channel, st.one_of(fuzzing.recommend(world), fuzzing.score(world)), HISTORY_CASES)
        _both_ways(tally, ("Recommend", "Score"))
        # Every history defect, drawn on purpose: in the mixed run above each is one of ~20 per RPC,
        # and which ones 150 cases reach depends on the world the model's split gives.
        only = st.one_of(fuzzing.recommend(world, only="history:"), fuzzing.score(world, only="history:"))
        focused = _fuzz(channel, only, HISTORY_DEFECT_CASES)
        drawn = {(rpc, d) for rpc, d in focused.defects}
        for rpc in ("Recommend", "Score"):
            assert (rpc, "history: over max_history ids") in drawn, focused.lines()
        assert fuzzing.health_status(channel) == "SERVING"


@pytest.fixture(scope="module")
def plain(serving):
    """A channel to one server (no journal) for the fixed cases below."""
    with server_and_channel(serving) as (_, channel):
        yield channel


def test_a_request_over_the_message_limit_is_resource_exhausted(plain):
    """17 MB against the 16 MB limit: refused by gRPC itself, and the server carries on."""
    big = pb.RecommendRequest(user_id="x" * (17 * 1024 * 1024), top_n=1)
    code, details, _ = fuzzing.Caller(plain)(fuzzing.Case("Recommend", RPCS["Recommend"].path, big))
    assert code == "RESOURCE_EXHAUSTED", (code, details)
    assert fuzzing.health_status(plain) == "SERVING"


def test_bytes_that_no_message_parses_are_invalid_argument_on_every_path(plain):
    """Every method, health Check included, answers INVALID_ARGUMENT (never UNKNOWN, as gRPC's own
    deserializer failure would be); a path nobody serves is UNIMPLEMENTED."""
    served = {r.path for r in RPCS.values()} | {fuzzing.HEALTH_CHECK}
    call = fuzzing.Caller(plain)
    got = {
        (path, data): call(fuzzing.Case("garbage", path, data))[0]
        for path in fuzzing.PATHS
        for data in fuzzing.UNPARSEABLE
    }
    want = {(p, d): "INVALID_ARGUMENT" if p in served else "UNIMPLEMENTED" for p, d in got}
    assert got == want
    assert fuzzing.health_status(plain) == "SERVING"


# What a request sends is quoted back in refusals: 4-byte characters are the worst case (12 wire bytes).
WIDE = "😍" * 807


@pytest.mark.parametrize(
    "rpc, request_",
    [
        ("Recommend", pb.RecommendRequest(user_id="😍" * 200, top_n=1)),
        ("Recommend", pb.RecommendRequest(user=pb.UserAttributes(age=30, profession=WIDE), top_n=1)),
        ("Score", pb.ScoreRequest(pairs=[pb.ScorePair(user_id="😍" * 200, item_id="😍" * 200)])),
        ("UpsertItems", pb.UpsertItemsRequest(items=[pb.NewItem(item_id=WIDE, description=WIDE)])),
        ("DeleteItems", pb.DeleteItemsRequest(item_ids=[WIDE])),
        ("Reload", pb.ReloadRequest(artifacts="/no/such/folder/" + WIDE)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_refusal_quoting_wide_unicode_fits_the_clients_metadata_limit(plain, rpc, request_):
    """A status message travels percent-encoded in a header, and gRPC clients drop headers over 8 kB
    (randomly between that soft limit and the 16 kB hard one): the refusal must stay under it, or the
    client gets RESOURCE_EXHAUSTED instead of the reason."""
    code, details, _ = fuzzing.Caller(plain)(fuzzing.Case(rpc, RPCS[rpc].path, request_))
    assert code not in ("OK", "RESOURCE_EXHAUSTED") and code not in fuzzing.BAD_CODES, (code, details)
    assert fuzzing.wire_size(details) <= fuzzing.MAX_DETAILS_BYTES, (code, fuzzing.wire_size(details))
