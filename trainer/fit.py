"""Fitting a feature-level model on (user id, item id) rows, and its towers' catalogue vectors."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from towerserve.server.core.features import feature_matrix

from .progress import epoch_callback

if TYPE_CHECKING:
    from .train_config import FitConfig, TrainConfig

# Tower passes over the catalogue build and feed this many entities' feature rows at a time: one
# pass at the seed scale (as before), ~1.2 GB of item features a pass at 1,000,000 items.
TOWER_CHUNK = 262_144


def fit_model(
    kind: str,
    U: np.ndarray | list,
    I: np.ndarray | list,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    cfg: TrainConfig,
    recipe: FitConfig,
    desc: str,
):
    """Builds and trains one model; returns (feature-level Keras model, history dict, seconds).

    ``U``/``I``: each side's feature matrix or its parts (server.features.feature_parts).
    """
    import keras

    from .models import build, with_lookup

    keras.utils.set_random_seed(cfg.seed)
    width = [x.shape[1] if isinstance(x, np.ndarray) else sum(t.shape[1] for t, _ in x) for x in (U, I)]
    model = build(kind, width[0], width[1], cfg.embedding_dim, cfg.hidden)
    trainable = with_lookup(model, U, I)
    trainable.compile(
        optimizer=keras.optimizers.Adam(recipe.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    u, i, y = rows
    # Keras' validation_split arithmetic: the first floor(n * (1 - v)) rows train, the rest validate.
    n_val = len(y) - int(np.floor(len(y) * (1.0 - recipe.validation)))
    # Rows arrive shuffled, so the last n_val are a random sample (and exactly Keras' validation_split).
    tr, va = slice(0, len(y) - n_val), slice(len(y) - n_val, len(y))
    steps = -(-(len(y) - n_val) // recipe.batch_size)
    callbacks = [epoch_callback(desc, recipe.epochs, steps, cfg.progress)]
    if recipe.patience > 0 and n_val > 0:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=recipe.patience, min_delta=1e-4, restore_best_weights=True
            )
        )
    t0 = time.perf_counter()
    hist = trainable.fit(
        [u[tr], i[tr]],
        y[tr],
        batch_size=recipe.batch_size,
        epochs=recipe.epochs,
        validation_data=([u[va], i[va]], y[va]) if n_val else None,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - t0
    history = {k: [float(x) for x in v] for k, v in hist.history.items()}
    return model, history, seconds


def tower_scores(model, kind: str, user_side: tuple, item_side: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors [n_users, d], item vectors [n_items, d]); logits = users @ items.T.

    Each side is (specs, tables, raw): feature rows are built ``TOWER_CHUNK`` entities at a time,
    never the whole entities x features matrix.
    """
    from .models import serving_towers

    def vectors(tower, specs, tables, raw) -> np.ndarray:
        n = len(next(iter(raw.values())))
        # A direct call, not predict(): predict traces a new tf.function for every fresh tower model.
        return np.concatenate(
            [
                np.asarray(
                    tower(
                        feature_matrix(specs, tables, raw, np.arange(s, min(n, s + TOWER_CHUNK))),
                        training=False,
                    ),
                    dtype=np.float32,
                )
                for s in range(0, n, TOWER_CHUNK)
            ]
        )

    ut, it = serving_towers(model, kind)
    return vectors(ut, *user_side), vectors(it, *item_side)
