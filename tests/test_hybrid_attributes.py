"""trainer.hybrid.attributes: the attribute ridge folded into the served hybrid for users without an id."""

import os

os.environ["USE_TF"] = "0"

import numpy as np  # noqa: E402
import pipeline  # noqa: E402

from towerserve.server.core.csr import CSR  # noqa: E402
from towerserve.server.core.features import MINMAX, TEXT, FieldSpec  # noqa: E402
from towerserve.server.engine.mean_history import MeanHistory  # noqa: E402
from towerserve.trainer.collab import validation_split  # noqa: E402
from towerserve.trainer.hybrid import attributes  # noqa: E402
from towerserve.trainer.hybrid import blend as hybrid_blend  # noqa: E402
from towerserve.trainer.hybrid import fit as hybrid_fit  # noqa: E402
from towerserve.trainer.hybrid import model as hybrid  # noqa: E402
from towerserve.trainer.hybrid.config import HybridConfig  # noqa: E402

TINY = HybridConfig(
    dim=8, hidden=(16,), batch_size=128, epochs=3, train_history=6, learning_rate=1e-2, ease_rank=0
)
TEXT_DIM, FI = 6, 7
SPECS = [FieldSpec("profession", TEXT, TEXT_DIM), FieldSpec("age", MINMAX, 1)]


def _world(seed: int, n_users: int = 300, groups: int = 5, size: int = 6):
    """Each user likes 4 items of the group their profession names; professions are unit vectors (as
    sentence embeddings are), ages are noise. The towers get nothing useful to learn from ids alone
    for a user without one, the ridge gets everything."""
    rng = np.random.default_rng(seed)
    vocab = rng.normal(size=(groups, TEXT_DIM))
    vocab /= np.linalg.norm(vocab, axis=1, keepdims=True)
    group = rng.integers(groups, size=n_users)
    U = np.concatenate([vocab[group], rng.uniform(size=(n_users, 1))], axis=1).astype(np.float32)
    cols = [g * size + rng.choice(size, 4, replace=False) for g in group]
    pos = CSR.from_pairs(np.repeat(np.arange(n_users), 4), np.concatenate(cols), n_users, groups * size)
    I = rng.normal(size=(groups * size, FI)).astype(np.float32)
    return U, I, pos, group, vocab


def test_codes_match_the_graphs_and_name_values_and_bins():
    U, _, pos, group, vocab = _world(0)
    c = attributes.coding(SPECS, U, np.arange(len(U)))
    assert len(c.text) == 1 and len(c.text[0][2]) == 5 and len(c.bins) == 1
    assert c.width == 5 + len(c.bins[0][1]) + 1 + 1
    codes = c.codes(U)
    assert np.all(codes[:, :5].sum(axis=1) == 1) and np.all(codes[:, -1] == 1)
    bins = codes[:, 5:-1]
    assert np.all(bins.sum(axis=1) == 1)  # one bin each
    # A profession nobody trained with codes nothing; an age beyond every edge takes the last bin.
    odd = U[:2].copy()
    odd[0, :TEXT_DIM] = -vocab[0]
    odd[1, TEXT_DIM] = 99.0
    odd_codes = c.codes(odd)
    assert odd_codes[0, :5].sum() == 0 and odd_codes[1, -2] == 1
    layer = hybrid.AttributeCodes(c.shape())
    layer.build((None, U.shape[1]))
    for var, (_, _, values) in zip(layer.values, c.text):
        var.assign(values)
    for var, (_, edges) in zip(layer.edges, c.bins):
        var.assign(edges)
    both = np.concatenate([U, odd])
    np.testing.assert_array_equal(np.asarray(layer(both)), c.codes(both))


def _served(seed: int):
    U, I, pos, group, _ = _world(seed)
    model = hybrid.build_hybrid(U.shape[1], FI, len(U), len(I), TINY)
    pipeline.randomise_layers(model, seed + 1)
    hybrid_fit.forget_unseen(model, pos)
    return U, I, pos, group, model


def test_the_ridge_part_serves_users_without_an_id_only(tmp_path):
    from towerserve.export.towers import keras_to_onnx

    U, I, pos, _, model = _served(1)
    c = attributes.coding(SPECS, U, np.arange(len(U)))
    w = attributes.fit_ridge(c.codes(U), pos, np.arange(len(U)), 10.0)
    hybrid_blend.set_weights(model, {"known": 0.2, "history": 0.5, "attributes": 0.9})
    wide = hybrid.with_served_parts(model, TINY, 0, c.shape())
    attributes.install(wide, c, w, 0.8, 0)
    d, k = TINY.dim, c.width
    known = hybrid.known_index(len(U), hybrid_fit.known_users(pos))
    no_id = np.zeros(len(U), np.int32)
    hist = [np.zeros(0, np.int64)] * len(U)
    ivec = hybrid.item_vectors(wide, I, hybrid.known_index(len(I), hybrid_fit.known_items(pos)))
    for ids, weight in ((known, 0.0), (no_id, 0.8)):
        uvec = hybrid.user_vectors(wide, U, ids, hist)
        np.testing.assert_allclose(uvec[:, d : d + k], weight * c.codes(U), atol=1e-6)
    before = (
        hybrid.user_vectors(model, U, no_id, hist)
        @ hybrid.item_vectors(model, I, hybrid.known_index(len(I), hybrid_fit.known_items(pos))).T
    )
    after = hybrid.user_vectors(wide, U, no_id, hist) @ ivec.T
    np.testing.assert_allclose(after, before + 0.8 * c.codes(U) @ w, rtol=1e-4, atol=1e-4)
    content = np.asarray(wide.get_layer("item_tower")(I, training=False))
    assert np.all(content[:, d : d + k] == 0)  # items added later have no ridge column
    # The graph exports, and the server's known-user history shortcut still holds.
    path = keras_to_onnx(wide.get_layer("user_tower"), tmp_path / "user.onnx", "user_vector")
    run = pipeline.onnx_user_tower(path)

    np.testing.assert_allclose(run(U, no_id, None), hybrid.user_vectors(wide, U, no_id, hist), atol=1e-4)
    loaded = hybrid.user_vectors(wide, U, known, hybrid_fit.histories(pos))
    assert MeanHistory.build(run, lambda rows: U[rows], loaded, pos) is not None


def test_validation_weighs_the_ridge_in_where_attributes_name_the_taste():
    U, I, pos, group, model = _served(2)
    fit, val = validation_split(pos, 0.25, 0)
    c = attributes.coding(SPECS, U, np.flatnonzero(fit.row_lengths() > 0))
    blend = hybrid_blend.choose(model, U, I, fit, val, 0, None, "none", c)
    assert blend.attribute_multiplier > 0 and blend.to_json()["attributes"]["lambda"] in attributes.LAMBDAS
    served, applied = hybrid_blend.apply(model, U, I, pos, blend, 0, TINY, c)
    assert applied.attributes["weight"] > 0
    # A user without an id, known only by profession, gets their group's items first.
    uvec = hybrid.user_vectors(served, U, np.zeros(len(U), np.int32), [np.zeros(0, np.int64)] * len(U))
    ivec = hybrid.item_vectors(served, I, hybrid.known_index(len(I), hybrid_fit.known_items(pos)))
    top = np.argmax(uvec @ ivec.T, axis=1)
    assert np.mean(top // 6 == group) > 0.95
    # Without the part, the same random towers do not.
    plain = hybrid.user_vectors(model, U, np.zeros(len(U), np.int32), [np.zeros(0, np.int64)] * len(U))
    plain_items = hybrid.item_vectors(model, I, hybrid.known_index(len(I), hybrid_fit.known_items(pos)))
    assert np.mean(np.argmax(plain @ plain_items.T, axis=1) // 6 == group) < 0.6


def test_a_saved_served_model_loads_where_export_loads_it(tmp_path):
    """export loads the model in a process that imported only trainer.models: the ridge's layers must
    be registered by it (they are the hybrid's own), not by the training code that built them."""
    import subprocess
    import sys

    U, I, pos, _, model = _served(3)
    c = attributes.coding(SPECS, U, np.arange(len(U)))
    wide = hybrid.with_served_parts(model, TINY, 0, c.shape())
    attributes.install(wide, c, attributes.fit_ridge(c.codes(U), pos, np.arange(len(U)), 10.0), 0.5, 0)
    path = tmp_path / "served.keras"
    wide.save(path)
    want = hybrid.user_vectors(wide, U[:4], np.zeros(4, np.int32), [np.zeros(0, np.int64)] * 4)
    np.save(tmp_path / "u.npy", U[:4])
    code = (
        "import sys, numpy as np, keras\n"
        "import towerserve.trainer.models\n"
        f"m = keras.saving.load_model({str(path)!r})\n"
        f"u = np.load({str(tmp_path / 'u.npy')!r})\n"
        "out = m.get_layer('user_tower')([u, np.zeros(4, np.int32), np.zeros((4, 1), np.int32)])\n"
        f"np.save({str(tmp_path / 'got.npy')!r}, np.asarray(out))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "got.npy"), want, atol=1e-6)
