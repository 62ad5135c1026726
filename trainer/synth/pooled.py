"""Pooled pair sampling: the generator at catalogue sizes where drawing every user x item cell is too slow.

The dense generator draws a Bernoulli for each of the n_users x n_items cells: at 10⁶ x 10⁶ that is
10¹² logits (~5 hours). The pooled generator draws only a pool of cells: every (user, item) cell is
drawn k_ui ~ Poisson(M / n_items) times, independently of everything else, so each user's pool holds
~M items (Poisson, mean M(1 - ...) ≈ M, ±√M), uniformly at random. Each draw gets a logit with the
same terms as the dense generator (trainer/synth/generator.py's docstring), its own pair noise eps ~ N(0, 0.25²)
included, and is a positive with probability sigmoid(z_ui + eps + b), where z_ui is the noiseless
logit without intercept and b is solved on a fixed sample of uniform cells so that the mean
within-pool probability is ~density x n_items / M (exactly: the mean of P(positive) below over the
sample is the density), so the expected positives over all cells match the target density. A cell
drawn positive more than once is one pair.

Hence P(u, i positive) = 1 - exp(-(M / n_items) · E_eps[sigmoid(z_ui + b + eps)]), the same
increasing function of the noiseless logit for every cell, so the Bayes-optimal ranking (the Oracle)
ranks a user's items by ``World.logits(users, rng=None)``: no block replay is needed, any user is
scored directly. The dense Oracle replays each cell's eps and so knows the realised probability; the
pooled one cannot (eps exists only for drawn cells), and scores the expectation over eps, which is
the best any model can do. :func:`true_probabilities` gives those probabilities (eps integrated by
Gauss-Hermite quadrature) for tests and small data sets.

Pools are drawn as Poisson counts rather than M distinct items per user because the counts can be
drawn item by item for a whole block of users, and walking the items in order reads the item-side
tables sequentially; fixed pools of M sorted items per user with a random gather per cell measured
~540 ns a draw against ~100-200 ns on the same busy machine. The pool must hold many times a user's expected positives, or the within-pool sigmoid
saturates (a user's top items become near-certain and their order is lost in the data, though not in
the Oracle): see ``POOL_PER_POSITIVE``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from .world import GAMMA, KAPPA, LATENT_DIM, NOISE_SD, World, block_size, draw_world, sigmoid

__all__ = [
    "AUTO_POOLED_CELLS",
    "default_pool",
    "choose_sampling",
    "iter_pooled_blocks",
    "pool_size",
    "pooled_world",
    "solve_intercept",
    "true_probabilities",
]

SAMPLINGS = ("dense", "pooled", "auto")
# "auto" pools above 2 x 10⁹ cells (long form): below it the dense generator's one logit per cell
# stays affordable, and every existing data set (seed: 10⁷ cells; notebook and scale tests: ≤ 10⁹)
# keeps its dense, byte-identical files.
AUTO_POOLED_CELLS = 2_000_000_000
# The default pool M holds ~100 times a user's expected positives k = density x n_items, as a power of
# two in [1,024, 4,096]: 2,048 at k = 20 (10⁶ x 10⁶ at density 2 x 10⁻⁵). A cell's probability is
# capped near M / n_items and saturates when the within-pool rate k / M is high: measured on the
# latent world (k = 20; 300 users x 100,000 items, expected values), the share of positives drawn where sigmoid(z + eps + b) > 0.5 is 31 % at
# M = 512, 24 % at 1,024, 18 % at 2,048, 14 % at 4,096 and 7 % at 16,384; the dense model, 3 %. The
# cost grows with M (n_users x M draws: ~100 ns each on a busy core), so 4,096 is the most by default.
POOL_PER_POSITIVE = 100
MIN_POOL, MAX_POOL = 1024, 4096
# Draws per block of users (2²⁴: 4,096 users at M = 4,096); each block draws one Poisson count per
# item, so larger blocks spread that cost over more draws.
BLOCK_DRAWS = 1 << 24
# Draws evaluated at once: each chunk's arrays stay under glibc's 32 MB mmap threshold, so they are
# reused from the heap rather than mapped afresh (page faults cost as much as the work at 2²⁰).
CHUNK_DRAWS = 1 << 18
QUADRATURE_NODES = 12  # Gauss-Hermite nodes for E_eps[sigmoid]: exact to ~1e-7 at sd 0.25


def choose_sampling(sampling: str, n_users: int, n_items: int, long_form: bool) -> str:
    """Resolves "auto" to "dense" or "pooled"; pooled data exist in long form only."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {', '.join(SAMPLINGS)} (got {sampling!r})")
    if sampling == "auto":
        # Matrix form above the threshold is a CSV of ≥ 2 x 10⁹ cells: it stays dense, as before.
        return "pooled" if long_form and n_users * n_items > AUTO_POOLED_CELLS else "dense"
    if sampling == "pooled" and not long_form:
        raise ValueError("pooled sampling writes long form only (use --long)")
    return sampling


def default_pool(n_items: int, density: float) -> int:
    """M for ~``POOL_PER_POSITIVE`` draws per expected positive, a power of two in [MIN_POOL, MAX_POOL]."""
    want = POOL_PER_POSITIVE * density * n_items
    return int(min(MAX_POOL, max(MIN_POOL, 2 ** math.ceil(math.log2(max(want, 1.0))))))


def pool_size(n_items: int, density: float, pool: int | None) -> int:
    """M: ``pool`` (default :func:`default_pool`), capped at the catalogue size."""
    m = default_pool(n_items, density) if pool is None else int(pool)
    if m < 1:
        raise ValueError(f"pool must be >= 1 (got {pool})")
    m = min(m, n_items)
    if density * n_items / m >= 0.5:
        raise ValueError(
            f"a pool of {m} of {n_items} items cannot hold density {density}: the within-pool rate "
            f"would be {density * n_items / m:.2f}; use a larger --pool"
        )
    return m


class _Cells:
    """The logit's terms arranged for per-cell evaluation, in float32 (cost is a few memory reads a cell).

    z_ui = T[i, (p_u, prof_u)] + U_u . I_i, with the table T = taste[p, cat_i] + KAPPA B[prof] . f_i +
    pop_i for every (personality, profession) pair of each item (96 floats a row, 384 MB at 10⁶ items:
    one read instead of a 7-wide dot and a taste lookup), U_u = [(w/4) P_u, GAMMA z_age_u, act_u] and
    I_i = [Q_i, z_price_i, 1]. Cells come in item order (see :func:`iter_pooled_blocks`), so T and I
    are read nearly sequentially.
    """

    def __init__(self, world: World):
        u, it = world.users, world.items
        n_users, n_items = len(u["user_id"]), len(it["item_id"])
        n_prof = world.prof_groups.shape[0]
        self.combo = (u["p_idx"] * n_prof + u["prof_idx"]).astype(np.int64)
        self.width = world.taste.shape[0] * n_prof
        self.table = np.empty((n_items, self.width), dtype=np.float32)
        kb = KAPPA * world.prof_groups  # [n_prof, n_groups]
        for s in range(0, n_items, 65_536):  # in slices: the float64 temporaries stay small
            sl = slice(s, min(n_items, s + 65_536))
            t = world.taste[:, it["cat_idx"][sl]].T[:, :, None] + (it["groups"][sl] @ kb.T)[:, None, :]
            self.table[sl] = (t + it["pop"][sl, None, None]).reshape(-1, self.width)
        self.flat = self.table.ravel()
        scale = world.latent_weight / math.sqrt(LATENT_DIM) if world.latent_weight else 0.0
        ufac = scale * world.user_factors if scale else np.zeros((n_users, 0))
        ifac = world.item_factors if scale else np.zeros((n_items, 0))
        self.user_vec = np.hstack([ufac, GAMMA * u["z_age"][:, None], u["act"][:, None]]).astype(np.float32)
        self.item_vec = np.hstack([ifac, it["z_price"][:, None], np.ones((n_items, 1))]).astype(np.float32)

    def logits(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """z without intercept or noise for cells (users[j], items[j]): flat int arrays -> float32."""
        z = np.take(self.flat, items * self.width + self.combo[users])
        uv, iv = np.take(self.user_vec, users, axis=0), np.take(self.item_vec, items, axis=0)
        z += np.einsum("nk,nk->n", uv, iv)
        return z


def solve_intercept(world: World, density: float, pool: int, seed: int, cells: _Cells | None = None) -> float:
    """b such that the mean of 1 - exp(-(M / n) sigmoid(z + eps + b)) over a fixed sample of cells is the density.

    That is each cell's P(positive) with eps drawn once (the model's E_eps is inside the exp: the
    difference is second order in M / n x sigmoid, which stays below the within-pool rate cap).
    """
    cells = cells or _Cells(world)
    n_users, n_items = len(world.users["user_id"]), len(world.items["item_id"])
    lam = pool / n_items
    rng = np.random.default_rng([seed, 6])
    # 2²⁰ uniform cells, as pool draws are: the per-user terms (activity, taste, latent factors) are
    # averaged over many users, not a few whole rows.
    users = rng.integers(0, n_users, size=1 << 20)
    items = rng.integers(0, n_items, size=1 << 20)
    z = cells.logits(users, items).astype(np.float64)
    z += rng.normal(0.0, NOISE_SD, size=z.shape)
    lo, hi = -40.0, 40.0
    for _ in range(80):  # bisection: the mean of a sigmoid is monotone in its shift
        mid = (lo + hi) / 2
        if -np.expm1(-lam * sigmoid(z + mid)).mean() < density:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def pooled_world(n_users: int, n_items: int, seed: int, density: float, weight: float, pool: int) -> World:
    """The world of pooled data: item texts drawn vectorised, the intercept solved for the pool."""
    world = draw_world(n_users, n_items, seed, density, weight, pooled=True)
    return World(**{**world.__dict__, "intercept": solve_intercept(world, density, pool, seed)})


def pooled_block_users(pool: int) -> int:
    return max(1, BLOCK_DRAWS // pool)


def n_pooled_blocks(n_users: int, pool: int) -> int:
    return -(-n_users // pooled_block_users(pool))


def iter_pooled_blocks(world: World, pool: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields (user ids of the block, block-local row, item) of each positive, sorted by row then item.

    Each block of users draws from its own stream [seed, 7, block], so the same seed gives the same
    pairs. The block's draws are made item by item: item i gets Poisson(block users x M / n_items)
    draws, each for a uniform user of the block, which is the same as Poisson(M / n_items) draws for
    every cell, independently (in item order: see the module docstring for why).
    """
    cells = _Cells(world)
    n_users, n_items = len(world.users["user_id"]), len(world.items["item_id"])
    for b in range(n_pooled_blocks(n_users, pool)):
        keys = [rows[hit] * n_items + items[hit] for rows, items, hit in _block_draws(world, cells, pool, b)]
        # A cell drawn positive twice is one pair; np.unique also sorts by row, then item.
        key = np.unique(np.concatenate(keys))
        size = pooled_block_users(pool)
        yield np.arange(b * size, min(n_users, (b + 1) * size)), key // n_items, key % n_items


def _block_draws(
    world: World, cells: _Cells, pool: int, b: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Block ``b``'s draws, chunk by chunk in item order: (block-local row, item, positive?)."""
    n_users, n_items = len(world.users["user_id"]), len(world.items["item_id"])
    size = pooled_block_users(pool)
    users = np.arange(b * size, min(n_users, (b + 1) * size))
    rng = np.random.default_rng([world.seed, 7, b])
    counts = rng.poisson(len(users) * pool / n_items, size=n_items)
    # Item ranges of ~CHUNK_DRAWS draws each, so the chunk's arrays stay small.
    ends = np.searchsorted(np.cumsum(counts), np.arange(CHUNK_DRAWS, counts.sum(), CHUNK_DRAWS))
    for lo, hi in zip(np.r_[0, ends], np.r_[ends, n_items]):
        items = np.repeat(np.arange(lo, hi, dtype=np.int64), counts[lo:hi])
        rows = rng.integers(0, len(users), size=len(items))
        z = cells.logits(users[rows], items)
        eps = rng.standard_normal(len(z), dtype=np.float32)
        eps *= np.float32(NOISE_SD)
        z += eps
        z += np.float32(world.intercept)
        # u < sigmoid(z) as u * (1 + exp(-z)) < 1, in place: no temporaries on the hot path.
        np.negative(z, out=z)
        np.exp(z, out=z)
        z += 1.0
        u = rng.random(len(z), dtype=np.float32)
        u *= z
        yield rows, items, u < 1.0


def true_probabilities(world: World, pool: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (user ids, P(positive) [b, n_items]) block by block: 1 - exp(-(M/n) E_eps[sigmoid(z + eps)])."""
    n_users, n_items = len(world.users["user_id"]), len(world.items["item_id"])
    nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
    weights = weights / weights.sum()
    size = block_size(n_items)
    for start in range(0, n_users, size):
        users = np.arange(start, min(n_users, start + size))
        z = world.logits(users, None).astype(np.float64)  # the intercept is in
        s = sum(w * sigmoid(z + NOISE_SD * x) for x, w in zip(nodes, weights))
        yield users, (-np.expm1(-pool / n_items * s)).astype(np.float32)
