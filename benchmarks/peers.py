"""Peer recommenders on towerserve's recorded splits, scored by its own metric code:
`.venv/bin/python benchmarks/peers.py DATA ARTIFACTS` (install the peers first: `make bench-deps`).

DATA is the data set `towerserve train` read; ARTIFACTS is the folder it wrote (splits/*.npz,
metrics.json, manifest.json). Nothing is re-split: every peer trains on the recorded training positives
and is ranked by server/core/ranking_metrics.py's full ranking (training positives masked) over the same users that
metrics.json's rows were judged on; MostPopular is recomputed here and checked against metrics.json.

Peers: implicit's ALS and BPR, LightFM WARP on ids only, and LightFM WARP with user and item features
(one token per column value: profession, personality, age by decade; category, each `features` token,
price in quantile bins; plus LightFM's identity features, for the users and items with training
positives only, so an unseen user or item is its features alone, as the hybrid forgets unseen ids).

Hyper-parameters are chosen as the hybrid's recipe is: by NDCG@10 on the validation split that
trainer/hybrid/search.py carves out of the holdout's training positives (collab.validation_split with
hybrid_search.VALIDATION_SHARE and the run's seed, judged on hybrid_fit.judged_users); the test
positives are never read while choosing. The chosen setting (for LightFM with its epoch count) is
refitted on every training positive and scored on the test positives once. The cold split reuses the
holdout's choice, as the hybrid does. On it, only LightFM with features can rank the held-out users; the
pure collaborative peers (ALS, BPR, LightFM on ids) cannot, and their cold rows are the popularity
ranking of the cold split's training positives (MostPopular's numbers), marked "fallback" everywhere.

Writes ARTIFACTS/peers.json (--out: every validation score too) and ARTIFACTS/peers.png (--plot: the
peers beside the project's models and baselines from metrics.json).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, table  # noqa: E402
from plot_models import MODELS, NAMES, ORDER  # noqa: E402

from towerserve.server.core.csr import CSR  # noqa: E402
from towerserve.server.core.ranking_metrics import DEFAULT_KS, ScoreFn, full_ranking_metrics  # noqa: E402
from towerserve.server.core.splits import RecordedSplit, load_recorded_split  # noqa: E402

_LOGGER = logging.getLogger("peers")

# The column a chosen setting is printed in: short names for the grid's keys.
SHORT = {
    "factors": "f",
    "regularization": "reg",
    "alpha": "alpha",
    "iterations": "it",
    "learning_rate": "lr",
    "no_components": "dim",
    "epochs": "epochs",
}


@dataclass(frozen=True)
class PeersConfig:
    """What the comparison tries. Every grid point is a full fit; the whole run takes a few minutes on
    2 cores at MovieLens-100K scale (943 x 1,682, ~44,000 training positives).

    The grids reach past the usual textbook values because on MovieLens-100K the narrower grids first
    tried chose settings on their edges (ALS: the smallest model and the largest regularisation; BPR:
    the smallest learning rate; LightFM with features: the last of 50 epochs), which undersells a peer.
    Widening them raised validation NDCG@10 there (validation share 0.1): ALS 0.150 -> 0.179
    (regularization 30: implicit does not scale it by a user's interaction count), BPR 0.117 -> 0.140
    (learning rate 0.003 over 200 iterations), LightFM with features 0.154 -> 0.169 (128 components,
    ~150 epochs). Some choices still sit on an edge, where the last gains were small; the run names
    them (``grid_edges``).

    Attributes:
        peers: which peers to run (PEERS' names).
        threads: per fit. Above 1, BPR and LightFM update in parallel without locks ("hogwild"): faster,
            but no longer bit-reproducible for a seed; 1 keeps every number repeatable.
        lightfm_max_epochs / lightfm_every / lightfm_patience: LightFM's epoch count is chosen on
            validation among every, 2 x every, ... up to max epochs: one fit per setting, evaluated as
            it goes, stopped after ``patience`` evaluations without a new best.
        price_bins: quantile bins of price (fewer when prices repeat).
    """

    peers: tuple[str, ...] = ("als", "bpr", "lightfm", "lightfm_features")
    threads: int = 1
    als_factors: tuple[int, ...] = (32, 64, 128)
    als_regularization: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 30.0, 100.0)
    als_alpha: tuple[float, ...] = (1.0, 3.0, 10.0, 40.0)
    als_iterations: int = 20
    bpr_factors: tuple[int, ...] = (32, 64, 128)
    bpr_learning_rate: tuple[float, ...] = (0.003, 0.01, 0.05)
    bpr_regularization: tuple[float, ...] = (0.001, 0.01)
    bpr_iterations: tuple[int, ...] = (100, 200)
    lightfm_components: tuple[int, ...] = (32, 64, 128)
    lightfm_learning_rate: tuple[float, ...] = (0.05,)
    lightfm_alpha: tuple[float, ...] = (0.0, 1e-5, 1e-4)  # item_alpha = user_alpha
    lightfm_max_epochs: int = 150
    lightfm_every: int = 5
    lightfm_patience: int = 6
    price_bins: int = 10

    def __post_init__(self):
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown or not self.peers:
            raise ValueError(f"peers must be among {sorted(PEERS)} (got {list(self.peers)})")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1 (got {self.threads})")
        if self.lightfm_patience < 1:
            raise ValueError(f"lightfm_patience must be >= 1 (got {self.lightfm_patience})")
        if not 1 <= self.lightfm_every <= self.lightfm_max_epochs:
            raise ValueError(
                f"need 1 <= lightfm_every <= lightfm_max_epochs (got {self.lightfm_every}, {self.lightfm_max_epochs})"
            )

    def lightfm_epochs(self) -> tuple[int, ...]:
        return tuple(range(self.lightfm_every, self.lightfm_max_epochs + 1, self.lightfm_every))


# --------------------------------------------------------------------------------------------------
# Features for LightFM, from the seed schema (any data set in it, not only MovieLens).


def _one_hot(tokens: list[list[str]]):
    """0/1 scipy CSR [len(tokens), vocabulary] and the vocabulary, sorted."""
    import scipy.sparse as sp

    vocab = sorted({t for row in tokens for t in row})
    col = {t: j for j, t in enumerate(vocab)}
    rows = np.repeat(np.arange(len(tokens)), [len(r) for r in tokens])
    cols = np.fromiter((col[t] for r in tokens for t in r), dtype=np.int64, count=len(rows))
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(tokens), len(vocab)))
    m.sum_duplicates()
    m.data[:] = 1.0
    return m, vocab


@dataclass(frozen=True)
class Features:
    """LightFM's side information for one split: token matrices, identity added per training set.

    Attributes:
        users: scipy CSR [n_users, user tokens], 0/1.
        items: scipy CSR [n_items, item tokens], 0/1.
        user_vocab / item_vocab: the tokens, in column order.
    """

    users: object
    items: object
    user_vocab: list[str]
    item_vocab: list[str]

    @classmethod
    def build(cls, users, items, warm_items: np.ndarray, price_bins: int) -> Features:
        """Tokens from the seed schema's users and items frames (trainer/data.py's Dataset).

        Price bins are fitted on ``warm_items`` (the split's training items), as training fits its
        scalers on the split's training entities; an item outside them still gets the bin its price
        falls in.
        """
        decade = (users["age"].to_numpy(dtype=np.float64) // 10 * 10).astype(int)
        utok = [
            [f"profession={p}", f"personality={q}", f"age={a}s"]
            for p, q, a in zip(users["profession"].astype(str), users["personality"].astype(str), decade)
        ]
        price = items["price"].to_numpy(dtype=np.float64)
        fitted = price[warm_items] if len(warm_items) else price
        edges = np.unique(np.quantile(fitted, np.linspace(0.0, 1.0, price_bins + 1)[1:-1]))
        bins = np.searchsorted(edges, price, side="right")
        itok = [
            [f"category={c}", f"price=q{b}"] + [f"feature={t.strip()}" for t in f.split(",") if t.strip()]
            for c, f, b in zip(items["category"].astype(str), items["features"].astype(str), bins)
        ]
        (um, uv), (im, iv) = _one_hot(utok), _one_hot(itok)
        return cls(um, im, uv, iv)

    def matrices(self, train: CSR):
        """(user features, item features) for LightFM, fitted on ``train``.

        Identity columns exist only for users and items with training positives: an id without any is
        never trained as a positive (an item's would only be pushed down as a sampled negative), so an
        unseen user or item is represented by its tokens alone. Rows sum to 1, as lightfm.data.Dataset
        normalises them, so many tokens do not make a longer vector than few.
        """
        return (
            _with_identity(self.users, train.row_lengths() > 0),
            _with_identity(self.items, np.bincount(train.indices, minlength=train.n_cols) > 0),
        )


def _with_identity(tokens, has_identity: np.ndarray):
    import scipy.sparse as sp

    ids = np.flatnonzero(has_identity)
    n = tokens.shape[0]
    identity = sp.csr_matrix((np.ones(len(ids), np.float32), (ids, np.arange(len(ids)))), shape=(n, len(ids)))
    m = sp.hstack([identity, tokens], format="csr", dtype=np.float32)
    sums = np.asarray(m.sum(axis=1)).ravel()
    sums[sums == 0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / sums) @ m, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# The peers. Each fit yields (epochs, score function) at each requested epoch count (LightFM) or once
# (ALS and BPR, whose iteration count is part of the setting: epochs None).


@dataclass(frozen=True)
class Context:
    """What every fit on one split shares."""

    seed: int
    threads: int
    features: Features | None


FitFn = Callable[[Context, CSR, dict, tuple[int, ...]], Iterator[tuple[int | None, ScoreFn]]]


def _scipy(m: CSR):
    import scipy.sparse as sp

    return sp.csr_matrix(
        (np.ones(m.nnz, np.float32), m.indices, m.indptr.astype(np.int64)), shape=(m.n_rows, m.n_cols)
    )


def _dot(user_factors: np.ndarray, item_factors: np.ndarray) -> ScoreFn:
    uf, itf = np.asarray(user_factors), np.ascontiguousarray(np.asarray(item_factors).T)
    return lambda u: uf[u] @ itf


def _fit_implicit(model_class, ctx: Context, train: CSR, **settings):
    """Fits one of implicit's CPU models (never a GPU by surprise) and scores by its factors' product."""
    model = model_class(**settings, num_threads=ctx.threads, random_state=ctx.seed)
    model.fit(_scipy(train), show_progress=False)
    # BPR's item factors carry the item bias in a last column that its user factors hold as 1.
    return _dot(model.user_factors, model.item_factors)


def fit_als(ctx: Context, train: CSR, s: dict, epochs: tuple[int, ...]):
    from implicit.cpu.als import AlternatingLeastSquares

    keys = ("factors", "regularization", "alpha", "iterations")
    yield None, _fit_implicit(AlternatingLeastSquares, ctx, train, **{k: s[k] for k in keys})


def fit_bpr(ctx: Context, train: CSR, s: dict, epochs: tuple[int, ...]):
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    keys = ("factors", "learning_rate", "regularization", "iterations")
    yield None, _fit_implicit(BayesianPersonalizedRanking, ctx, train, **{k: s[k] for k in keys})


def fit_lightfm(ctx: Context, train: CSR, s: dict, epochs: tuple[int, ...]):
    from lightfm import LightFM

    model = LightFM(
        no_components=s["no_components"],
        loss="warp",
        learning_rate=s["learning_rate"],
        item_alpha=s["alpha"],
        user_alpha=s["alpha"],
        random_state=np.random.RandomState(ctx.seed),
    )
    uf, itf = ctx.features.matrices(train) if ctx.features is not None else (None, None)
    interactions = _scipy(train).tocoo()
    done = 0
    for e in sorted(epochs):
        model.fit_partial(
            interactions, user_features=uf, item_features=itf, epochs=e - done, num_threads=ctx.threads
        )
        done = e
        # Snapshots (the representations are computed afresh), so later epochs leave this one alone.
        # The user bias shifts a whole row and cannot change its ranking: left out.
        _, uvec = model.get_user_representations(uf)
        ibias, ivec = model.get_item_representations(itf)
        ivec_t = np.ascontiguousarray(ivec.T)
        yield e, (lambda u, uvec=uvec, ivec_t=ivec_t, ibias=ibias: uvec[u] @ ivec_t + ibias)


@dataclass(frozen=True)
class Peer:
    """One peer: its package, its grid and its fit.

    Attributes:
        package: the pip package (and module) it needs; missing, the peer is skipped.
        features: ranks users without training positives from their features (the cold split).
        epochs: LightFM: its epoch count is chosen on validation too.
    """

    name: str
    label: str
    package: str
    fit: FitFn
    grid: Callable[[PeersConfig], list[dict]]
    features: bool = False
    epochs: bool = False


def _grid(**axes) -> list[dict]:
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def _lightfm_grid(c: PeersConfig) -> list[dict]:
    return _grid(
        no_components=c.lightfm_components, learning_rate=c.lightfm_learning_rate, alpha=c.lightfm_alpha
    )


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "als",
            "ALS (implicit)",
            "implicit",
            fit_als,
            lambda c: _grid(
                factors=c.als_factors,
                regularization=c.als_regularization,
                alpha=c.als_alpha,
                iterations=(c.als_iterations,),
            ),
        ),
        Peer(
            "bpr",
            "BPR (implicit)",
            "implicit",
            fit_bpr,
            lambda c: _grid(
                factors=c.bpr_factors,
                learning_rate=c.bpr_learning_rate,
                regularization=c.bpr_regularization,
                iterations=c.bpr_iterations,
            ),
        ),
        Peer("lightfm", "LightFM WARP ids", "lightfm", fit_lightfm, _lightfm_grid, epochs=True),
        Peer(
            "lightfm_features",
            "LightFM WARP +features",
            "lightfm",
            fit_lightfm,
            _lightfm_grid,
            features=True,
            epochs=True,
        ),
    )
}


def missing_reason(package: str) -> str | None:
    """Why ``package`` cannot be used (not installed, or its import fails), or None when it can."""
    try:
        importlib.import_module(package)
    except ImportError as err:
        return f"package '{package}' not importable ({err}); install it with `make bench-deps`"
    return None


# --------------------------------------------------------------------------------------------------
# The run.


@dataclass(frozen=True)
class SplitData:
    """One recorded split with everything its evaluation needs."""

    name: str
    split: RecordedSplit
    judged: np.ndarray | None  # the users metrics.json judged (None: every user with a test positive)
    features: Features


def _judged(manifest: dict, name: str, split: RecordedSplit, seed: int, data: Path) -> np.ndarray | None:
    """The evaluation sample training used for this split (None: every user), drawn again the same way."""
    sample = manifest.get("evaluation", {}).get(name, {}).get("sample")
    if sample is None:
        return None
    from towerserve.trainer.baselines import OracleScores
    from towerserve.trainer.evalsample import sample_users

    return sample_users(split.test, int(sample), seed, OracleScores.replay_block(data))


def _setting_text(setting: dict) -> str:
    return " ".join(f"{SHORT.get(k, k)}={v:g}" for k, v in setting.items())


def choose(
    peer: Peer, ctx: Context, fit_part: CSR, val: CSR, judged: np.ndarray, cfg: PeersConfig
) -> tuple[dict, list[dict]]:
    """Fits every grid point on the fit part; keeps the best validation NDCG@10 (ties: the first).

    Returns:
        (the chosen setting, with "epochs" for LightFM; every trial with its validation NDCG@10).
    """
    grid = peer.grid(cfg)
    checkpoints = cfg.lightfm_epochs() if peer.epochs else ()
    trials: list[dict] = []
    for j, setting in enumerate(grid):
        t0 = time.perf_counter()
        scores = []
        for epochs, score_fn in peer.fit(ctx, fit_part, setting, checkpoints):
            ndcg = full_ranking_metrics(score_fn, val, fit_part, ks=(10,), users=judged)["ndcg@10"]
            scores.append((epochs, float(ndcg)))
            waited = len(scores) - 1 - max(range(len(scores)), key=lambda i: (scores[i][1], -i))
            if waited >= cfg.lightfm_patience:
                break  # closes the fit: no later epoch is trained
        secs = time.perf_counter() - t0
        for epochs, ndcg in scores:
            trials.append({**setting, **({"epochs": epochs} if peer.epochs else {}), "val_ndcg@10": ndcg})
        trials[-1]["seconds"] = secs  # one fit covers every checkpoint: its time is on the last
        best_e, best = max(scores, key=lambda x: x[1])
        by_epoch = " ".join(f"{e}:{v:.4f}" for e, v in scores) if peer.epochs else ""
        _LOGGER.info(
            "%s %d/%d %s: validation ndcg@10 %.4f%s (%.1f s)%s",
            peer.name,
            j + 1,
            len(grid),
            _setting_text(setting),
            best,
            f" at epoch {best_e}" if peer.epochs else "",
            secs,
            f" [by epoch {by_epoch}]" if by_epoch else "",
        )
    best = max(range(len(trials)), key=lambda j: (trials[j]["val_ndcg@10"], -j))
    chosen = {k: v for k, v in trials[best].items() if k not in ("val_ndcg@10", "seconds")}
    return chosen, trials


def grid_edges(peer: Peer, cfg: PeersConfig, chosen: dict) -> list[str]:
    """The grid axes (of more than one value) whose chosen value is the smallest or largest tried, and
    "epochs" when LightFM's choice is the last epoch allowed: a wider grid there might do better."""
    grid = peer.grid(cfg)
    edges = []
    for key in grid[0]:
        values = sorted({g[key] for g in grid})
        # 0 (no regularisation) is an edge nothing lies beyond.
        if len(values) > 1 and chosen[key] in (values[0], values[-1]) and chosen[key] != 0:
            edges.append(f"{key}={chosen[key]:g} (tried {values[0]:g}..{values[-1]:g})")
    if peer.epochs and chosen["epochs"] >= cfg.lightfm_epochs()[-1]:
        edges.append(f"epochs={chosen['epochs']} (the most allowed)")
    return edges


def refit(peer: Peer, ctx: Context, train: CSR, chosen: dict) -> ScoreFn:
    """Fits the chosen setting (and epoch count) on every training positive of a split."""
    setting = {k: v for k, v in chosen.items() if k != "epochs"}
    epochs = (chosen["epochs"],) if peer.epochs else ()
    *_, (_, score_fn) = peer.fit(ctx, train, setting, epochs)  # one checkpoint: the chosen epochs
    return score_fn


def _popularity_fn(train: CSR) -> ScoreFn:
    from towerserve.trainer.collab import popularity

    pop = popularity(train)
    return lambda u: np.broadcast_to(pop, (len(u), len(pop)))


def run_peers(data: Path, artifacts: Path, cfg: PeersConfig = PeersConfig()) -> dict:
    """Chooses, refits and scores every peer; returns peers.json's content.

    Raises:
        SystemExit: ARTIFACTS lacks a recorded split or metrics.json, or DATA does not match it.
    """
    import scipy.linalg  # noqa: F401 - loads scipy's own BLAS now, so the limit below reaches it too
    from threadpoolctl import threadpool_limits

    for name in cfg.peers:
        missing_reason(PEERS[name].package)  # a peer's libraries are loaded before the limit too
    # One BLAS thread (implicit warns about more): a peer's own threads are --threads; the scoring
    # products are small (users x factors x items).
    with threadpool_limits(limits=1, user_api="blas"):
        return _run(data, artifacts, cfg)


def _run(data: Path, artifacts: Path, cfg: PeersConfig) -> dict:
    # hybrid_search and hybrid_fit import Keras (seconds): here, not at the top, so --help stays quick.
    from towerserve.trainer.collab import validation_split
    from towerserve.trainer.data import load_dataset
    from towerserve.trainer.evalsample import ranking_metrics
    from towerserve.trainer.hybrid.fit import judged_users
    from towerserve.trainer.hybrid.search import VALIDATION_SHARE

    t_start = time.perf_counter()
    for name in ("manifest.json", "metrics.json", "splits/holdout.npz"):
        if not (artifacts / name).is_file():
            raise SystemExit(f"{artifacts}: no {name}; expected a `towerserve train` artifacts folder")
    manifest = json.loads((artifacts / "manifest.json").read_text())
    project = json.loads((artifacts / "metrics.json").read_text())
    seed = int(manifest["recipe"]["seed"])
    ks = tuple(manifest["recipe"].get("ks") or DEFAULT_KS)
    ds = load_dataset(data)

    splits: dict[str, SplitData] = {}
    for name in ("holdout", "cold"):
        path = artifacts / "splits" / f"{name}.npz"
        if not path.is_file():
            _LOGGER.warning("%s: no %s split recorded (trained with --no-cold?): skipped", artifacts, name)
            continue
        split = load_recorded_split(path)
        if (split.train.n_rows, split.train.n_cols) != (ds.n_users, ds.n_items):
            raise SystemExit(
                f"{data} has {ds.n_users} users x {ds.n_items} items but {path} records "
                f"{split.train.n_rows} x {split.train.n_cols}: not the data set these artifacts were trained on"
            )
        warm_items = np.setdiff1d(np.arange(ds.n_items), split.cold_items)
        features = Features.build(ds.users, ds.items, warm_items, cfg.price_bins)
        splits[name] = SplitData(name, split, _judged(manifest, name, split, seed, data), features)
    hold = splits["holdout"]

    # Parity: MostPopular recomputed here must equal metrics.json's, or the splits or users differ.
    parity = {}
    for name, sd in splits.items():
        pop = _popularity_fn(sd.split.train)
        ours = ranking_metrics(pop, sd.split.test, sd.split.train, ks, users=sd.judged)["ndcg@10"]
        theirs = (project.get(name, {}).get("mostpop") or {}).get("ndcg@10")
        parity[name] = {"mostpop_ndcg@10": ours, "metrics_json": theirs}
        ok = theirs is not None and abs(ours - theirs) < 1e-6
        (_LOGGER.info if ok else _LOGGER.warning)(
            "%s: MostPopular ndcg@10 recomputed %.4f, metrics.json %s%s",
            name,
            ours,
            "-" if theirs is None else f"{theirs:.4f}",
            "" if ok else " (MISMATCH: the peers are not judged as the project was)",
        )

    # The hybrid in ARTIFACTS records the share it chose with; another share makes its validation
    # NDCG@10 incomparable with the peers' (more held out per user: higher numbers).
    hybrid_share = ((project.get("holdout", {}).get("hybrid") or {}).get("recipe") or {}).get(
        "validation_share"
    )
    if hybrid_share is not None and hybrid_share != VALIDATION_SHARE:
        _LOGGER.warning(
            "the hybrid in %s chose its recipe with validation share %g, this checkout's is %g: its "
            "validation NDCG@10 is not comparable with the peers' (retrain to compare it)",
            artifacts,
            hybrid_share,
            VALIDATION_SHARE,
        )
    fit_part, val = validation_split(hold.split.train, VALIDATION_SHARE, seed)
    judged_val = judged_users(fit_part, val, seed)
    _LOGGER.info(
        "validation: %d of %d holdout training positives (share %g, seed %d), %d users judged",
        val.nnz,
        hold.split.train.nnz,
        VALIDATION_SHARE,
        seed,
        len(judged_val),
    )

    fallback: dict[str, dict] = {}
    if "cold" in splits:
        cold = splits["cold"].split
        fallback = ranking_metrics(
            _popularity_fn(cold.train), cold.test, cold.train, ks, users=splits["cold"].judged
        )

    results: dict[str, dict] = {}
    for name in cfg.peers:
        peer = PEERS[name]
        row: dict = {"label": peer.label, "package": peer.package}
        results[name] = row
        reason = missing_reason(peer.package)
        if reason:
            _LOGGER.warning("%s: SKIPPED: %s", name, reason)
            row.update(status="skipped", reason=reason)
            continue
        row["version"] = version(peer.package)
        t0 = time.perf_counter()
        ctx = Context(seed, cfg.threads, hold.features if peer.features else None)
        chosen, trials = choose(peer, ctx, fit_part, val, judged_val, cfg)
        val_best = max(t["val_ndcg@10"] for t in trials)
        row.update(status="ok", chosen=chosen, val_ndcg=val_best, validation=trials)
        row["search_seconds"] = time.perf_counter() - t0
        _LOGGER.info("%s: chose %s (validation ndcg@10 %.4f)", name, _setting_text(chosen), val_best)
        row["grid_edges"] = grid_edges(peer, cfg, chosen)
        if row["grid_edges"]:
            _LOGGER.warning("%s: chosen on the edge of its grid: %s", name, "; ".join(row["grid_edges"]))

        t0 = time.perf_counter()
        score_fn = refit(peer, ctx, hold.split.train, chosen)
        row["holdout"] = ranking_metrics(score_fn, hold.split.test, hold.split.train, ks, users=hold.judged)
        row["holdout_seconds"] = time.perf_counter() - t0
        _LOGGER.info(
            "%s/holdout: ndcg@10 %.4f recall@10 %.4f (%.1f s)",
            name,
            row["holdout"]["ndcg@10"],
            row["holdout"]["recall@10"],
            row["holdout_seconds"],
        )
        if "cold" not in splits:
            continue
        if not peer.features:
            row["cold"] = {**fallback, "fallback": "mostpop"}
            row["cold_note"] = "no features: cold users have no training rows, so popularity (= MostPopular)"
            continue
        sd = splits["cold"]
        t0 = time.perf_counter()
        score_fn = refit(peer, Context(seed, cfg.threads, sd.features), sd.split.train, chosen)
        row["cold"] = ranking_metrics(score_fn, sd.split.test, sd.split.train, ks, users=sd.judged)
        row["cold_seconds"] = time.perf_counter() - t0
        row["cold_note"] = (
            "holdout's choice refitted on the cold split's training positives; users by features"
        )
        _LOGGER.info("%s/cold: ndcg@10 %.4f (%.1f s)", name, row["cold"]["ndcg@10"], row["cold_seconds"])

    return {
        "data": str(Path(data).resolve()),
        "artifacts": str(Path(artifacts).resolve()),
        "seed": seed,
        "ks": list(ks),
        "validation": {
            "split": "collab.validation_split(holdout train, hybrid_search.VALIDATION_SHARE, seed)",
            "share": VALIDATION_SHARE,
            "fit_positives": fit_part.nnz,
            "validation_positives": val.nnz,
            "judged_users": len(judged_val),
            "hybrid_share_in_artifacts": hybrid_share,
        },
        "evaluation": {n: (None if sd.judged is None else len(sd.judged)) for n, sd in splits.items()},
        "parity": parity,
        "features": {
            "user_tokens": len(hold.features.user_vocab),
            "item_tokens": len(hold.features.item_vocab),
        },
        "config": asdict(cfg),
        "versions": {p: _version(p) for p in ("implicit", "lightfm", "numpy", "scipy")},
        "machine": machine(),
        "peers": results,
        "project": {n: {k: v for k, v in rows.items() if v} for n, rows in project.items()},
        "seconds": time.perf_counter() - t_start,
    }


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------------------------------
# Reporting.


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _project_fallback(doc: dict, split: str, kind: str) -> bool:
    """Whether towerserve's ItemKNN or EASE row is MostPopular's (baselines.evaluate_baselines gives
    users without training positives the popularity ranking: every user of the cold split)."""
    rows = doc["project"].get(split, {})
    row, pop = rows.get(kind) or {}, rows.get("mostpop") or {}
    return kind in ("itemknn", "ease") and bool(row) and row.get("ndcg@10") == pop.get("ndcg@10")


def _project_val(doc: dict, kind: str, row: dict) -> float | None:
    """The hybrid's validation NDCG@10 when it chose on the peers' validation split; None otherwise."""
    recipe = row.get("recipe") or {}
    if kind != "hybrid" or recipe.get("validation_share") != doc["validation"]["share"]:
        return None
    return max((c["val_ndcg@10"] for c in recipe.get("candidates") or []), default=None)


def _project_setting(kind: str, row: dict) -> str:
    if "lambda" in row:
        return f"lambda={row['lambda']:g}"
    chosen = (row.get("recipe") or {}).get("chosen")
    if chosen:
        return " ".join(f"{k}={chosen[k]}" for k in ("loss", "pooling", "epochs") if k in chosen)
    return "(towerserve)"


def report_rows(doc: dict) -> list[list[object]]:
    rows = []
    for r in doc["peers"].values():
        if r["status"] != "ok":
            rows.append([r["label"], f"SKIPPED: {r['reason']}", "-", "-", "-", "-", "-"])
            continue
        cold = r.get("cold") or {}
        cold_note = "popularity fallback" if cold.get("fallback") else ("features" if cold else "-")
        rows.append(
            [
                r["label"],
                _setting_text(r["chosen"]),
                _f(r["val_ndcg"]),
                _f(r["holdout"]["ndcg@10"]),
                _f(r["holdout"]["recall@10"]),
                _f(cold.get("ndcg@10")),
                cold_note,
            ]
        )
    hold, cold = doc["project"].get("holdout", {}), doc["project"].get("cold", {})
    for kind in ORDER:
        if kind not in hold:
            continue
        c = cold.get(kind) or {}
        fell_back = _project_fallback(doc, "cold", kind)
        rows.append(
            [
                f"{NAMES[kind]} (towerserve)",
                _project_setting(kind, hold[kind]),
                _f(_project_val(doc, kind, hold[kind])),
                _f(hold[kind].get("ndcg@10")),
                _f(hold[kind].get("recall@10")),
                _f(c.get("ndcg@10")),
                "popularity fallback" if fell_back else ("features" if c and kind in MODELS else ""),
            ]
        )
    return rows


HEADERS = ["model", "chosen", "val ndcg@10", "holdout ndcg@10", "holdout recall@10", "cold ndcg@10", "cold"]


def plot(doc: dict, path: Path) -> None:
    """Horizontal bars of NDCG@10 per split: baselines grey, towerserve's models blue, peers orange;
    a popularity fallback is hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in ("holdout", "cold") if s in doc["project"]]
    fig, axes = plt.subplots(1, len(splits), figsize=(6.0 * len(splits), 5.0), squeeze=False)
    for ax, split in zip(axes[0], splits):
        bars = []  # (label, value, colour, hatched)
        for kind in ORDER:
            row = doc["project"][split].get(kind)
            if row:
                colour = "tab:blue" if kind in MODELS else "tab:gray"
                bars.append((NAMES[kind], row["ndcg@10"], colour, _project_fallback(doc, split, kind)))
        for r in doc["peers"].values():
            m = r.get(split)
            if r["status"] == "ok" and m:
                bars.append((r["label"], m["ndcg@10"], "tab:orange", bool(m.get("fallback"))))
        ys = np.arange(len(bars))[::-1]
        for y, (_, value, colour, hatched) in zip(ys, bars):
            ax.barh(y, value, color=colour, alpha=0.45 if hatched else 1.0, hatch="//" if hatched else None)
            ax.text(value, y, f" {value:.3f}", va="center", fontsize=8)
        ax.set_yticks(ys, [b[0] + (" (popularity)" if b[3] else "") for b in bars], fontsize=8)
        ax.set_xlabel("NDCG@10 (full ranking, training positives masked)")
        ax.set_title(f"{split} split")
        ax.set_xlim(0, max(b[1] for b in bars) * 1.2 if bars else 1)
    fig.suptitle(f"Peers (orange) vs towerserve (blue) and baselines (grey): {Path(doc['data']).name}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Score implicit ALS/BPR and LightFM WARP beside towerserve's models on its recorded "
        "splits, hyper-parameters chosen on the hybrid's validation split."
    )
    parser.add_argument("data", type=Path, help="the data set folder `towerserve train` read (--data)")
    parser.add_argument("artifacts", type=Path, help="the artifacts folder it wrote (--out)")
    parser.add_argument("--out", type=Path, help="JSON results (default ARTIFACTS/peers.json)")
    parser.add_argument("--plot", type=Path, help="bar plot PNG (default ARTIFACTS/peers.png)")
    parser.add_argument(
        "--peers",
        default=",".join(PeersConfig.peers),
        help=f"comma-separated subset of {','.join(PEERS)} (default: all)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=PeersConfig.threads,
        help="threads per fit (default 1; above 1 BPR and LightFM are no longer bit-reproducible)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = PeersConfig(
            peers=tuple(p.strip() for p in args.peers.split(",") if p.strip()), threads=args.threads
        )
    except ValueError as err:
        parser.error(str(err))
    doc = run_peers(args.data, args.artifacts, cfg)
    out = args.out or args.artifacts / "peers.json"
    out.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    png = args.plot or args.artifacts / "peers.png"
    plot(doc, png)
    print(table(HEADERS, report_rows(doc)))
    for name, r in doc["peers"].items():
        if r["status"] != "ok":
            print(f"skipped {name}: {r['reason']}")
            continue
        if r.get("grid_edges"):
            print(f"{name} chosen on its grid's edge: {'; '.join(r['grid_edges'])}")
        if r.get("cold_note"):
            print(f"{name} cold: {r['cold_note']}")
    print(f"wrote {out} and {png} in {doc['seconds']:.0f} s")


if __name__ == "__main__":
    main()
