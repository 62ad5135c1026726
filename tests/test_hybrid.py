"""trainer.hybrid: pooling by hand, unknown ids are the content path, target exclusion, both losses,
validation-only recipe choice, ONNX parity with ids and histories, and train + export end to end."""

import os

os.environ["USE_TF"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pipeline  # noqa: E402
import pytest  # noqa: E402

from towerserve.server.core.csr import CSR  # noqa: E402
from towerserve.server.core.manifest import ServingManifest  # noqa: E402
from towerserve.trainer.collab import validation_split  # noqa: E402
from towerserve.trainer.hybrid import blend as hybrid_blend  # noqa: E402
from towerserve.trainer.hybrid import fit as hybrid_fit  # noqa: E402
from towerserve.trainer.hybrid import model as hybrid  # noqa: E402
from towerserve.trainer.hybrid import search as hybrid_search  # noqa: E402
from towerserve.trainer.hybrid.config import HybridConfig  # noqa: E402

N_USERS, N_ITEMS, FU, FI = 120, 30, 6, 9
TINY = HybridConfig(dim=8, hidden=(16,), batch_size=128, epochs=3, train_history=6, learning_rate=1e-2)


@pytest.fixture(scope="module")
def data():
    """Random features and positives with a low-rank structure (so there is something to learn)."""
    rng = np.random.default_rng(0)
    U = rng.normal(size=(N_USERS, FU)).astype(np.float32)
    I = rng.normal(size=(N_ITEMS, FI)).astype(np.float32)
    logits = rng.normal(size=(N_USERS, 3)) @ rng.normal(size=(N_ITEMS, 3)).T + rng.normal(
        size=(N_USERS, N_ITEMS)
    )
    pos = CSR.from_dense(logits > 1.0)
    neg_u = np.repeat(np.arange(N_USERS), 5)
    neg_i = np.array([rng.choice(np.flatnonzero(logits[u] <= 1.0), 5, replace=False) for u in range(N_USERS)])
    return U, I, pos, (neg_u, neg_i.reshape(-1))


def _relu(x):
    return np.maximum(x, 0.0)


# --- the towers, by hand --------------------------------------------------------------------------------


def test_user_tower_is_content_plus_id_plus_masked_mean_of_history(data):
    U, _, _, _ = data
    m = hybrid.build_hybrid(FU, FI, N_USERS, N_ITEMS, TINY)
    pipeline.randomise_layers(m, 1)
    user = m.get_layer("user_tower")
    idx = np.array([3, 0, 7, 0, 120], dtype=np.int32)
    hist = np.array([[1, 5, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0], [30, 29, 28, 27], [0, 4, 0, 4]], np.int32)
    got = np.asarray(user([U[:5], idx, hist]))

    w0, b0 = user.get_layer("user_hidden0").get_weights()
    w1, b1 = user.get_layer("user_embedding").get_weights()
    content = _relu(U[:5] @ w0 + b0) @ w1 + b1
    ids = user.get_layer("user_id_embedding").get_weights()[0]
    table = user.get_layer("history_embedding").get_weights()[0]
    want = content + np.where(idx[:, None] > 0, ids[idx], 0.0)
    for r in range(5):
        real = hist[r][hist[r] > 0]
        if len(real):
            want[r] += table[real].mean(axis=0)  # padding (0) left out; a repeated item counts twice
    np.testing.assert_allclose(got[:, :-2], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[:, -2], 1.0)  # the bias trick's constant column
    # Each segment its own popularity weight: known (an id), history (none, a history), attributes.
    user.get_layer("popularity_weight").weights_by_segment.assign(np.array([0.5, 2.0, 8.0], np.float32))
    got = np.asarray(user([U[:5], idx, hist]))
    np.testing.assert_array_equal(got[:, -1], [0.5, 2.0, 0.5, 2.0, 0.5])
    anonymous = np.asarray(user([U[:2], np.zeros(2, np.int32), np.zeros((2, 3), np.int32)]))
    np.testing.assert_array_equal(anonymous[:, -1], 8.0)


def test_unknown_ids_give_the_content_only_vectors(data):
    U, I, _, _ = data
    m = hybrid.build_hybrid(FU, FI, N_USERS, N_ITEMS, TINY)
    # Row 0 of every table too: the layer must ignore it, not rely on its zeros.
    pipeline.randomise_layers(m, 2)
    user = m.get_layer("user_tower")
    content_only = hybrid.build_user_tower(FU, 0, 0, TINY.dim, TINY.hidden, "mean")
    for name in ("user_hidden0", "user_embedding", "popularity_weight"):
        content_only.get_layer(name).set_weights(user.get_layer(name).get_weights())
    want = np.asarray(content_only([U, np.zeros(N_USERS, np.int32), np.zeros((N_USERS, 1), np.int32)]))
    for width in (1, 4):  # an empty history of any width is the same as none
        got = user([U, np.zeros(N_USERS, np.int32), np.zeros((N_USERS, width), np.int32)])
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    known = np.asarray(user([U, np.arange(1, N_USERS + 1, dtype=np.int32), np.zeros((N_USERS, 1), np.int32)]))
    assert np.abs(known - want).max() > 0.1  # and a known id does change the vector
    # Items: index 0 is the exported content tower exactly.
    content = np.asarray(m.get_layer("item_tower")(I))
    np.testing.assert_array_equal(hybrid.item_vectors(m, I, np.zeros(N_ITEMS, np.int32)), content)
    with_ids = hybrid.item_vectors(m, I, np.arange(1, N_ITEMS + 1, dtype=np.int32))
    np.testing.assert_allclose(
        with_ids - content, m.get_layer("item_id_embedding").get_weights()[0][1:], atol=1e-5
    )


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_training_leaves_each_rows_target_out_of_its_users_history(data, pooling):
    U, _, _, _ = data
    m = hybrid.build_hybrid(FU, FI, N_USERS, N_ITEMS, replace(TINY, pooling=pooling))
    pipeline.randomise_layers(m, 5)
    users = np.array([4, 9, 11], np.int32)
    hist = np.array([[3, 5, 9, 0], [7, 0, 0, 0], [0, 0, 0, 0]], np.int32)  # ids: 1 + item row
    local = np.array([0, 0, 0, 1, 1, 2], np.int32)  # rows: three of user 4, two of user 9, one of 11
    items = np.array([4, 0, 8, 6, 2, 2], np.int32)  # item 4 (id 5) and 8 (id 9) are in user 4's history
    got = np.asarray(
        hybrid_fit.grouped_user_vectors(m, U[users], users + 1, hist, local, items, training=False)
    )
    # The tower itself, fed each row's history with its target set to padding.
    row_hist = hist[local].copy()
    row_hist[row_hist == (items + 1)[:, None]] = 0
    want = np.asarray(m.get_layer("user_tower")([U[users][local], (users + 1)[local], row_hist]))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want[3] - want[4]).max() > 1e-3  # user 9's only item removed: its history is empty
    assert np.abs(got[0] - got[1]).max() > 1e-3  # the removal changes the vector


def test_user_batches_cover_every_row_once_in_user_chunks():
    row_users = np.repeat(np.arange(10), [3, 0, 5, 1, 7, 2, 2, 0, 4, 6])
    seen, batches = [], 0
    for users, rows, local in hybrid_fit.user_batches(row_users, 8, np.random.default_rng(0), chunk=3):
        np.testing.assert_array_equal(row_users[rows], users[local])
        assert np.bincount(local).max() <= 3 and len(rows) <= 8 + 2  # a batch ends after the chunk passing 8
        seen.append(rows)
        batches += 1
    rows = np.concatenate(seen)
    assert sorted(rows) == list(range(len(row_users)))  # every row once
    assert batches >= 4


def test_small_data_sets_get_smaller_batches_not_fewer_steps():
    assert hybrid_fit.step_batch(775_000, 4096) == 4096  # the seed scale: the recipe's batch
    assert hybrid_fit.step_batch(51_000, 4096) == 510  # the real data set: 100 steps an epoch
    assert hybrid_fit.step_batch(3_000, 4096) == 256 and hybrid_fit.step_batch(3_000, 128) == 128


def test_pad_histories_and_known_index():
    padded = hybrid.pad_histories([np.array([4, 0]), np.array([], np.int64), np.array([2])])
    np.testing.assert_array_equal(padded, [[5, 1], [0, 0], [3, 0]])
    assert hybrid.pad_histories([np.array([], np.int64)]).shape == (1, 1)  # L >= 1 even when all are empty
    np.testing.assert_array_equal(hybrid.known_index(4, [True, False, True, True]), [1, 0, 3, 4])


def test_logq_correction_is_smaller_for_popular_items():
    train = CSR.from_pairs(np.array([0, 1, 2, 3, 0]), np.array([0, 0, 0, 1, 2]), 4, 4)
    log_q = hybrid_fit.inclusion_log_q(train, batch=2)
    assert log_q[0] > log_q[1] == log_q[2] and np.all(log_q <= 0)
    assert log_q[3] == log_q.min()  # never trained on: the floor, not -inf
    # With one positive per batch the inclusion probability is the item's share of positives.
    np.testing.assert_allclose(
        np.exp(hybrid_fit.inclusion_log_q(train, batch=1)[:3]), [0.6, 0.2, 0.2], rtol=1e-6
    )


# --- training --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_both_losses_train_and_beat_their_start(data, loss):
    U, I, pos, neg = data
    fit, val = validation_split(pos, 0.2, 0)
    r, c = fit.pairs()
    keep = (c != 0) & (r != 0)  # item 0 and user 0 have no training positives
    fit = CSR.from_pairs(r[keep], c[keep], N_USERS, N_ITEMS)
    cfg = replace(TINY, loss=loss, epochs=4, patience=4)
    f = hybrid_fit.fit(U, I, fit, cfg, seed=0, negatives=neg, val=val)
    # Rows of ids never trained on are zero: fed with their own index they are content-only.
    content = np.asarray(f.model.get_layer("item_tower")(I))
    every = hybrid.item_vectors(f.model, I, np.arange(1, N_ITEMS + 1, dtype=np.int32))
    np.testing.assert_array_equal(every[0], content[0])
    assert np.abs(every[1:] - content[1:]).max() > 1e-3
    user = f.model.get_layer("user_tower")
    empty = np.zeros((2, 1), np.int32)
    by_index = np.asarray(user([U[:2], np.array([1, 2], np.int32), empty]))
    unknown = np.asarray(user([U[:2], np.zeros(2, np.int32), empty]))
    np.testing.assert_array_equal(by_index[0], unknown[0])
    assert np.abs(by_index[1] - unknown[1]).max() > 1e-3
    # The content epochs (every id unknown) first, then the joint ones, each judged on validation.
    assert len(f.history["loss"]) == cfg.content_epochs + 4 and np.all(np.isfinite(f.history["loss"]))
    assert len(f.history["val_ndcg@10"]) == 4
    assert f.history["loss"][-1] < f.history["loss"][0]
    assert f.val_ndcg == max(f.history["val_ndcg@10"]) and f.epochs == 1 + int(
        np.argmax(f.history["val_ndcg@10"])
    )
    # The kept weights are the best epoch's: evaluating them again gives the recorded figure.
    users = hybrid_fit.judged_users(fit, val, 0)
    assert hybrid_fit.validation_ndcg(f.model, U, I, fit, val, users) == pytest.approx(f.val_ndcg, abs=1e-9)


def test_full_softmax_loss_is_the_hand_computed_cross_entropy_over_three_items():
    # Two rows over a 3-item catalogue, temperature 2 (inv_t 0.5); every item is a negative of each row.
    u = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    v = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    # Row 0, target item 0: logits (0.5, 0, 0.5). Row 1, target item 2: logits (0, 1, 1).
    row0 = np.log(2 * np.exp(0.5) + 1) - 0.5
    row1 = np.log(1 + 2 * np.e) - 1.0
    got = float(hybrid_fit.full_softmax_loss(u, v, np.array([0, 2], np.int32), 0.5))
    assert got == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # "auto" normalises over the catalogue while it is small, in-batch beyond; "full" always does.
    assert HybridConfig().full_softmax(1_682) and not HybridConfig().full_softmax(10**6)
    assert HybridConfig(negatives="full").full_softmax(10**6)
    assert not HybridConfig(negatives="in_batch").full_softmax(3)


def _popularity_skewed(seed: int, n_users: int = 200, n_items: int = 30):
    """Positives drawn by a steep popularity law, and features that say nothing (all rows equal)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 1.2
    cols = [rng.choice(n_items, size=6, replace=False, p=p / p.sum()) for _ in range(n_users)]
    pos = CSR.from_pairs(np.repeat(np.arange(n_users), 6), np.concatenate(cols), n_users, n_items)
    return np.ones((n_users, FU), np.float32), np.ones((n_items, FI), np.float32), pos


def _served_to_unseen(model, U, I, train):
    """Scores of an unseen user (no id, no history) over the catalogue, as the served vectors give."""
    items = hybrid.item_vectors(model, I, hybrid.known_index(len(I), hybrid_fit.known_items(train)))
    user = hybrid.user_vectors(model, U[:1], np.zeros(1, np.int32), [np.zeros(0, np.int64)])
    return (user @ items.T)[0]


def test_a_model_worse_than_popularity_is_blended_into_popularity_order(data):
    # An untrained (random) model ranks worse than popularity for every segment on validation, so
    # the blend must choose popularity, and the served vectors must rank by it.
    U, I, pos = _popularity_skewed(1)
    model = hybrid.build_hybrid(FU, FI, len(U), len(I), TINY)
    pipeline.randomise_layers(model, 7)
    fit, val = validation_split(pos, 0.2, 0)
    blend = hybrid_blend.choose(model, U, I, fit, val, 0)
    assert all(blend.multipliers[s] == max(hybrid_blend.MULTIPLIERS) for s in hybrid_blend.SEGMENTS)
    assert _served_to_unseen(model, U, I, fit).std() > 0  # weights left at 0 by choose: the model's order
    model, blend = hybrid_blend.apply(model, U, I, pos, blend, 0, TINY)
    assert blend.weights["attributes"] > 0 and json.dumps(blend.to_json())
    counts = np.bincount(pos.indices, minlength=pos.n_cols)
    scores = _served_to_unseen(model, U, I, pos)
    more = counts[:, None] > counts[None, :]
    assert np.all((scores[:, None] - scores[None, :])[more] > 0)  # popularity order, ties aside


def test_unseen_users_are_served_popularity_order_when_content_says_nothing(tmp_path):
    # Trained for real on data whose features are all equal: whatever the blend chose, the exported
    # user tower must rank an unseen user's catalogue by popularity.
    from towerserve.export.towers import keras_to_onnx

    U, I, pos = _popularity_skewed(2)
    neg = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    final, choice, _ = hybrid_search.train_split(U, I, pos, neg, replace(TINY, epochs=4), 0, search=({},))
    assert choice.blend.weights is not None and set(
        choice.to_json()["popularity_blend"]["multipliers"]
    ) == set(hybrid_blend.SEGMENTS)
    path = keras_to_onnx(final.model.get_layer("user_tower"), tmp_path / "user.onnx", "user_vector")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {
        "user_features": U[:1],
        "user_index": np.zeros(1, np.int32),
        "history": np.zeros((1, 1), np.int32),
    }
    user = sess.run(["user_vector"], feed)[0]
    items = hybrid.item_vectors(final.model, I, hybrid.known_index(len(I), hybrid_fit.known_items(pos)))
    scores = (user @ items.T)[0]
    top = np.argsort(-scores, kind="stable")[:10]
    counts = np.bincount(pos.indices, minlength=pos.n_cols)
    assert set(top) == set(np.argsort(-counts, kind="stable")[:10]) or np.all(
        np.sort(counts[top])[::-1] == np.sort(counts)[::-1][:10]
    )


def test_bce_without_negatives_is_refused(data):
    U, I, pos, _ = data
    with pytest.raises(ValueError, match="bce loss needs sampled negatives"):
        hybrid_fit.fit(U, I, pos, replace(TINY, loss="bce"), seed=0)


def test_the_recipe_is_chosen_on_validation_only(data):
    U, I, pos, neg = data
    # A candidate that cannot learn (learning rate ~0) must lose to one that can.
    search = ({"learning_rate": 1e-9}, {"learning_rate": 1e-2})
    choice = hybrid_search.choose(U, I, pos, neg, replace(TINY, patience=3), 0, search, share=0.2)
    scores = [c.val_ndcg for c in choice.candidates]
    assert choice.config.learning_rate == 1e-2 and scores[1] > scores[0]
    assert choice.epochs == choice.candidates[1].epochs >= 1
    # The validation positives come out of the training positives: disjoint, and together all of them.
    fit, val = validation_split(pos, 0.2, 0)
    assert fit.nnz + val.nnz == pos.nnz and val.nnz > 0
    record = choice.to_json()
    assert record["chosen"]["learning_rate"] == 1e-2 and len(record["candidates"]) == 2
    json.dumps(record)  # what metrics.json stores
    with pytest.raises(ValueError, match="at least one candidate"):
        hybrid_search.choose(U, I, pos, neg, TINY, 0, ())


def test_bad_recipes_are_refused():
    for bad, words in (
        ({"loss": "mse"}, "loss must be one of"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"id_dropout": 1.0}, "id_dropout must be in"),
        ({"history_dropout": -0.1}, "history_dropout must be in"),
    ):
        with pytest.raises(ValueError, match=words):
            HybridConfig(**bad)


# --- ONNX ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_user_tower_onnx_matches_keras_for_any_history_width(data, tmp_path, pooling):
    from towerserve.export.towers import keras_to_onnx

    U, _, _, _ = data
    m = hybrid.build_hybrid(FU, FI, N_USERS, N_ITEMS, replace(TINY, pooling=pooling))
    pipeline.randomise_layers(m, 3)
    user = m.get_layer("user_tower")
    path = keras_to_onnx(user, tmp_path / "user.onnx", "user_vector")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert {i.name: i.type for i in sess.get_inputs()} == {
        "user_features": "tensor(float)",
        "user_index": "tensor(int32)",
        "history": "tensor(int32)",
    }
    rng = np.random.default_rng(4)
    for width in (1, 3, 17):
        idx = rng.integers(0, N_USERS + 1, size=9).astype(np.int32)
        hist = rng.integers(0, N_ITEMS + 1, size=(9, width)).astype(np.int32)
        hist[0] = 0  # an all-padding row
        got = sess.run(["user_vector"], {"user_features": U[:9], "user_index": idx, "history": hist})[0]
        np.testing.assert_allclose(got, np.asarray(user([U[:9], idx, hist])), atol=1e-5)


# --- train and export end to end (tiny BERT) ------------------------------------------------------------


@pytest.fixture(scope="module")
def hybrid_run(bert, tmp_path_factory):
    from towerserve.export.bundle import ExportConfig, main_export
    from towerserve.export.encoder.variants import EncoderExportConfig
    from towerserve.trainer.text import EncoderConfig
    from towerserve.trainer.train import FitConfig, TrainConfig, train

    root = tmp_path_factory.mktemp("hybrid_run")
    data = pipeline.tiny_data(root / "data")
    cfg = TrainConfig(
        models=("two_tower", "hybrid"),
        fit=FitConfig(epochs=2, batch_size=256, patience=0),
        encoder=EncoderConfig(model=str(bert), cache_dir=None),
        progress=False,
        hybrid=replace(TINY, epochs=2),
        hybrid_search=({"loss": "softmax"}, {"loss": "bce"}),
    )
    metrics = train(data, root / "art", cfg)
    lean = EncoderExportConfig(optimize=False, int8=False, fp16=False)
    manifest = main_export(root / "art", ExportConfig(encoder=lean, parity_users=50))
    return root / "art", metrics, manifest


def test_train_records_the_choice_and_serves_the_best_model(hybrid_run):
    art, metrics, _ = hybrid_run
    train_manifest = json.loads((art / "manifest.json").read_text())
    best = max(("two_tower", "hybrid"), key=lambda k: metrics["holdout"][k]["ndcg@10"])
    assert train_manifest["default_model"] == best  # the hybrid competes like any other kind
    rec = metrics["holdout"]["hybrid"]["recipe"]
    assert [c["loss"] for c in rec["candidates"]] == ["softmax", "bce"]
    assert all("val_ndcg@10" in c and "test_ndcg@10" in c for c in rec["candidates"])
    best = max(rec["candidates"], key=lambda c: c["val_ndcg@10"])
    assert rec["chosen"]["loss"] == best["loss"]  # chosen on validation, whatever the test says
    assert metrics["cold"]["hybrid"]["recipe"]["chosen"] == rec["chosen"]  # the cold split reuses it
    assert train_manifest["recipe"]["hybrid"]["holdout"] == rec["chosen"]
    entry = train_manifest["models"]["hybrid"]["splits"]["holdout"]
    assert entry["ids_and_history"] and entry["history_split"] == "holdout" and entry["max_history"] == 100
    assert (art / "report" / "report.md").read_text().count("softmax") >= 1


def test_export_writes_the_hybrid_contract(hybrid_run):
    art, _, manifest = hybrid_run
    serving = art / "serving"
    assert ServingManifest.load(serving) == manifest
    split = manifest.models["hybrid"].splits["holdout"]
    tower = split.user_tower
    assert (tower.id_input, tower.history_input, tower.history_pooling, tower.max_history) == (
        "user_index",
        "history",
        "mean",
        100,
    )
    assert manifest.models["two_tower"].splits["holdout"].user_tower.id_input is None
    names = [c.name for c in manifest.parity if c.name.startswith("hybrid/holdout user_tower")]
    assert len(names) == 4 and all(c.ok for c in manifest.parity)
    sess = ort.InferenceSession(str(serving / tower.file), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["user_features", "user_index", "history"]
    vectors = np.load(serving / split.item_vectors_file)
    item = ort.InferenceSession(str(serving / split.item_tower.file), providers=["CPUExecutionProvider"])
    assert [i.name for i in item.get_inputs()] == ["item_features"]
    assert vectors.shape == (pipeline.N_ITEMS, tower.output_dim)


def test_no_search_trains_the_default_recipe_alone(bert, tmp_path):
    # `make run`'s path: one hybrid recipe on the holdout split, still stopped and blended on validation.
    import subprocess
    import sys

    data = pipeline.tiny_data(tmp_path / "data")
    out = tmp_path / "art"
    cmd = [sys.executable, "-m", "towerserve.clients.cli", "train", "--data", str(data), "--out", str(out)]
    cmd += ["--encoder", str(bert), "--no-cache", "--model", "hybrid", "--no-cold", "--no-search"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"holdout"}
    recipe = metrics["holdout"]["hybrid"]["recipe"]
    assert len(recipe["candidates"]) == 1
    assert (
        recipe["candidates"][0]["loss"] == HybridConfig().loss
        and recipe["chosen"]["dim"] == HybridConfig().dim
    )
    assert set(recipe["popularity_blend"]["multipliers"]) == set(hybrid_blend.SEGMENTS)
