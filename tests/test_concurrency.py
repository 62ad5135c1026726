"""Concurrent requests that need the text encoder, over a real server: none may fail.

The Rust tokenizer is not re-entrant: reconfiguring a shared one per call (as the encoder once did
with ``enable_truncation``) made concurrent callers fail with ``RuntimeError: Already borrowed``,
which the server reports as INTERNAL. These tests hit the encoder from many threads at once with
texts no cache has seen, so every call really tokenizes.
"""

from __future__ import annotations

import threading
from collections import Counter

import grpc
from pipeline import server_and_channel

from towerserve.v1 import recommender_pb2 as pb

CALLERS = 32
CALLS_PER_CALLER = 6
# Lengths vary so that several truncation lengths and batch widths are in play at once.
_WORDS = [
    "engineer",
    "data",
    "farming",
    "teaching",
    "music",
    "nursing",
    "law",
    "design",
    "retail",
    "finance",
    "medicine",
]


def _text(caller: int, call: int, kind: str) -> str:
    """A text unique to (caller, call): no table row and no cache entry can answer it."""
    words = [_WORDS[(caller + k) % len(_WORDS)] for k in range(1 + (caller * 7 + call) % 9)]
    return f"{kind} {caller}-{call} " + " ".join(words)


def _hammer(channel: grpc.Channel, call) -> Counter:
    """Runs ``call(stub, caller, j)`` CALLS_PER_CALLER times on each of CALLERS threads, all released
    together; returns status code name -> count."""
    stub_recommend = channel.unary_unary(
        "/towerserve.v1.Recommender/Recommend",
        request_serializer=pb.RecommendRequest.SerializeToString,
        response_deserializer=pb.RecommendResponse.FromString,
    )
    stub_upsert = channel.unary_unary(
        "/towerserve.v1.Recommender/UpsertItems",
        request_serializer=pb.UpsertItemsRequest.SerializeToString,
        response_deserializer=pb.UpsertItemsResponse.FromString,
    )
    stubs = {"Recommend": stub_recommend, "UpsertItems": stub_upsert}
    codes: Counter = Counter()
    lock = threading.Lock()
    start = threading.Barrier(CALLERS)

    def worker(caller: int) -> None:
        start.wait()
        for j in range(CALLS_PER_CALLER):
            try:
                call(stubs, caller, j)
                code = "OK"
            except grpc.RpcError as err:
                code = f"{err.code().name}: {err.details()}"
            with lock:
                codes[code] += 1

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(CALLERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return codes


def test_concurrent_unseen_users_and_upserts_never_fail(serving):
    with server_and_channel(serving, threads=CALLERS) as (_, channel):

        def call(stubs, caller: int, j: int) -> None:
            if caller % 2:
                # Upserts of new texts: the item tower's description/features/category encodings.
                item = pb.NewItem(
                    item_id=f"conc_{caller}_{j}",
                    description=_text(caller, j, "description"),
                    features=_text(caller, j, "features"),
                    price=10.0 + j,
                    category=f"category {caller}",
                )
                reply = stubs["UpsertItems"](pb.UpsertItemsRequest(items=[item]), timeout=120)
                assert reply.inserted == 1
            else:
                # Unseen users with professions (and personalities) nobody has had before.
                user = pb.UserAttributes(
                    age=20.0 + caller,
                    profession=_text(caller, j, "profession"),
                    personality=_text(caller, j, "personality"),
                )
                reply = stubs["Recommend"](pb.RecommendRequest(user=user, top_n=5), timeout=120)
                assert len(reply.items) == 5

        codes = _hammer(channel, call)
    assert codes == Counter({"OK": CALLERS * CALLS_PER_CALLER}), codes
