"""Request histories over a real server: a hand-built hybrid-shaped user tower (onnx.helper: Gather +
masked mean + MatMul, checked in numpy) and the trained hybrid's exported graph; a features-only model
ignores them."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from pipeline import copy_serving
from pipeline import server_and_channel as running_server

from towerserve.server.core.features import FieldSpec, feature_matrix, load_tables
from towerserve.server.core.manifest import file_entries
from towerserve.server.core.numerics import logits, probabilities
from towerserve.server.core.splits import load_recorded_split
from towerserve.server.core.wire import recommend_wire
from towerserve.server.engine.engine import Engine, EngineConfig
from towerserve.v1 import recommender_pb2 as pb
from towerserve.v1 import recommender_pb2_grpc

HAND = "handmade"  # the hand-built model's kind in the copied bundle
MAX_HISTORY = 8
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# ------------------------------------------------------------------------------ the hand-built tower


def hand_tower(n_users: int, n_items: int, width: int, dim: int, seed: int = 0, squash: bool = False):
    """A hybrid-shaped user tower and its weights: user_vector = x W + b + U[id] + masked_mean(H[history])
    (``squash``: tanh of the pooled mean, a graph that is not affine in its history).

    W's and the tables' last column are 0 and b's is 1: the bias trick's constant column, as a trained
    hybrid has. Row 0 of U and H (unknown id, padding) is 0.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.3, (width, dim)).astype(np.float32)
    b = rng.normal(0, 0.1, dim).astype(np.float32)
    u = rng.normal(0, 0.5, (n_users + 1, dim)).astype(np.float32)
    h = rng.normal(0, 1.0, (n_items + 1, dim)).astype(np.float32)
    w[:, -1], b[-1], u[:, -1], h[:, -1] = 0, 1, 0, 0
    u[0], h[0] = 0, 0
    consts = {
        "W": w,
        "b": b,
        "U": u,
        "H": h,
        "zero": np.array(0, np.int32),
        "one": np.array(1.0, np.float32),
        "axis1": np.array([1], np.int64),
        "axis2": np.array([2], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["user_features", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["content"]),
        helper.make_node("Gather", ["U", "id_input"], ["id_vec"], axis=0),
        helper.make_node("Gather", ["H", "history_input"], ["hist_emb"], axis=0),
        helper.make_node("Greater", ["history_input", "zero"], ["is_item"]),
        helper.make_node("Cast", ["is_item"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["hist_emb", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mask", "axis1"], ["count"], keepdims=1),
        helper.make_node("Max", ["count", "one"], ["safe_count"]),
        helper.make_node("Div", ["total", "safe_count"], ["mean" if squash else "pooled"]),
        *([helper.make_node("Tanh", ["mean"], ["pooled"])] if squash else []),
        helper.make_node("Add", ["content", "id_vec"], ["with_id"]),
        helper.make_node("Add", ["with_id", "pooled"], ["user_vector"]),
    ]
    graph = helper.make_graph(
        nodes,
        "hand_hybrid_user_tower",
        [
            helper.make_tensor_value_info("user_features", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("id_input", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("history_input", TensorProto.INT32, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("user_vector", TensorProto.FLOAT, ["batch", dim])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project supports
    onnx.checker.check_model(model)
    return model, {"W": w, "b": b, "U": u, "H": h, "squash": squash}


def by_hand(weights: dict, x: np.ndarray, ids: np.ndarray, history: np.ndarray) -> np.ndarray:
    """The hand tower in numpy: what the graph must compute."""
    mask = (history > 0).astype(np.float32)[..., None]
    pooled = (weights["H"][history] * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0)
    if weights["squash"]:
        pooled = np.tanh(pooled)
    return x @ weights["W"] + weights["b"] + weights["U"][ids] + pooled


def add_hand_model(serving: Path, dst: Path, squash: bool = False) -> dict:
    """A copy of ``serving`` with model HAND: two_tower's item side and feature specs, the hand-built
    user tower; manifest and file hashes rewritten. Returns the weights."""
    root = copy_serving(serving, dst)
    manifest = json.loads((root / "manifest.json").read_text())
    entry = json.loads(json.dumps(manifest["models"]["two_tower"]))
    n_users, n_items = manifest["catalog"]["users"], manifest["catalog"]["items"]
    hold = entry["splits"]["holdout"]["user_tower"]
    model, weights = hand_tower(n_users, n_items, hold["input_dim"], hold["output_dim"], squash=squash)
    for split, e in entry["splits"].items():
        folder = root / "models" / HAND / split
        folder.mkdir(parents=True)
        for key in ("item_tower", "full"):
            shutil.copy(root / e[key]["file"], folder / Path(e[key]["file"]).name)
            e[key]["file"] = f"models/{HAND}/{split}/{Path(e[key]['file']).name}"
        shutil.copy(root / e["item_vectors_file"], folder / "item_vectors.npy")
        e["item_vectors_file"] = f"models/{HAND}/{split}/item_vectors.npy"
        e.pop("user_vectors")  # two_tower's, not the hand tower's: computed at load instead
        (folder / "user_tower.onnx").write_bytes(model.SerializeToString())
        e["user_tower"].update(
            file=f"models/{HAND}/{split}/user_tower.onnx",
            input="user_features",
            id_input="id_input",
            history_input="history_input",
            history_pooling="mean",
            max_history=MAX_HISTORY,
        )
    entry.update(kind=HAND, model_version=f"{HAND}-0123456789")
    manifest["models"][HAND] = entry
    manifest["files"] = {k: v.to_json() for k, v in file_entries(root).items()}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return weights


# ------------------------------------------------------------------------------------------ fixtures


class Bundle:
    """What the tests compute by hand from a serving folder's model ``kind``: features, histories,
    rankings, and its user tower run directly."""

    def __init__(self, root: Path, kind: str):
        import onnxruntime as ort

        self.root, self.kind = root, kind
        manifest = json.loads((root / "manifest.json").read_text())
        e = manifest["models"][kind]["splits"]["holdout"]
        self.tower = e["user_tower"]
        self.max_history = self.tower["max_history"]
        self.specs = [FieldSpec.from_json(s) for s in e["features"]["user"]]
        self.tables = load_tables(root / "catalog" / "embeddings.npz")
        with open(root / "catalog" / "users.csv", newline="", encoding="utf-8") as fh:
            self.users = list(csv.DictReader(fh))
        with open(root / "catalog" / "items.csv", newline="", encoding="utf-8") as fh:
            self.item_ids = [r["item_id"] for r in csv.DictReader(fh)]
        self.raw = {
            s.name: np.array([float(u[s.name]) for u in self.users]) for s in self.specs if s.kind == "minmax"
        }
        self.vectors = np.load(root / e["item_vectors_file"]).astype(np.float32)
        self.split = load_recorded_split(root / "splits" / "holdout.npz")
        self.session = ort.InferenceSession(
            str(root / self.tower["file"]), providers=["CPUExecutionProvider"]
        )

    def features(self, row: int) -> np.ndarray:
        """float32 [1, F]: user ``row``'s attributes (an anonymous user with them has the same)."""
        return feature_matrix(self.specs, self.tables, self.raw, np.array([row]))

    def rows(self, ids) -> list[int]:
        return [self.item_ids.index(i) for i in ids]

    def run(self, x: np.ndarray, ids: np.ndarray, history: np.ndarray) -> np.ndarray:
        feed = {self.tower["input"]: x, self.tower["id_input"]: ids, self.tower["history_input"]: history}
        return self.session.run(None, feed)[0]

    def graph(self, x: np.ndarray, user_id: int, history_rows) -> np.ndarray:
        """The user tower run directly: id 1 + row (0: anonymous), history 1 + item rows."""
        h = np.array([[r + 1 for r in history_rows] or [0]], dtype=np.int32)
        return self.run(x, np.array([user_id], np.int32), h)[0]

    def known(self, row: int, extra_rows=()) -> np.ndarray:
        """A known user's vector: training positives, then the request's items they lack; a user with
        no training positives is the unknown id (0), as training scores them."""
        train = self.split.train.row(row).tolist()
        history = train + [r for r in dict.fromkeys(extra_rows) if r not in train]  # each item once
        return self.graph(self.features(row), row + 1 if train else 0, history)

    def trained_items(self, n: int, skip=()) -> list[str]:
        """``n`` ids of items that are training positives of some user (their history rows learned)."""
        popular = np.argsort(
            -np.bincount(self.split.train.indices, minlength=len(self.item_ids)), kind="stable"
        )
        return [self.item_ids[j] for j in popular if j not in skip][:n]

    def top(self, u: np.ndarray, n: int, exclude=()) -> tuple[list[str], list[float]]:
        """The server's exact ranking of the catalogue for vector ``u``: float64 sums, ties by row."""
        scores = logits(self.vectors.astype(np.float64), u)
        scores[list(exclude)] = -np.inf
        order = np.lexsort((np.arange(len(scores)), -scores))[:n]
        return [self.item_ids[j] for j in order], probabilities(scores[order]).tolist()

    def attrs(self, row: int) -> pb.UserAttributes:
        u = self.users[row]
        return pb.UserAttributes(
            age=float(u["age"]), profession=u["profession"], personality=u["personality"]
        )

    def seen(self, row: int) -> set[int]:
        return set(self.split.train.row(row).tolist()) | set(self.split.test.row(row).tolist())


@pytest.fixture(scope="module")
def hand(serving, tmp_path_factory):
    """(serving folder with HAND, its weights)."""
    dst = tmp_path_factory.mktemp("hand") / "serving"
    return dst, add_hand_model(serving, dst)


@pytest.fixture(scope="module")
def hb(hand) -> Bundle:
    return Bundle(hand[0], HAND)


@dataclass(frozen=True)
class Served:
    """A running server of a model that reads histories, and what the tests compute by hand for it."""

    stub: recommender_pb2_grpc.RecommenderStub
    target: str
    bundle: Bundle


@pytest.fixture(scope="module", params=[HAND, "hybrid"])
def served(request, hand):
    """The hand-built tower, then the trained hybrid (the session's `hybrid` fixture), each served."""
    root = hand[0] if request.param == HAND else request.getfixturevalue("hybrid")
    with running_server(root, model=request.param) as (running, channel):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        yield Served(stub, f"127.0.0.1:{running.port}", Bundle(root, request.param))


@pytest.fixture(scope="module")
def two_tower_stub(serving):
    with running_server(serving, model="two_tower") as (_, channel):
        yield recommender_pb2_grpc.RecommenderStub(channel)


def _ids(response) -> list[str]:
    return [it.item_id for it in response.items]


def _scores(response) -> list[float]:
    return [it.score for it in response.items]


# ------------------------------------------------------------------------------ the hand-built graph


def test_the_hand_graph_pools_as_numpy_does(hand, hb):
    weights = hand[1]
    x = np.concatenate([hb.features(0), hb.features(5)])
    ids = np.array([0, 6], np.int32)
    history = np.array([[3, 9, 0, 0], [0, 0, 0, 0]], np.int32)  # padding, and an empty history
    got = hb.run(x, ids, history)
    np.testing.assert_allclose(got, by_hand(weights, x, ids, history), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hb.run(x, ids, history[:, :2]), got, rtol=1e-6, atol=1e-7)  # padding
    assert np.all(got[:, -1] == 1.0)  # the constant column


def test_known_users_vectors_use_their_training_history_only(hand, hb):
    engine = Engine(hand[0], EngineConfig(model=HAND))
    vecs = engine.known_user_vectors()
    for row in (0, 7, len(hb.users) - 1):
        train = hb.split.train.row(row)
        x = hb.features(row)
        want = by_hand(hand[1], x, np.array([row + 1]), np.array([(train + 1).tolist() or [0]]))
        np.testing.assert_allclose(vecs[row], want[0], rtol=1e-5, atol=1e-6)
    # the cold tower (Evaluate's) pools the cold split's training positives; a cold user is unknown
    cold = engine.known_user_vectors(engine.towers["cold"])
    cold_split = load_recorded_split(hand[0] / "splits" / "cold.npz")
    lengths = cold_split.train.row_lengths()
    row, cold_row = int(np.flatnonzero(lengths)[0]), int(np.flatnonzero(lengths == 0)[0])
    history = np.array([(cold_split.train.row(row) + 1).tolist()])
    want = by_hand(hand[1], hb.features(row), np.array([row + 1]), history)
    np.testing.assert_allclose(cold[row], want[0], rtol=1e-5, atol=1e-6)
    want = by_hand(hand[1], hb.features(cold_row), np.array([0]), np.array([[0]]))
    np.testing.assert_allclose(cold[cold_row], want[0], rtol=1e-5, atol=1e-6)


def test_the_hybrid_graph_pools_a_masked_mean(hybrid):
    """The trained hybrid's exported tower, checked by hand in numpy: with mean pooling a history's
    contribution is the mean of its items' contributions, and padding adds nothing."""
    b = Bundle(hybrid, "hybrid")
    assert b.tower["history_pooling"] == "mean" and b.max_history == 100
    x = b.features(3)
    a, c, d = b.rows(b.trained_items(3))
    base = b.graph(x, 0, [])
    one = {r: b.graph(x, 0, [r]) - base for r in (a, c, d)}
    both = b.graph(x, 0, [a, c, d]) - base
    np.testing.assert_allclose(both, (one[a] + one[c] + one[d]) / 3, rtol=1e-4, atol=1e-5)
    assert np.abs(both).max() > 1e-4  # the history moves the vector
    padded = b.run(x, np.array([0], np.int32), np.array([[a + 1, 0, c + 1, d + 1, 0, 0]], np.int32))[0]
    np.testing.assert_allclose(padded, base + both, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------- over gRPC


def test_model_info_reports_max_history(served, two_tower_stub):
    assert served.stub.GetModelInfo(pb.GetModelInfoRequest()).max_history == served.bundle.max_history > 0
    assert two_tower_stub.GetModelInfo(pb.GetModelInfoRequest()).max_history == 0


def test_known_users_without_history_are_the_graph_with_their_training_history(served):
    b = served.bundle
    item = b.item_ids[1]
    rows = [0, 5, 11]
    got = served.stub.Score(
        pb.ScoreRequest(pairs=[pb.ScorePair(user_id=b.users[r]["user_id"], item_id=item) for r in rows])
    )
    v = b.vectors[1:2].astype(np.float64)
    want = [probabilities(logits(v, b.known(r)))[0] for r in rows]
    np.testing.assert_allclose(got.scores, want, rtol=1e-5)


def test_anonymous_history_personalises_like_the_graph(served):
    b, stub, row = served.bundle, served.stub, 4
    history = b.trained_items(3)
    plain = stub.Recommend(pb.RecommendRequest(user=b.attrs(row), top_n=10))
    with_h = stub.Recommend(pb.RecommendRequest(user=b.attrs(row), top_n=10, history=history))
    assert with_h.history_used == 3 and plain.history_used == 0
    assert (_ids(with_h), _scores(with_h)) != (_ids(plain), _scores(plain))
    # the history's items are left out of the results, like a known user's training positives
    ids, scores = b.top(b.graph(b.features(row), 0, b.rows(history)), 10, exclude=b.rows(history))
    assert _ids(with_h) == ids
    np.testing.assert_allclose(_scores(with_h), scores, rtol=1e-6)
    # without history the anonymous user is the graph with id 0 and only padding
    ids, scores = b.top(b.graph(b.features(row), 0, []), 10)
    assert _ids(plain) == ids
    np.testing.assert_allclose(_scores(plain), scores, rtol=1e-6)


def test_hand_anonymous_history_is_the_numpy_pooling(hand, hb):
    row, history = 4, hb.item_ids[10:13]
    u = hb.graph(hb.features(row), 0, hb.rows(history))
    want = by_hand(hand[1], hb.features(row), np.array([0]), np.array([[r + 1 for r in hb.rows(history)]]))
    np.testing.assert_allclose(u, want[0], rtol=1e-5, atol=1e-6)


def test_known_user_history_joins_the_training_history(served):
    b, stub, row = served.bundle, served.stub, 2
    user_id = b.users[row]["user_id"]
    train = b.split.train.row(row).tolist()
    new = b.rows(b.trained_items(2, skip=set(train)))
    history = [b.item_ids[new[0]], b.item_ids[train[0]], b.item_ids[new[1]]]  # one already trained on
    plain = stub.Recommend(pb.RecommendRequest(user_id=user_id, top_n=10))
    got = stub.Recommend(pb.RecommendRequest(user_id=user_id, top_n=10, history=history))
    assert got.history_used == 3
    left_out = set(b.seen(row)) | set(b.rows(history))  # training positives and the history
    ids, scores = b.top(b.known(row, b.rows(history)), 10, exclude=left_out)
    assert _ids(got) == ids and _scores(plain) != scores
    np.testing.assert_allclose(_scores(got), scores, rtol=1e-6)
    ids, _ = b.top(b.known(row), 10, exclude=b.seen(row))
    assert _ids(plain) == ids  # no history: the vector computed at load, from training positives
    # a history of items the user trained on adds nothing new: the same vector
    same = stub.Recommend(pb.RecommendRequest(user_id=user_id, top_n=10, history=[b.item_ids[train[0]]]))
    assert (_ids(same), _scores(same), same.history_used) == (_ids(plain), _scores(plain), 1)


def test_unknown_and_repeated_history_ids_are_ignored_and_counted(served):
    b, stub = served.bundle, served.stub
    a, c = b.trained_items(2)
    clean = stub.Recommend(pb.RecommendRequest(user=b.attrs(1), top_n=10, history=[a, c]))
    noisy = stub.Recommend(pb.RecommendRequest(user=b.attrs(1), top_n=10, history=["no_such_item", a, c, a]))
    assert (clean.history_used, noisy.history_used) == (2, 2)
    assert _ids(noisy) == _ids(clean) and _scores(noisy) == _scores(clean)
    only_unknown = stub.Recommend(pb.RecommendRequest(user=b.attrs(1), top_n=10, history=["ghost"]))
    plain = stub.Recommend(pb.RecommendRequest(user=b.attrs(1), top_n=10))
    assert only_unknown.history_used == 0
    assert (_ids(only_unknown), _scores(only_unknown)) == (_ids(plain), _scores(plain))


def test_history_limits(served):
    b, stub, limit = served.bundle, served.stub, served.bundle.max_history
    user = b.users[0]["user_id"]
    too_many = [b.item_ids[j % len(b.item_ids)] for j in range(limit + 1)]
    cases = [
        (
            pb.RecommendRequest(user_id=user, top_n=5, history=too_many),
            ("history", str(limit + 1), str(limit)),
        ),
        (
            pb.RecommendRequest(user=b.attrs(0), top_n=5, history=["a", "i" * 201]),
            ("history[1]", "201", "200"),
        ),
        (pb.RecommendRequest(user=b.attrs(0), top_n=5, history=["a", ""]), ("history[1]", "empty")),
    ]
    for request, says in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.Recommend(request)
        assert err.value.code() == INVALID and all(s in err.value.details() for s in says), (
            err.value.details()
        )
    pairs = [
        pb.ScorePair(user_id=user, item_id=b.item_ids[0]),
        pb.ScorePair(user_id=user, item_id=b.item_ids[0], history=too_many),
    ]
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(pb.ScoreRequest(pairs=pairs))
    assert err.value.code() == INVALID and "pairs[1].history" in err.value.details()
    exactly = stub.Recommend(pb.RecommendRequest(user_id=user, top_n=5, history=too_many[:-1]))
    assert exactly.history_used == len(set(too_many[:-1]))


def test_score_with_history_per_pair(served):
    b, stub, row = served.bundle, served.stub, 3
    item = b.item_ids[5]
    user_id = b.users[row]["user_id"]
    train = set(b.split.train.row(row).tolist())
    h1, h2 = b.trained_items(2, skip=train), ["ghost", b.trained_items(1)[0]]
    pairs = [
        pb.ScorePair(user_id=user_id, item_id=item),
        pb.ScorePair(user_id=user_id, item_id=item, history=h1),
        pb.ScorePair(user=b.attrs(row), item_id=item, history=h2),
        pb.ScorePair(user=b.attrs(row), item_id=item),
    ]
    got = stub.Score(pb.ScoreRequest(pairs=pairs))
    assert list(got.history_used) == [0, 2, 1, 0]
    users = [
        b.known(row),
        b.known(row, b.rows(h1)),
        b.graph(b.features(row), 0, b.rows(h2[1:])),
        b.graph(b.features(row), 0, []),
    ]
    v = b.vectors[5:6].astype(np.float64)
    np.testing.assert_allclose(got.scores, [probabilities(logits(v, u))[0] for u in users], rtol=1e-5)
    plain = stub.Score(pb.ScoreRequest(pairs=[pairs[0], pairs[3]]))
    assert list(plain.history_used) == []  # no pair carried a history


@pytest.mark.parametrize("kind", [HAND, "hybrid"])
def test_upserted_items_are_unknown_to_history_but_recommendable(kind, hand, request):
    root = hand[0] if kind == HAND else request.getfixturevalue("hybrid")
    b = Bundle(root, kind)
    with running_server(root, model=kind) as (_, channel):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        new = pb.NewItem(
            item_id="brand_new", description="A brand new tent.", features="Light", price=50.0, category="ht"
        )
        replaced = b.trained_items(1)[0]
        again = pb.NewItem(
            item_id=replaced, description="Replaced text.", features="Heavy", price=60.0, category="ht"
        )
        stub.UpsertItems(pb.UpsertItemsRequest(items=[new, again]))
        attrs = b.attrs(0)
        plain = stub.Recommend(pb.RecommendRequest(user=attrs, top_n=5, categories=["ht"]))
        got = stub.Recommend(
            pb.RecommendRequest(
                user=attrs, top_n=5, categories=["ht"], history=["brand_new"], exclude_seen=False
            )
        )
        assert got.history_used == 0  # no history embedding for an item the export never had
        assert sorted(_ids(got)) == sorted(_ids(plain)) == sorted(["brand_new", replaced])
        assert _scores(got) == _scores(plain)
        # an upsert that replaces an exported id keeps that id's learned history row
        kept = stub.Recommend(pb.RecommendRequest(user=attrs, top_n=5, history=[replaced, "brand_new"]))
        assert kept.history_used == 1
        ids, _ = b.top(b.graph(b.features(0), 0, b.rows([replaced])), 5, exclude=b.rows([replaced]))
        assert [i for i in _ids(kept) if i not in ("brand_new", replaced)][:3] == ids[:3]


def test_a_features_only_model_ignores_history(two_tower_stub, users, items):
    ids = list(items)
    user = users[0]
    attrs = pb.UserAttributes(
        age=float(user["age"]), profession=user["profession"], personality=user["personality"]
    )
    for who in ({"user_id": user["user_id"]}, {"user": attrs}):
        plain = two_tower_stub.Recommend(pb.RecommendRequest(top_n=10, exclude_seen=False, **who))
        history = ids[:30] + ["ghost"]
        got = two_tower_stub.Recommend(
            pb.RecommendRequest(top_n=10, history=history, exclude_seen=False, **who)
        )
        assert got.history_used == 0 and _ids(got) == _ids(plain) and _scores(got) == _scores(plain)
        # it reads nothing of the history, and still leaves its items out by default
        left_out = two_tower_stub.Recommend(pb.RecommendRequest(top_n=10, history=history, **who))
        assert not set(_ids(left_out)) & set(history)
    pair = pb.ScorePair(user_id=user["user_id"], item_id=ids[0], history=ids[:3])
    got = two_tower_stub.Score(pb.ScoreRequest(pairs=[pair]))
    assert list(got.history_used) == [0]
    with pytest.raises(grpc.RpcError) as err:  # ids are still checked
        two_tower_stub.Recommend(pb.RecommendRequest(user_id=user["user_id"], top_n=5, history=["i" * 201]))
    assert err.value.code() == INVALID


# ------------------------------------------------------------------------------------- engine paths


def test_history_skips_the_candidate_lists_and_matches_the_exact_path(hand, hb):
    fast = Engine(hand[0], EngineConfig(model=HAND, candidates=16))
    exact = Engine(hand[0], EngineConfig(model=HAND, candidates=0))
    for row in range(0, 40, 7):
        user = hb.users[row]["user_id"]
        history = [hb.item_ids[(row * 3 + k) % len(hb.item_ids)] for k in range(1 + row % 5)]
        a = fast.recommend(user, 5, history=history)
        b = exact.recommend(user, 5, history=history)
        assert a[1:] == b[1:]
        left_out = set(hb.seen(row)) | set(hb.rows(history))
        ids, _ = hb.top(hb.known(row, hb.rows(history)), 5, exclude=left_out)
        assert [a[0].ids[j] for j in a[1]] == ids


def test_spliced_bytes_carry_history_used(hand):
    engine = Engine(hand[0], EngineConfig(model=HAND))
    cat, rows, scores = engine.recommend(engine.user_ids[1], 5, history=engine.catalog.ids[:2])
    want = pb.RecommendResponse(
        model_version=engine.model_version,
        history_used=2,
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
    assert recommend_wire(cat.wire, rows, scores, engine.model_version, 2) == want.SerializeToString()
    assert (
        recommend_wire(cat.wire, [], [], "", 300)
        == pb.RecommendResponse(history_used=300).SerializeToString()
    )


# ------------------------------------------------------------------------------- client library, CLI


def test_client_sends_history_sync_and_async(served):
    from towerserve.clients.client import AsyncRecommenderClient, RecommenderClient, TowerserveError, User

    b, row, item = served.bundle, 4, served.bundle.item_ids[0]
    history = [*b.trained_items(3), "ghost"]
    u = b.users[row]
    user = User(float(u["age"]), u["profession"], u["personality"])
    want = served.stub.Recommend(pb.RecommendRequest(user=b.attrs(row), top_n=5, history=history))
    with RecommenderClient(served.target) as c:
        a = c.recommend(user=user, top_n=5, history=history)
        same = c.recommend(user=User(user.age, user.profession, user.personality, history=history), top_n=5)
        assert [i.item_id for i in a.items] == [i.item_id for i in same.items] == _ids(want)
        assert a.history_used == same.history_used == 3
        s = c.score([(u["user_id"], item), (user, item, history)])
        assert s.history_used == [0, 3] and s.scores[0] != s.scores[1]
        assert c.model_info().max_history == b.max_history
        with pytest.raises(ValueError, match="history"):  # given twice
            c.recommend(user=User(1.0, "x", history=["a"]), history=["b"])
        with pytest.raises(TypeError, match="str"):  # a str is one id, not a list of characters
            c.recommend(u["user_id"], history="item_1")
        with pytest.raises(TowerserveError) as err:
            c.recommend(u["user_id"], history=["x"] * (b.max_history + 1))
        assert err.value.code == INVALID

    async def run():
        async with AsyncRecommenderClient(served.target) as c:
            return (
                await c.recommend(u["user_id"], top_n=5, history=history),
                await c.score([(u["user_id"], item, history)]),
            )

    r, s = asyncio.run(run())
    assert r.history_used == 3 and s.history_used == [3]


def test_cli_recommend_with_history(served):
    b = served.bundle
    a, c = b.trained_items(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
    args = ["recommend", "--target", served.target, "--user", b.users[0]["user_id"], "-n", "3"]
    cmd = [sys.executable, "-m", "towerserve.clients.cli", *args, "--history", f"{a}, ghost,{c}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the model used 2 of 3 items" in done.stdout
    done = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["history_used"] == 2


@pytest.mark.parametrize("kind", [HAND, "hybrid"])
def test_mean_pooling_shortcut_equals_the_graph(kind, hand, request):
    # Known users' history requests skip the tower pass (mean_history.py); the graph is the reference.
    root = hand[0] if kind == HAND else request.getfixturevalue("hybrid")
    engine = Engine(root, EngineConfig(model=kind))
    b = Bundle(root, kind)
    assert engine.serving.mean_history is not None
    rng = np.random.default_rng(3)
    for _ in range(60):
        row = int(rng.integers(len(b.users)))
        size = int(rng.integers(1, min(b.max_history, 12) + 1))
        ids = [b.item_ids[j] for j in rng.integers(len(b.item_ids), size=size)]  # repeats too
        got = engine.user_vectors([row], histories=[engine.history(ids)])[0]
        np.testing.assert_allclose(got, b.known(row, b.rows(ids)), rtol=1e-5, atol=1e-6)


def test_the_shortcut_keeps_a_per_segment_constant_and_users_without_an_id():
    # The hybrid's popularity weight differs between an anonymous user with a history and one without
    # (hybrid.PopularityWeight), so a history moves an id-less user by more than the mean of its rows.
    from towerserve.server.core.csr import CSR
    from towerserve.server.engine.mean_history import MeanHistory

    rng = np.random.default_rng(5)
    n_users, n_items, d = 12, 9, 4
    W, E, H = rng.normal(size=(3, d)), rng.normal(size=(n_users + 1, d)), rng.normal(size=(n_items + 1, d))
    segment = np.array([[0.0, 0.0, 0.0, 0.7], [0.0, 0.0, 0.0, 2.5], [0.0, 0.0, 0.0, -1.0]])
    feats = rng.normal(size=(n_users, 3))

    def run(x, ids, history):
        history = np.zeros((len(x), 1), np.int64) if history is None else history
        mask = (history > 0)[..., None]
        pooled = (H[history] * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1)
        seg = np.where(ids > 0, 0, np.where(mask.any(axis=(1, 2)), 1, 2))
        return (x @ W + np.where(ids[:, None] > 0, E[ids], 0.0) + pooled + segment[seg]).astype(np.float32)

    users = np.array([0, 0, 1, 2, 2, 2, 4, 5, 7, 8, 8, 10])  # 3, 6, 9 and 11 have no positives
    train = CSR.from_pairs(users, rng.integers(n_items, size=users.size), n_users, n_items)
    known = np.where(train.row_lengths() > 0, np.arange(n_users) + 1, 0)
    rows = [np.array(train.row(u)) + 1 for u in range(n_users)]
    width = max(len(r) for r in rows)
    hist = np.array([np.pad(r, (0, width - len(r))) for r in rows])
    loaded = run(feats, known, hist)
    shortcut = MeanHistory.build(run, lambda r: feats[r], loaded, train)
    assert shortcut is not None
    for user in range(n_users):
        extra = [1, 6] if user % 2 else [3]
        pooled = sorted(set(train.row(user).tolist()) | set(extra))
        want = run(feats[[user]], known[[user]], np.array([[r + 1 for r in pooled]]))[0]
        np.testing.assert_allclose(shortcut.vector(user, extra), want, rtol=1e-5, atol=1e-5)


def test_the_shortcut_knows_whether_training_rows_are_sorted():
    # vector() binary-searches a user's training row; build() re-sorts a CSR whose rows are not sorted.
    from towerserve.server.core.csr import CSR
    from towerserve.server.engine.mean_history import _rows_sorted

    m = CSR.from_pairs(np.array([0, 0, 2, 2, 2]), np.array([3, 1, 0, 4, 2]), 4, 5)
    assert _rows_sorted(m) and _rows_sorted(CSR.from_pairs(np.array([], int), np.array([], int), 3, 3))
    swapped = m.indices.copy()
    swapped[[2, 3]] = swapped[[3, 2]]  # row 2 becomes [2, 0, 4]
    assert not _rows_sorted(CSR(indptr=m.indptr, indices=swapped, n_cols=5))
    falls = CSR(indptr=np.array([0, 2, 2, 4]), indices=np.array([3, 4, 0, 1], np.int32), n_cols=5)
    assert _rows_sorted(falls)  # a column index may fall from one row to the next


def test_a_tower_not_affine_in_its_history_keeps_the_tower_pass(serving, tmp_path, caplog):
    root = tmp_path / "squashed"
    weights = add_hand_model(serving, root, squash=True)
    b = Bundle(root, HAND)
    engine = Engine(root, EngineConfig(model=HAND))
    assert engine.serving.mean_history is None
    assert "run the user tower per request" in caplog.text
    row = 6
    history = b.item_ids[3:9]
    train = b.split.train.row(row).tolist()
    h = [*train, *[r for r in b.rows(history) if r not in train]]
    want = by_hand(weights, b.features(row), np.array([row + 1]), np.array([[r + 1 for r in h]]))[0]
    np.testing.assert_allclose(b.known(row, b.rows(history)), want, rtol=1e-5, atol=1e-6)
    cat, rows, scores = engine.recommend(b.users[row]["user_id"], 5, history=history)
    ids, probs = b.top(want, 5, exclude=b.seen(row))
    assert [cat.ids[j] for j in rows] == ids
    np.testing.assert_allclose(scores, probs, rtol=1e-5)
    # over gRPC the tower pass runs off the event loop, for Recommend and Score alike
    with running_server(root, model=HAND) as (_, channel):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        got = stub.Recommend(pb.RecommendRequest(user_id=b.users[row]["user_id"], top_n=5, history=history))
        assert _ids(got) == ids and got.history_used == len(history)
        pair = pb.ScorePair(user_id=b.users[row]["user_id"], item_id=ids[0], history=history)
        np.testing.assert_allclose(stub.Score(pb.ScoreRequest(pairs=[pair])).scores, probs[:1], rtol=1e-5)
