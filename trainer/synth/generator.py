"""Synthetic data in the seed schema from a documented generative model with a known oracle.

The probability that user u interacts with item i is

    p(u, i) = sigmoid(b + A[personality_u, category_i]          # taste: personality <-> category
                        + kappa * B[profession_u] . f_i          # profession <-> item feature groups
                        + gamma * z_age_u * z_logprice_i         # older users buy dearer things
                        + w * P_u . Q_i / sqrt(16)               # latent taste (regime "latent" only)
                        + pop_i + act_u + eps_ui)                # popularity, activity, pair noise

where f_i is the share of the item's feature phrases in each feature group, pop_i ~ N(0, 0.5),
act_u ~ N(0, 0.4), eps_ui ~ N(0, 0.25), and b is solved so the mean of p hits the target density.

Two regimes. ``"latent"`` (the default) adds per-user and per-item factors P_u, Q_i ~ N(0, I_16) that
no attribute or text expresses, so the latent term has standard deviation w (``latent_weight``,
default 2.0): like real data, content predicts a cold user's or item's taste, but for known users
the collaborative signal (who bought what) dominates. ``"content"`` is the generator before the
latent term (every attribute-driven term, nothing else); its files are byte-identical to those of
generator version 1 for the same seed, so existing data sets can be regenerated.

Users and items are drawn first (personality -> profession -> age; category -> features, text,
price; then the latent factors from their own stream); pairs are then drawn one block of users at a
time, each block from its own random stream, so the same seed gives byte-identical files and the
oracle can be recomputed block by block without ever holding a dense matrix. Above 2 x 10⁹ cells
(long form), the pairs are drawn from a random pool of items per user instead of every cell
(``sampling="pooled"``: trainer/synth/pooled.py, which also says what its Oracle is).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..data import GENERATOR_FILE, ITEMS_FILE, LONG_FILE, MATRIX_FILE, TRUTH_FILE, USERS_FILE
from . import pooled as synth_pooled
from .vocab import CATEGORIES, FEATURE_GROUPS, PERSONALITIES, PROFESSIONS
from .world import (
    DEFAULT_LATENT_WEIGHT,
    LATENT_DIM,
    REGIMES,
    World,
    block_size,
    draw_world,
    iter_blocks,
)
from .write import write_csv, write_interactions, write_pairs

__all__ = [
    "CATEGORIES",
    "FEATURE_GROUPS",
    "PERSONALITIES",
    "PROFESSIONS",
    "REGIMES",
    "World",
    "block_size",
    "generate",
    "iter_blocks",
    "load_world",
    "true_probabilities",
]

_LOGGER = logging.getLogger(__name__)

# Version 1 files have no latent term; the content regime still writes them, byte for byte.
GENERATOR_VERSION = 2
CONTENT_VERSION = 1
NOTEBOOK_DENSITY = 0.0966  # the notebook's matrix: 966,286 ones in 10,000 x 1,000


def _latent_weight(regime: str, latent_weight: float | None) -> float:
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)} (got {regime!r})")
    if regime == "content":
        if latent_weight:
            raise ValueError(f"the content regime has no latent term (got latent_weight={latent_weight})")
        return 0.0
    w = DEFAULT_LATENT_WEIGHT if latent_weight is None else float(latent_weight)
    if not (math.isfinite(w) and w > 0):
        raise ValueError(
            f"latent_weight must be a finite number > 0 (got {latent_weight}); use regime='content'"
        )
    return w


def generate(
    out: Path | str,
    n_users: int = 10_000,
    n_items: int = 1_000,
    seed: int = 42,
    density: float = NOTEBOOK_DENSITY,
    long_form: bool = False,
    progress: bool = True,
    regime: str = "latent",
    latent_weight: float | None = None,
    sampling: str = "auto",
    pool: int | None = None,
) -> dict:
    """Writes users.csv, items.csv and the interactions (wide matrix, or long form) to ``out``.

    The wide form also gets true_probabilities.npy (float32 [n_users, n_items]) beside the CSVs;
    both forms get generator.json, from which :func:`true_probabilities` recomputes any block.

    Args:
        regime: "latent" (default: collaborative signal no attribute expresses) or "content"
            (attribute-driven only; byte-identical to generator version 1).
        latent_weight: standard deviation of the latent term (latent regime; default 2.0).
        sampling: "dense" (every cell), "pooled" (long form only: pairs drawn from a random pool of
            ~``pool`` items per user, trainer/synth/pooled.py) or "auto" (pooled above 2 x 10⁹ cells).
        pool: mean pool size M (pooled; default ~100 x the expected positives per user, 1,024-4,096).

    Returns:
        A summary: sizes, positives, density, files written (and the regime, for "latent").
    """
    if n_users < 1 or n_items < 1:
        raise ValueError(f"users and items must be >= 1 (got {n_users}, {n_items})")
    if not 0.0 < density < 1.0:
        raise ValueError(f"density must be in (0, 1) (got {density})")
    weight = _latent_weight(regime, latent_weight)
    pooled = synth_pooled.choose_sampling(sampling, n_users, n_items, long_form) == "pooled"
    m = synth_pooled.pool_size(n_items, density, pool) if pooled else 0
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = (n_users, n_items, seed, density, weight)
    world = synth_pooled.pooled_world(*args, m) if pooled else draw_world(*args)
    u, it = world.users, world.items
    write_csv(
        out / USERS_FILE,
        ["user_id", "age", "profession", "personality"],
        [u["user_id"], u["age"], u["profession"], u["personality"]],
    )
    write_csv(
        out / ITEMS_FILE,
        ["item_id", "description", "features", "price", "category"],
        [it["item_id"], it["description"], it["features"], it["price"], it["category"]],
    )
    # A stale file of the other form would be read instead of the new one.
    for stale in (out / MATRIX_FILE, out / LONG_FILE, out / TRUTH_FILE):
        stale.unlink(missing_ok=True)
    ids = (u["user_id"], it["item_id"])
    if pooled:
        blocks, n_blocks = synth_pooled.iter_pooled_blocks(world, m), synth_pooled.n_pooled_blocks(n_users, m)
        positives = write_pairs(out, *ids, blocks, progress, n_blocks)
    else:
        n_blocks = -(-n_users // block_size(n_items))
        positives = write_interactions(out, *ids, iter_blocks(world), long_form, progress, n_blocks)
    summary = {
        "generator_version": GENERATOR_VERSION if weight else CONTENT_VERSION,
        "seed": seed,
        "users": n_users,
        "items": n_items,
        "target_density": density,
        "intercept": world.intercept,
        "positives": positives,
        "density": positives / (n_users * n_items),
        "form": "long" if long_form else "matrix",
        "block_users": synth_pooled.pooled_block_users(m) if pooled else block_size(n_items),
    }
    if pooled:  # dense files have neither key, and must stay byte-identical
        summary.update(sampling="pooled", pool=m)
    if weight:  # version 1 files have none of these keys, and the content regime must match them
        summary.update(regime="latent", latent_weight=weight, latent_dim=LATENT_DIM)
    (out / GENERATOR_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _LOGGER.info("wrote %s: %d positives (%.2f %%)", out, positives, 100 * summary["density"])
    return summary


def load_world(root: Path | str) -> World:
    """Rebuilds the generator's world from generator.json (same version and parameters)."""
    path = Path(root) / GENERATOR_FILE
    meta = json.loads(path.read_text())
    version = meta.get("generator_version")
    if version not in (CONTENT_VERSION, GENERATOR_VERSION):
        raise ValueError(
            f"{path}: generator version {version} cannot be replayed by version {GENERATOR_VERSION} "
            f"(it replays versions {CONTENT_VERSION} and {GENERATOR_VERSION})"
        )
    weight = float(meta.get("latent_weight", 0.0)) if version == GENERATOR_VERSION else 0.0
    if version == GENERATOR_VERSION and meta.get("latent_dim") != LATENT_DIM:
        raise ValueError(
            f"{path}: latent_dim {meta.get('latent_dim')} cannot be replayed (expected {LATENT_DIM})"
        )
    args = (meta["users"], meta["items"], meta["seed"], meta["target_density"], weight)
    if _pool(meta):
        return synth_pooled.pooled_world(*args, _pool(meta))
    return draw_world(*args)


def _pool(meta: dict) -> int:
    """The pool size of pooled data (generator.json's "pool"), 0 for dense data."""
    return int(meta["pool"]) if meta.get("sampling") == "pooled" else 0


def true_probabilities(root: Path | str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (user ids, true probabilities [b, n_items]) block by block for a generated data set.

    Reads true_probabilities.npy when present, else replays the generator from generator.json; for
    pooled data, P(positive) = 1 - exp(-(M / n_items) E_eps[sigmoid(logit + eps)]) (synth_pooled.py).
    """
    root = Path(root)
    if (root / TRUTH_FILE).is_file():
        probs = np.load(root / TRUTH_FILE, mmap_mode="r")
        size = block_size(probs.shape[1])
        for start in range(0, probs.shape[0], size):
            users = np.arange(start, min(probs.shape[0], start + size))
            yield users, np.asarray(probs[users])
        return
    pool = _pool(json.loads((root / GENERATOR_FILE).read_text()))
    if pool:
        from .pooled import true_probabilities as pooled_probabilities

        yield from pooled_probabilities(load_world(root), pool)
        return
    for users, probs, _ in iter_blocks(load_world(root)):
        yield users, probs
