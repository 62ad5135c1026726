"""The synthetic generator's world: its users, items and effect sizes, and the probability of every pair.

trainer/synth/generator.py documents the generative model and writes data sets from a World; trainer/synth/pooled.py
draws a world's pairs from a pool of items per user at scale. Both build worlds with :func:`draw_world`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .items import draw_texts_loop, draw_texts_vectorised
from .vocab import CATEGORIES, FEATURE_GROUPS, PERSONALITIES, PROFESSIONS

# Pair draws are made in blocks of users whose size depends only on the catalogue size, so a block
# never holds more than this many floats, whatever the scale.
BLOCK_CELLS = 2_000_000

# Effect sizes of the generative model (see the module docstring).
FAVOURITE_LIFT = 2.2
KAPPA = 1.5
GAMMA = 0.8
POP_SD = 0.5
ACTIVITY_SD = 0.4
NOISE_SD = 0.25
LATENT_DIM = 16
DEFAULT_LATENT_WEIGHT = 2.0
REGIMES = ("latent", "content")


@dataclass(frozen=True)
class World:
    """Everything drawn before the pairs: attributes plus the terms of the logit."""

    users: dict[str, np.ndarray]  # user_id, age, profession, personality (+ p_idx, prof_idx, act)
    items: dict[str, np.ndarray]  # item_id, description, features, price, category (+ cat_idx, groups, pop)
    taste: np.ndarray  # A: [n_personalities, n_categories]
    prof_groups: np.ndarray  # B: [n_professions, n_groups]
    intercept: float
    seed: int
    latent_weight: float = 0.0  # w; 0 is the content regime
    user_factors: np.ndarray | None = None  # P: [n_users, LATENT_DIM] (latent regime only)
    item_factors: np.ndarray | None = None  # Q: [n_items, LATENT_DIM]

    @property
    def regime(self) -> str:
        return "latent" if self.latent_weight else "content"

    def logits(self, users: np.ndarray, rng: np.random.Generator | None, latent: bool = True) -> np.ndarray:
        """Logits for the given users against every item [len(users), n_items], float32.

        ``latent=False`` leaves the latent term out: what a perfect content-only model could know.
        """
        u, it = self.users, self.items
        p, prof = u["p_idx"][users], u["prof_idx"][users]
        z = (
            self.taste[p][:, it["cat_idx"]]
            + KAPPA * (self.prof_groups[prof] @ it["groups"].T)
            + GAMMA * np.outer(u["z_age"][users], it["z_price"])
            + it["pop"][None, :]
            + u["act"][users][:, None]
            + self.intercept
        )
        # Only added when present, so the content regime computes exactly what version 1 did.
        if latent and self.latent_weight:
            scale = self.latent_weight / math.sqrt(LATENT_DIM)
            z = z + scale * (self.user_factors[users] @ self.item_factors.T)
        if rng is not None:
            z = z + rng.normal(0.0, NOISE_SD, size=z.shape)
        return z.astype(np.float32)

    def block(self, b: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """Replays block ``b``: (its user ids, true probabilities [size, n_items], its stream)."""
        n_users = len(self.users["user_id"])
        size = block_size(len(self.items["item_id"]))
        users = np.arange(b * size, min(n_users, (b + 1) * size))
        rng = np.random.default_rng([self.seed, 3, int(b)])
        return users, sigmoid(self.logits(users, rng)), rng


def sigmoid(x: np.ndarray) -> np.ndarray:
    # Not server.numerics.sigmoid: that one computes in float64 by another formula, and the
    # generator's files must stay byte-identical to the ones this float32 expression wrote.
    return 1.0 / (1.0 + np.exp(-x))


def _id_width(n: int) -> int:
    return max(4, len(str(n)))


def draw_world(
    n_users: int, n_items: int, seed: int, density: float, latent_weight: float = 0.0, pooled: bool = False
) -> World:
    # ``pooled``: texts drawn vectorised, intercept left at 0 (synth_pooled.py solves it for the pool).
    pers_names = list(PERSONALITIES)
    cat_names = list(CATEGORIES)
    prof_names = list(PROFESSIONS)
    group_names = list(FEATURE_GROUPS)
    rng = np.random.default_rng([seed, 0])
    taste = rng.normal(-0.4, 0.5, size=(len(pers_names), len(cat_names)))
    for p, name in enumerate(pers_names):
        for fav in PERSONALITIES[name][1]:
            taste[p, cat_names.index(fav)] += FAVOURITE_LIFT
    prof_groups = rng.normal(0.0, 1.0, size=(len(prof_names), len(group_names)))
    # Each personality leans to a few professions, so profession also hints at taste.
    prof_given_pers = rng.dirichlet(np.full(len(prof_names), 0.6), size=len(pers_names))
    groups_given_cat = rng.dirichlet(np.full(len(group_names), 0.8), size=len(cat_names))

    # Users.
    rng = np.random.default_rng([seed, 1])
    p_idx = rng.integers(0, len(pers_names), size=n_users)
    cum = np.cumsum(prof_given_pers, axis=1)
    prof_idx = np.minimum((rng.random(n_users)[:, None] > cum[p_idx]).sum(axis=1), len(prof_names) - 1)
    mean_age = np.array([PROFESSIONS[n] for n in prof_names])[prof_idx]
    age = np.clip(np.rint(rng.normal(mean_age, 8.0)), 18, 90).astype(np.int64)
    act = rng.normal(0.0, ACTIVITY_SD, size=n_users)
    width = _id_width(int(np.bincount(p_idx).max()))
    counters: dict[int, int] = {}
    user_ids = []
    for p in p_idx:  # ids count up within each personality, like the notebook's tec_0001
        counters[p] = counters.get(p, 0) + 1
        user_ids.append(f"{PERSONALITIES[pers_names[p]][0]}_{counters[p]:0{width}d}")
    users = {
        "user_id": np.array(user_ids),
        "age": age,
        "profession": np.array(prof_names)[prof_idx],
        "personality": np.array(pers_names)[p_idx],
        "p_idx": p_idx,
        "prof_idx": prof_idx,
        "act": act,
        "z_age": (age - 40.0) / 14.0,
    }

    # Items.
    rng = np.random.default_rng([seed, 2])
    cat_idx = rng.integers(0, len(cat_names), size=n_items)
    base = np.array([CATEGORIES[c][0] for c in cat_names])[cat_idx]
    price = np.maximum(1, np.rint(base * np.exp(rng.normal(0.0, 0.45, size=n_items)))).astype(np.int64)
    # Pooled worlds are new (no files to match), so they may use the fast draw (trainer/synth/items.py).
    draw_texts = draw_texts_vectorised if pooled else draw_texts_loop
    descriptions, features, groups = draw_texts(rng, cat_idx, groups_given_cat)
    groups /= groups.sum(axis=1, keepdims=True)
    logp = np.log(price)
    width = _id_width(n_items)
    items = {
        "item_id": np.array([f"item_{i + 1:0{width}d}" for i in range(n_items)]),
        "description": np.array(descriptions),
        "features": np.array(features),
        "price": price,
        "category": np.array(cat_names)[cat_idx],
        "cat_idx": cat_idx,
        "groups": groups,
        "pop": rng.normal(0.0, POP_SD, size=n_items),
        "z_price": (logp - logp.mean()) / (logp.std() + 1e-9),
    }
    world = World(users=users, items=items, taste=taste, prof_groups=prof_groups, intercept=0.0, seed=seed)
    if latent_weight:
        # Its own stream, drawn after everything else: the content regime's draws stay untouched.
        rng = np.random.default_rng([seed, 5])
        world = World(
            **{
                **world.__dict__,
                "latent_weight": float(latent_weight),
                "user_factors": rng.normal(0.0, 1.0, size=(n_users, LATENT_DIM)),
                "item_factors": rng.normal(0.0, 1.0, size=(n_items, LATENT_DIM)),
            }
        )
    if pooled:
        return world
    return World(**{**world.__dict__, "intercept": _solve_intercept(world, density, seed)})


def _solve_intercept(world: World, density: float, seed: int) -> float:
    """Finds b so that the mean probability over a fixed sample of pairs equals ``density``."""
    n_users = len(world.users["user_id"])
    n_items = len(world.items["item_id"])
    rng = np.random.default_rng([seed, 4])
    sample = rng.choice(n_users, size=min(n_users, max(1, 4 * BLOCK_CELLS // n_items)), replace=False)
    z = world.logits(np.sort(sample), rng).astype(np.float64)
    lo, hi = -30.0, 30.0
    for _ in range(80):  # bisection: the mean of a sigmoid is monotone in its shift
        mid = (lo + hi) / 2
        if sigmoid(z + mid).mean() < density:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def block_size(n_items: int) -> int:
    return max(1, BLOCK_CELLS // max(1, n_items))


def iter_blocks(world: World) -> Iterator[tuple[np.ndarray, np.ndarray, np.random.Generator]]:
    """Yields (user ids of the block, true probabilities [b, n_items], the block's stream)."""
    n_users = len(world.users["user_id"])
    for b in range(-(-n_users // block_size(len(world.items["item_id"])))):
        yield world.block(b)
