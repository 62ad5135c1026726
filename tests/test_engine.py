"""Engine internals the RPC tests cannot see: candidate lists equal the exact path; spliced bytes equal protobuf."""

from __future__ import annotations

import random

import numpy as np
import pytest

from towerserve.server.core.types import NewItemData
from towerserve.server.core.wire import item_wire, recommend_wire
from towerserve.server.engine.engine import Engine, EngineConfig
from towerserve.v1 import recommender_pb2 as pb


def _random_requests(engine: Engine, n: int, seed: int):
    rng = random.Random(seed)
    cats, ids = engine.catalog.categories, engine.catalog.ids
    for _ in range(n):
        kw = {}
        if rng.random() < 0.3:
            kw["price_min"] = rng.choice([None, 50.0, 150.0])
            kw["price_max"] = rng.choice([None, 400.0, 900.0])
        if rng.random() < 0.3:
            kw["categories"] = rng.sample(cats, 2)
        if rng.random() < 0.3:
            kw["exclude_item_ids"] = rng.sample(ids, 4)
        if rng.random() < 0.1:
            kw["exclude_seen"] = False
        yield rng.choice(engine.user_ids), rng.choice([1, 3, 10, 20, 40]), kw


@pytest.mark.parametrize("model", ["two_tower", "seed"])
def test_candidate_lists_answer_exactly_like_the_exact_path(serving, model):
    # candidates=4 makes the lists run out often, so the fall-back is exercised as well as the walk.
    fast = Engine(serving, EngineConfig(model=model, candidates=4))
    exact = Engine(serving, EngineConfig(model=model, candidates=0))
    assert fast.catalog.cand_rows is not None and exact.catalog.cand_rows is None
    for user, top_n, kw in _random_requests(fast, 400, seed=1):
        _, rows_f, probs_f = fast.recommend(user, top_n, **kw)
        _, rows_e, probs_e = exact.recommend(user, top_n, **kw)
        assert rows_f == rows_e, (user, top_n, kw)
        assert probs_f == probs_e, (user, top_n, kw)  # bit-identical: both sum in float64


def test_candidate_lists_hold_each_users_best_unseen_items(serving):
    engine = Engine(serving, EngineConfig(model="two_tower", candidates=6))
    users = engine.known_user_vectors()
    for u in (0, 7, len(engine.user_ids) - 1):
        scores = engine.catalog.vectors.astype(np.float64) @ users[u].astype(np.float64)
        seen = set(engine.seen.row(u).tolist())
        unseen = [j for j in np.argsort(-scores, kind="stable") if j not in seen]
        assert engine.catalog.cand_rows[u].tolist() == unseen[:6]


def test_upserted_items_enter_the_candidate_lists(serving):
    engine = Engine(serving, EngineConfig(model="two_tower", candidates=8))
    exact = Engine(serving, EngineConfig(model="two_tower", candidates=0))
    user = engine.user_ids[0]
    _, rows, _ = engine.recommend(user, 1)
    best = engine.catalog
    # A copy of the user's favourite item under a new id must rank right beside it.
    j = rows[0]
    twin = NewItemData("twin", best.description[j], best.features[j], float(best.price[j]), best.category[j])
    for e in (engine, exact):
        assert e.upsert_items([twin]) == (1, 0, len(best) + 1)
    _, rows_f, probs_f = engine.recommend(user, 3)
    _, rows_e, probs_e = exact.recommend(user, 3)
    assert (rows_f, probs_f) == (rows_e, probs_e)
    assert engine.catalog.row("twin") in rows_f


def test_spliced_recommend_bytes_equal_protobuf(serving):
    engine = Engine(serving, EngineConfig(model="two_tower"))
    cat, rows, scores = engine.recommend(engine.user_ids[3], 10)
    # Edge cases proto3 handles specially: a zero score and a zero price are omitted on the wire.
    scores = [0.0] + scores[1:]
    got = recommend_wire(cat.wire, rows, scores, engine.model_version)
    want = pb.RecommendResponse(
        model_version=engine.model_version,
        items=[
            pb.Item(
                item_id=cat.ids[j],
                score=s,
                price=cat.price[j],
                description=cat.description[j],
                features=cat.features[j],
                category=cat.category[j],
            )
            for j, s in zip(rows, scores)
        ],
    )
    assert got == want.SerializeToString()
    head, tail = item_wire("x", 0.0, "d", "f", "c")
    assert pb.Item.FromString(head + tail) == pb.Item(
        item_id="x", description="d", features="f", category="c"
    )
    assert recommend_wire(cat.wire, [], [], "") == b""


def test_spliced_recommend_bytes_carry_history_used(serving):
    # RecommendResponse.history_used (field 3, a varint after model_version): absent at 0, one byte
    # below 128, two from 128 on; byte-identical to protobuf either way.
    engine = Engine(serving, EngineConfig(model="two_tower"))
    cat, rows, scores = engine.recommend(engine.user_ids[5], 4)
    items = [
        pb.Item(
            item_id=cat.ids[j],
            score=s,
            price=cat.price[j],
            description=cat.description[j],
            features=cat.features[j],
            category=cat.category[j],
        )
        for j, s in zip(rows, scores)
    ]
    for used in (0, 1, 127, 128, 300):
        want = pb.RecommendResponse(items=items, model_version=engine.model_version, history_used=used)
        assert recommend_wire(cat.wire, rows, scores, engine.model_version, used) == want.SerializeToString()
        assert (
            recommend_wire(cat.wire, [], [], "", used)
            == pb.RecommendResponse(history_used=used).SerializeToString()
        )


def test_twins_at_the_cut_are_broken_by_catalogue_row_on_every_path(serving):
    # Many copies of a user's favourite item share one score; a top_n that cuts through them must
    # keep the lowest catalogue rows, whichever path answers (candidate list or exact).
    paths = [Engine(serving, EngineConfig(model="two_tower", candidates=m)) for m in (64, 0)]
    user = paths[0].user_ids[3]
    cat = paths[0].catalog
    j = paths[0].recommend(user, 1)[1][0]
    twins = [
        NewItemData(
            f"twin_{t:02d}", cat.description[j], cat.features[j], float(cat.price[j]), cat.category[j]
        )
        for t in range(12)
    ]
    answers = []
    for e in paths:
        e.upsert_items(twins[::-1])  # appended in reverse: row order differs from id order
        _, rows, probs = e.recommend(user, 5)
        assert len(set(probs[1:])) == 1  # the original and its copies tie
        answers.append((rows, probs))
    assert answers[0] == answers[1]
    rows = answers[0][0]
    assert rows == sorted(rows)  # ties by row: the original first, then the lowest rows of its copies
