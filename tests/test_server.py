"""The gRPC server's happy paths, against a real server on port 0 serving a real tiny pipeline."""

from __future__ import annotations

import json
import math
import re
import threading

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pipeline import PERSONAL_SHARE, personal_share
from pipeline import server_and_channel as running_server

from towerserve.server.core.splits import load_recorded_split
from towerserve.v1 import recommender_pb2 as pb
from towerserve.v1 import recommender_pb2_grpc

# A profession no synthetic user has: its vector must come from the ONNX encoder, not the table.
UNSEEN_PROFESSION = "underwater basket weaving instructor"
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def two_tower(serving):
    """The personalised model; read-only for the tests that use it (upserts get their own server)."""
    with running_server(serving, model="two_tower") as (running, channel):
        yield running, recommender_pb2_grpc.RecommenderStub(channel)


@pytest.fixture(scope="module")
def stub(two_tower):
    return two_tower[1]


@pytest.fixture(scope="module")
def seed_stub(serving):
    with running_server(serving, model="seed") as (_, channel):
        yield recommender_pb2_grpc.RecommenderStub(channel)


@pytest.fixture(scope="module")
def seen_ids(serving, users, items):
    """user_id -> ids of every item the user interacted with (holdout train ∪ test)."""
    split = load_recorded_split(serving / "splits" / "holdout.npz")
    ids = list(items)  # items.csv order is the column order of the recorded split
    return {
        u["user_id"]: {ids[j] for j in np.concatenate([split.train.row(r), split.test.row(r)])}
        for r, u in enumerate(users)
    }


@pytest.fixture(scope="module")
def training_metrics(serving) -> dict:
    return json.loads((serving / "manifest.json").read_text())["training"]["metrics"]


def _ids(response) -> list[str]:
    return [it.item_id for it in response.items]


def _full_ranking(stub, **user) -> list[str]:
    """Every item for this user, best first, nothing excluded."""
    return _ids(stub.Recommend(pb.RecommendRequest(top_n=1000, exclude_seen=False, **user)))


def _attrs(row: dict[str, str]) -> pb.UserAttributes:
    return pb.UserAttributes(
        age=float(row["age"]), profession=row["profession"], personality=row["personality"]
    )


def _user_with_seen_items_on_top(stub, users, seen_ids, top_n=10) -> str:
    """A user with at least one seen item in the unfiltered top ``top_n`` (so exclusion is visible)."""
    for row in users:
        if set(_full_ranking(stub, user_id=row["user_id"])[:top_n]) & seen_ids[row["user_id"]]:
            return row["user_id"]
    raise AssertionError("no user has a seen item in the top 10; the fixture data changed")


# ---------------------------------------------------------------------------------------- Recommend


def test_recommend_known_user_ranks_unseen_catalogue_items(stub, users, items, seen_ids):
    user = _user_with_seen_items_on_top(stub, users, seen_ids)
    response = stub.Recommend(pb.RecommendRequest(user_id=user, top_n=10))

    assert len(response.items) == 10
    scores = [it.score for it in response.items]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 < s < 1.0 for s in scores)
    assert not set(_ids(response)) & seen_ids[user]
    # Excluding seen items drops them from the full ranking and keeps the order of the rest.
    expected = [i for i in _full_ranking(stub, user_id=user) if i not in seen_ids[user]][:10]
    assert _ids(response) == expected
    for it in response.items:
        row = items[it.item_id]
        assert (it.price, it.description, it.features, it.category) == (
            float(row["price"]),
            row["description"],
            row["features"],
            row["category"],
        )
    assert response.model_version == stub.GetModelInfo(pb.GetModelInfoRequest()).model_version


def test_exclude_seen_false_returns_seen_items(stub, users, seen_ids):
    user = _user_with_seen_items_on_top(stub, users, seen_ids)
    top = _ids(stub.Recommend(pb.RecommendRequest(user_id=user, top_n=10, exclude_seen=False)))
    assert set(top) & seen_ids[user]


@pytest.mark.parametrize(
    "bounds", [{"min": 100.0}, {"max": 300.0}, {"min": 50.0, "max": 700.0}], ids=["min", "max", "both"]
)
def test_price_range_filters_the_ranking(stub, users, items, bounds):
    user = users[0]["user_id"]
    lo, hi = bounds.get("min", -math.inf), bounds.get("max", math.inf)
    inside = [i for i in _full_ranking(stub, user_id=user) if lo <= float(items[i]["price"]) <= hi]
    assert 0 < len(inside) < len(items), "the bounds must cut the catalogue for this test to mean anything"

    response = stub.Recommend(
        pb.RecommendRequest(user_id=user, top_n=5, exclude_seen=False, price_range=pb.PriceRange(**bounds))
    )
    assert _ids(response) == inside[:5]
    assert all(lo <= it.price <= hi for it in response.items)


def test_price_range_bounds_are_inclusive(stub, users, items):
    price = float(next(iter(items.values()))["price"])
    same = {i for i, r in items.items() if float(r["price"]) == price}
    response = stub.Recommend(
        pb.RecommendRequest(
            user_id=users[0]["user_id"],
            top_n=1000,
            exclude_seen=False,
            price_range=pb.PriceRange(min=price, max=price),
        )
    )
    assert set(_ids(response)) == same


def test_categories_filter(stub, users, items):
    user = users[1]["user_id"]
    wanted = sorted({r["category"] for r in items.values()})[:2]
    response = stub.Recommend(
        pb.RecommendRequest(user_id=user, top_n=1000, exclude_seen=False, categories=wanted)
    )
    in_wanted = [i for i in _full_ranking(stub, user_id=user) if items[i]["category"] in wanted]
    assert _ids(response) == in_wanted
    assert {it.category for it in response.items} == set(wanted)


def test_unknown_category_leaves_nothing(stub, users):
    response = stub.Recommend(
        pb.RecommendRequest(user_id=users[1]["user_id"], top_n=5, categories=["no such"])
    )
    assert list(response.items) == []


def test_exclude_item_ids(stub, users):
    user = users[2]["user_id"]
    full = _full_ranking(stub, user_id=user)
    dropped = full[:3]
    response = stub.Recommend(
        pb.RecommendRequest(
            user_id=user, top_n=5, exclude_seen=False, exclude_item_ids=dropped + ["not_an_item"]
        )
    )
    assert _ids(response) == full[3:8]


def test_top_n_above_what_filters_leave_returns_fewer(stub, users, items):
    category = next(iter(items.values()))["category"]
    n_in_category = sum(r["category"] == category for r in items.values())
    response = stub.Recommend(
        pb.RecommendRequest(
            user_id=users[3]["user_id"], top_n=1000, exclude_seen=False, categories=[category]
        )
    )
    assert len(response.items) == n_in_category < 1000


# ---------------------------------------------------------------------------------------- cold start


def test_cold_start_with_a_profession_never_seen_in_training(stub, users):
    assert UNSEEN_PROFESSION not in {u["profession"] for u in users}
    attrs = pb.UserAttributes(age=33, profession=UNSEEN_PROFESSION, personality=users[0]["personality"])
    response = stub.Recommend(pb.RecommendRequest(user=attrs, top_n=8))

    assert len(response.items) == 8
    scores = [it.score for it in response.items]
    assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
    # The encoder produced a vector of its own: not the one of a profession the table knows.
    known = pb.UserAttributes(age=33, profession=users[0]["profession"], personality=users[0]["personality"])
    known_scores = stub.Score(
        pb.ScoreRequest(pairs=[pb.ScorePair(user=known, item_id=i) for i in _ids(response)])
    )
    assert not np.allclose(scores, known_scores.scores, atol=1e-6)


def test_cold_start_matches_a_known_user_with_the_same_attributes(stub, users):
    for row in users[:3]:
        by_id = stub.Recommend(pb.RecommendRequest(user_id=row["user_id"], top_n=1000, exclude_seen=False))
        by_attrs = stub.Recommend(pb.RecommendRequest(user=_attrs(row), top_n=1000))
        assert _ids(by_attrs) == _ids(by_id)
        np.testing.assert_allclose(
            [i.score for i in by_attrs.items], [i.score for i in by_id.items], atol=1e-5
        )


# ------------------------------------------------------------------------------------------ models


def test_seed_model_ranks_every_user_alike(seed_stub, users):
    info = seed_stub.GetModelInfo(pb.GetModelInfoRequest())
    assert (info.model_kind, info.user_independent_ranking) == ("seed", True)
    a, b = (
        users[0],
        next(u for u in users if u["profession"] != users[0]["profession"] and u["age"] != users[0]["age"]),
    )
    assert _full_ranking(seed_stub, user_id=a["user_id"]) == _full_ranking(seed_stub, user_id=b["user_id"])
    cold = _ids(
        seed_stub.Recommend(
            pb.RecommendRequest(user=pb.UserAttributes(age=70, profession=UNSEEN_PROFESSION), top_n=1000)
        )
    )
    assert cold == _full_ranking(seed_stub, user_id=a["user_id"])


def test_two_tower_personalises(stub, users):
    assert stub.GetModelInfo(pb.GetModelInfoRequest()).user_independent_ranking is False
    first: dict[tuple[str, str], dict[str, str]] = {}
    for u in users:
        first.setdefault((u["profession"], u["personality"]), u)
    lists = {g: tuple(_full_ranking(stub, user_id=u["user_id"])[:10]) for g, u in first.items()}
    assert len(lists) >= 5 and personal_share(lists) >= PERSONAL_SHARE, personal_share(lists)


# ------------------------------------------------------------------------------------------- Score


def test_score_matches_recommend_in_request_order(stub, users):
    row = users[4]
    top = stub.Recommend(pb.RecommendRequest(user_id=row["user_id"], top_n=6, exclude_seen=False))
    cold = stub.Recommend(
        pb.RecommendRequest(
            user=pb.UserAttributes(age=41, profession=UNSEEN_PROFESSION, personality="Traveler"), top_n=6
        )
    )
    by_id = [
        (pb.ScorePair(user_id=row["user_id"], item_id=it.item_id), it.score) for it in reversed(top.items)
    ]
    by_attrs = [
        (
            pb.ScorePair(
                user=pb.UserAttributes(age=41, profession=UNSEEN_PROFESSION, personality="Traveler"),
                item_id=it.item_id,
            ),
            it.score,
        )
        for it in cold.items
    ]
    pairs = by_id + by_attrs[::2] + by_id[:1] + by_attrs[1::2] + by_id[:1]  # interleaved, with duplicates
    response = stub.Score(pb.ScoreRequest(pairs=[p for p, _ in pairs]))

    assert len(response.scores) == len(pairs)
    np.testing.assert_allclose(response.scores, [s for _, s in pairs], atol=1e-5)
    assert response.model_version == top.model_version


# ---------------------------------------------------------------------------------------- Evaluate

TOPK = ("hitrate", "precision", "recall", "ndcg", "map", "coverage")


@pytest.mark.parametrize(
    "split,name", [(pb.SPLIT_UNSPECIFIED, "holdout"), (pb.SPLIT_HOLDOUT, "holdout"), (pb.SPLIT_COLD, "cold")]
)
def test_evaluate_full_matches_training_metrics(stub, training_metrics, split, name):
    response = stub.Evaluate(pb.EvaluateRequest(split=split))
    expected = training_metrics[name]["two_tower"]

    assert (response.split, response.protocol) == (name, "full")
    assert set(response.metrics) == {f"{m}@{k}" for m in TOPK for k in (5, 10, 20)} | {
        "mrr",
        "auc",
        "notebook_score",
    }
    assert response.users == int(expected["users"]) > 0
    for key, value in response.metrics.items():
        assert value == pytest.approx(expected[key], abs=1e-6), key
    assert response.seconds > 0


def test_evaluate_notebook_protocol(stub, training_metrics):
    response = stub.Evaluate(pb.EvaluateRequest(protocol=pb.PROTOCOL_NOTEBOOK))
    assert (response.split, response.protocol) == ("holdout", "notebook")
    assert dict(response.metrics) == {
        "notebook_score": pytest.approx(training_metrics["holdout"]["two_tower"]["notebook_score"], abs=1e-6)
    }
    assert response.users > 0


def test_evaluate_ks(stub):
    metrics = stub.Evaluate(pb.EvaluateRequest(ks=[3])).metrics
    assert set(metrics) == {f"{m}@3" for m in TOPK} | {"mrr", "auc", "notebook_score"}


def test_evaluate_inline_interaction_by_hand(stub, serving, users, items):
    """One held-out pair: its metrics follow from the item's rank among the user's candidates."""
    split = load_recorded_split(serving / "splits" / "holdout.npz")
    ids = list(items)
    u = next(r for r in range(len(users)) if len(split.test.row(r)))
    user, item = users[u]["user_id"], ids[split.test.row(u)[0]]
    trained = [ids[j] for j in split.train.row(u)]
    # Candidates are every item but the user's training positives (Evaluate masks them).
    ranking = stub.Recommend(
        pb.RecommendRequest(user_id=user, top_n=1000, exclude_seen=False, exclude_item_ids=trained)
    )
    rank = _ids(ranking).index(item) + 1
    score = ranking.items[rank - 1].score

    response = stub.Evaluate(
        pb.EvaluateRequest(ks=[1, 10], interactions=[pb.Interaction(user_id=user, item_id=item)])
    )
    m = response.metrics
    assert (response.split, response.users) == ("inline", 1)
    assert m["mrr"] == pytest.approx(1.0 / rank)
    assert m["hitrate@10"] == float(rank <= 10) and m["hitrate@1"] == float(rank == 1)
    assert m["recall@10"] == float(rank <= 10)
    assert m["ndcg@10"] == pytest.approx(1.0 / math.log2(rank + 1) if rank <= 10 else 0.0)
    assert m["auc"] == pytest.approx((len(ranking.items) - rank) / (len(ranking.items) - 1))
    assert m["notebook_score"] == pytest.approx(score, abs=1e-6)


def test_evaluate_inline_counts_users(stub, serving, users, items):
    split = load_recorded_split(serving / "splits" / "holdout.npz")
    ids = list(items)
    rows = [r for r in range(len(users)) if len(split.test.row(r))][:3]
    pairs = [
        pb.Interaction(user_id=users[r]["user_id"], item_id=ids[j]) for r in rows for j in split.test.row(r)
    ]
    response = stub.Evaluate(pb.EvaluateRequest(interactions=pairs))
    assert (response.split, response.users) == ("inline", 3)
    assert 0.0 <= response.metrics["ndcg@10"] <= 1.0


# ------------------------------------------------------------------------------------- GetModelInfo


def test_get_model_info(two_tower, serving, items, users, training_metrics):
    info = two_tower[1].GetModelInfo(pb.GetModelInfoRequest())
    manifest = json.loads((serving / "manifest.json").read_text())
    entry = manifest["models"]["two_tower"]

    assert (info.model_kind, info.model_version) == ("two_tower", entry["model_version"])
    assert list(info.providers) == ["CPUExecutionProvider"]
    assert (info.item_count, info.user_count) == (len(items), len(users))
    assert list(info.categories) == sorted({r["category"] for r in items.values()})
    assert info.vector_dim == entry["splits"]["holdout"]["user_tower"]["output_dim"]
    assert list(info.user_fields) == [f["name"] for f in entry["splits"]["holdout"]["features"]["user"]]
    assert "personality" in info.user_fields
    assert list(info.item_fields) == [f["name"] for f in entry["splits"]["holdout"]["features"]["item"]]
    assert info.encoder_variant == manifest["encoder"]["default_variant"] and info.encoder
    assert info.training_metrics["ndcg@10"] == training_metrics["holdout"]["two_tower"]["ndcg@10"]
    assert info.versions["export.onnxruntime"] == manifest["versions"]["onnxruntime"]
    assert info.artifacts == str(serving.resolve())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info.loaded_at)
    assert (info.max_top_n, info.max_score_pairs, info.max_upsert_items, info.max_inline_interactions) == (
        1000,
        10_000,
        1000,
        200_000,
    )


def test_get_model_info_reports_serving_side_versions(stub):
    import onnxruntime

    versions = stub.GetModelInfo(pb.GetModelInfoRequest()).versions
    serving_side = {k: v for k, v in versions.items() if not k.startswith("export.")}
    assert onnxruntime.__version__ in serving_side.values(), dict(versions)


# -------------------------------------------------------------------------------------- UpsertItems


def test_upsert_items_insert_and_update(serving, users, items, seen_ids):
    with running_server(serving, model="two_tower") as (_, channel):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        user = users[0]["user_id"]
        prices = sorted(float(r["price"]) for r in items.values())
        tent = pb.NewItem(
            item_id="item_new_tent",
            category="tent",
            price=prices[len(prices) // 2],
            description="A lightweight waterproof camping tent for two, quick to pitch on any trail.",
            features="Waterproof, Lightweight, Breathable fabric",
        )
        kayak = pb.NewItem(
            item_id="item_new_kayak",
            category="kayak",
            price=prices[0],
            description="An inflatable kayak for lakes and calm rivers.",
            features="Lightweight",
        )
        before = stub.GetModelInfo(pb.GetModelInfoRequest())

        inserted = stub.UpsertItems(pb.UpsertItemsRequest(items=[tent, kayak]))
        assert (inserted.inserted, inserted.updated, inserted.item_count) == (2, 0, before.item_count + 2)
        assert inserted.model_version == before.model_version
        info = stub.GetModelInfo(pb.GetModelInfoRequest())
        assert info.item_count == before.item_count + 2
        assert "kayak" in info.categories and "kayak" not in before.categories

        # Recommendable at once, for a known user with seen items excluded (the new ids are not seen).
        tents = {
            it.item_id: it
            for it in stub.Recommend(pb.RecommendRequest(user_id=user, top_n=1000, categories=["tent"])).items
        }
        assert "item_new_tent" not in seen_ids[user]
        got = tents["item_new_tent"]
        assert (got.description, got.features, got.price, got.category) == (
            tent.description,
            tent.features,
            tent.price,
            "tent",
        )
        assert 0.0 < got.score < 1.0
        kayaks = stub.Recommend(pb.RecommendRequest(user_id=user, top_n=10, categories=["kayak"]))
        assert _ids(kayaks) == ["item_new_kayak"]
        scored = stub.Score(pb.ScoreRequest(pairs=[pb.ScorePair(user_id=user, item_id="item_new_tent")]))
        assert scored.scores[0] == pytest.approx(got.score, abs=1e-6)

        # Updating an existing id replaces its data in place.
        old_id, old = next(iter(items.items()))
        new = pb.NewItem(
            item_id=old_id,
            description="Completely rewritten description.",
            features=old["features"],
            price=float(old["price"]) + 1.5,
            category=old["category"],
        )
        updated = stub.UpsertItems(pb.UpsertItemsRequest(items=[new]))
        assert (updated.inserted, updated.updated, updated.item_count) == (0, 1, before.item_count + 2)
        same_category = {
            it.item_id: it
            for it in stub.Recommend(
                pb.RecommendRequest(
                    user_id=user, top_n=1000, exclude_seen=False, categories=[old["category"]]
                )
            ).items
        }
        assert (same_category[old_id].description, same_category[old_id].price) == (
            new.description,
            new.price,
        )


# ------------------------------------------------------------------------------ health, reflection, trailers


def test_health_follows_the_model_lifecycle(serving):
    with running_server(serving, load=False) as (running, channel):
        health = health_pb2_grpc.HealthStub(channel)
        stub = recommender_pb2_grpc.RecommenderStub(channel)

        for service in ("", "towerserve.v1.Recommender"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(pb.RecommendRequest(user_id="tra_0001", top_n=3))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in err.value.details()

        running.load()
        for service in ("", "towerserve.v1.Recommender", "towerserve.v1.Admin"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == SERVING
        assert stub.Recommend(pb.RecommendRequest(user_id="tra_0001", top_n=3)).items

        running.set_serving(False)
        assert health.Check(health_pb2.HealthCheckRequest()).status == NOT_SERVING
        running.set_serving(True)


def test_stop_reports_not_serving_before_shutting_down(serving):
    """A Watch stream open across stop() sees NOT_SERVING: load balancers learn of the drain."""
    with running_server(serving) as (running, channel):
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == SERVING
        stopper = threading.Thread(target=running.stop, args=(1.0,))
        stopper.start()
        try:
            assert next(watch).status == NOT_SERVING
        finally:
            watch.cancel()
            stopper.join()


def test_reflection_lists_services(two_tower):
    running, _ = two_tower
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(
            stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"towerserve.v1.Recommender", "towerserve.v1.Admin", "grpc.health.v1.Health"} <= names
    # Bytes that do not parse, in the request stream: INVALID_ARGUMENT, as everywhere else.
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        raw = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
        with pytest.raises(grpc.RpcError) as err:
            list(raw(iter([b"\xfe"])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert "ServerReflectionRequest" in err.value.details()


def test_server_timing_trailer_on_success_only(stub):
    _, call = stub.Recommend.with_call(pb.RecommendRequest(user_id="tra_0001", top_n=3))
    trailers = dict(call.trailing_metadata())
    assert re.fullmatch(r"compute;dur=\d+\.\d{4}", trailers["server-timing"])  # answered on the loop
    # An unseen user needs the towers: the call went through the worker pool in a batch (alone: nothing
    # else was running), and says how long it waited and its batch's size.
    user = pb.UserAttributes(age=30, profession="a profession never seen", personality="calm")
    _, call = stub.Recommend.with_call(pb.RecommendRequest(user=user, top_n=3))
    pooled = dict(call.trailing_metadata())["server-timing"]
    assert re.fullmatch(r"compute;dur=(\d+\.\d{4}), queue;dur=(\d+\.\d{4}), batch;desc=1", pooled)
    # Other pool work (Evaluate) is not batched: no batch entry.
    _, call = stub.Evaluate.with_call(pb.EvaluateRequest(ks=[5]))
    assert re.fullmatch(
        r"compute;dur=(\d+\.\d{4}), queue;dur=(\d+\.\d{4})", dict(call.trailing_metadata())["server-timing"]
    )
    # A known user the candidate list cannot answer (seen items kept in) scores the catalogue: the pool too.
    _, call = stub.Recommend.with_call(pb.RecommendRequest(user_id="tra_0001", top_n=3, exclude_seen=False))
    assert ", queue;dur=" in dict(call.trailing_metadata())["server-timing"]

    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(pb.RecommendRequest(user_id="nobody", top_n=3))
    assert "server-timing" not in dict(err.value.trailing_metadata())
