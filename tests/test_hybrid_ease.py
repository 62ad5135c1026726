"""trainer.hybrid_ease: EASE folded into the served hybrid's towers, its weight chosen on validation."""

import os

os.environ["USE_TF"] = "0"

from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402
import pipeline  # noqa: E402
import pytest  # noqa: E402

from towerserve.server.core.csr import CSR  # noqa: E402
from towerserve.server.engine.mean_history import MeanHistory  # noqa: E402
from towerserve.trainer import collab  # noqa: E402
from towerserve.trainer.collab import validation_split  # noqa: E402
from towerserve.trainer.hybrid import blend as hybrid_blend  # noqa: E402
from towerserve.trainer.hybrid import ease as hybrid_ease  # noqa: E402
from towerserve.trainer.hybrid import fit as hybrid_fit  # noqa: E402
from towerserve.trainer.hybrid import model as hybrid  # noqa: E402
from towerserve.trainer.hybrid.config import HybridConfig  # noqa: E402

TINY = HybridConfig(dim=8, hidden=(16,), batch_size=128, epochs=3, train_history=6, learning_rate=1e-2)
FU, FI = 5, 7


def _grouped(seed: int, n_users: int = 240, groups: int = 6, size: int = 5):
    """Each user likes 4 items of one group of ``size``: an item-item structure EASE finds at once,
    with features that say nothing of it."""
    rng = np.random.default_rng(seed)
    group = rng.integers(groups, size=n_users)
    cols = [g * size + rng.choice(size, 4, replace=False) for g in group]
    pos = CSR.from_pairs(np.repeat(np.arange(n_users), 4), np.concatenate(cols), n_users, groups * size)
    U = rng.normal(size=(n_users, FU)).astype(np.float32)
    I = rng.normal(size=(groups * size, FI)).astype(np.float32)
    return U, I, pos, group


def _randomised(n_users: int, n_items: int, seed: int):
    model = hybrid.build_hybrid(FU, FI, n_users, n_items, TINY)
    pipeline.randomise_layers(model, seed)
    return model


def test_the_ease_part_adds_the_mean_of_the_historys_ease_rows():
    # Full rank: P Qᵀ = B exactly, so the served score is the hybrid's plus w · (x_u B) / |h_u|.
    U, I, pos, _ = _grouped(0)
    model = _randomised(len(U), len(I), 1)
    hybrid_fit.forget_unseen(model, pos)
    f = hybrid_ease.factors(pos, 20.0, rank=10_000)
    assert f.rank == len(I)
    wide = hybrid.with_served_parts(model, TINY, f.rank)
    hybrid_ease.install(wide, f, 0.7, pos)
    assert hybrid.ease_rank(wide) == len(I) and hybrid.ease_rank(model) == 0
    u0, i0 = hybrid_fit.all_vectors(model, U, I, pos)
    u1, i1 = hybrid_fit.all_vectors(wide, U, I, pos)
    d = TINY.dim
    np.testing.assert_allclose(u1[:, :d], u0[:, :d], atol=1e-6)  # the hybrid's part is copied as it was
    np.testing.assert_allclose(u1[:, -2:], u0[:, -2:], atol=1e-6)
    x = pos.dense_rows(np.arange(len(U))).astype(np.float64)
    b = collab.ease_weights(collab.gram(pos), 20.0)
    want = (u0 @ i0.T) + 0.7 * (x @ b) / x.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(u1 @ i1.T, want, rtol=1e-4, atol=1e-4)
    # Unseen users (no history) and the item tower (items added later) get nothing from it.
    cold = hybrid.user_vectors(wide, U[:3], np.zeros(3, np.int32), [np.zeros(0, np.int64)] * 3)
    assert np.all(cold[:, d : d + f.rank] == 0)
    content = np.asarray(wide.get_layer("item_tower")(I, training=False))
    assert np.all(content[:, d : d + f.rank] == 0)


def test_the_widened_user_tower_exports_and_keeps_the_servers_history_shortcut(tmp_path):
    from towerserve.export.towers import keras_to_onnx

    U, I, pos, _ = _grouped(2)
    model = _randomised(len(U), len(I), 3)
    hybrid_fit.forget_unseen(model, pos)
    f = hybrid_ease.factors(pos, 20.0, rank=8)
    wide = hybrid.with_served_parts(model, TINY, f.rank)
    hybrid_ease.install(wide, f, 1.3, pos)
    hybrid_blend.set_weights(wide, {"known": 0.2, "history": 0.5, "attributes": 0.9})
    path = keras_to_onnx(wide.get_layer("user_tower"), tmp_path / "user.onnx", "user_vector")
    run = pipeline.onnx_user_tower(path)

    known = hybrid.known_index(len(U), hybrid_fit.known_users(pos))
    loaded = hybrid.user_vectors(wide, U, known, hybrid_fit.histories(pos))
    np.testing.assert_allclose(
        run(U, known, hybrid.pad_histories(hybrid_fit.histories(pos))), loaded, atol=1e-4
    )
    shortcut = MeanHistory.build(run, lambda rows: U[rows], loaded, pos)
    assert shortcut is not None  # still affine in the mean of its history rows
    extra = [3, 17]
    pooled = sorted(set(pos.row(5).tolist()) | set(extra))
    want = run(U[[5]], known[[5]], hybrid.pad_histories([np.array(pooled)]))[0]
    np.testing.assert_allclose(shortcut.vector(5, extra), want, rtol=1e-4, atol=1e-4)


def test_validation_weighs_the_ease_part_in_where_the_towers_miss_the_structure():
    # A random hybrid knows nothing of the groups; EASE knows them: the blend must take EASE in, and
    # the served model must then rank each user's unseen group items first.
    U, I, pos, group = _grouped(4)
    model = _randomised(len(U), len(I), 5)
    fit, val = validation_split(pos, 0.25, 0)
    lam, table = hybrid_ease.choose_lambda(fit, val, hybrid_fit.judged_users(fit, val, 0))
    assert lam in table and len(table) == len(collab.EASE_LAMBDAS)
    ease = hybrid_ease.factors(fit, lam, TINY.ease_rank)
    blend = hybrid_blend.choose(model, U, I, fit, val, 0, ease)
    assert blend.ease_multiplier > 0
    assert blend.to_json()["ease"]["rank"] == ease.rank == len(I)
    served, applied = hybrid_blend.apply(model, U, I, pos, blend, 0, TINY)
    assert applied.ease["weight"] > 0 and hybrid.ease_rank(served) == ease.rank
    uvec, ivec = hybrid_fit.all_vectors(served, U, I, pos)
    scores = uvec @ ivec.T
    scores[pos.dense_rows(np.arange(len(U))) > 0] = -np.inf
    top = np.argmax(scores, axis=1)
    assert np.mean(top // 5 == group) > 0.95


def test_a_blend_without_ease_leaves_the_model_as_trained():
    U, I, pos, _ = _grouped(6)
    model = _randomised(len(U), len(I), 7)
    fit, val = validation_split(pos, 0.25, 0)
    blend = hybrid_blend.choose(model, U, I, fit, val, 0, None, "the recipe's ease_rank is 0")
    served, applied = hybrid_blend.apply(model, U, I, pos, blend, 0, TINY)
    assert served is model and hybrid.ease_rank(served) == 0
    assert applied.to_json()["ease_skipped"] == "the recipe's ease_rank is 0"


def test_no_ease_part_at_rank_0_or_above_eases_limit():
    assert hybrid_ease.skip_reason(1_000, 512) is None
    assert "ease_rank is 0" in hybrid_ease.skip_reason(1_000, 0)
    assert "above its limit" in hybrid_ease.skip_reason(collab.EASE_MAX_ITEMS + 1, 512)
    with pytest.raises(ValueError, match="ease_rank"):
        replace(TINY, ease_rank=-1)
