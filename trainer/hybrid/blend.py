"""Popularity kept at serving, per segment, with the weight chosen on validation.

A softmax-trained two-tower ranks by ``u · v``; the test sets of real data are popularity-biased, and
a segment whose personal signal is weak (an unseen user known only by a few attributes) can rank
below the plain most-popular list. The hybrid's vectors carry one more column for that
(trainer/hybrid/model.py): each item's popularity ``p_i = log(1 + n_i) / log(1 + max n)`` over the training
positives (0 for an item nobody trained on: new items, and the item tower's value), and each user
the weight ``beta`` of their segment. The served score is ``u · v + b_i + beta · p_i``: still one dot
product, so export, the index and the server need nothing new.

Each segment's weight is ``multiplier x spread``: ``spread`` is the mean, over users, of the
standard deviation of their scores over the catalogue, so a multiplier means the same on any data
set and the same multiplier carries from the model chosen on validation to the refitted one. The
largest multiplier ranks by popularity (ties broken by the model): a segment where validation finds
the model worse than the popularity list is served that list, never less.

Segments (hybrid.PopularityWeight): ``known`` users (an id), ``history`` (no id, a request history:
judged as the validation users with their fit-part histories and no id), ``attributes`` (neither:
the validation users with neither). Targets are the validation positives, fit positives masked.

The attribute ridge's part (trainer/hybrid/attributes.py) is weighed here too, jointly with the
``attributes`` segment's popularity weight: ``attribute multiplier x spread / the ridge's spread``,
one weight for every user without an id (the ``history`` segment is judged with it, as served), the
ridge's scores out-of-user. The EASE part (trainer/hybrid/ease.py) likewise, jointly with the known users'
popularity weight: ``ease multiplier x spread / EASE's spread``, one weight for every user with a
history (known or not: the user tower pools one table for both, and a weight per segment would make
the graph no longer affine in its history, which the server's known-user shortcut needs).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from towerserve.server.core.csr import CSR

from . import attributes as hybrid_attributes
from . import ease as hybrid_ease
from . import fit as hybrid_fit
from . import model as hybrid
from . import scoring
from .rows import FeatureRows, as_rows

_LOGGER = logging.getLogger(__name__)

SEGMENTS = ("known", "history", "attributes")
# Of the segment's spread. 1,000 spreads put popularity first whatever the model says.
MULTIPLIERS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 1000.0)
# Of the hybrid's spread, the EASE part's. Validation on MovieLens-100K peaked near 0.25 and was flat
# from 0.05 to 0.35; 4 all but serves EASE alone. No larger value: the served vectors would grow with
# it, and the export's parity gate (absolute, 1e-4) with them.
EASE_MULTIPLIERS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
# Of the attributes segment's spread, the ridge part's; 16 all but serves the ridge alone (bounded
# for the parity gate, as above).
ATTRIBUTE_MULTIPLIERS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# The order segments are chosen in: the ridge weight comes from ``attributes`` and ``history`` is
# judged with it, as the EASE weight comes from ``known``.
_CHOICE_ORDER = ("known", "attributes", "history")
SPREAD_USERS = 2_000  # users whose score spread is averaged: enough for a stable mean, bounded


@dataclass(frozen=True)
class Blend:
    """Each segment's popularity multiplier, and the validation NDCG@10 of every one tried.

    Attributes:
        multipliers: segment -> the chosen multiplier of its spread.
        validation: segment -> {multiplier: validation NDCG@10} (empty when not chosen on validation);
            for ``known`` users with an EASE part, keyed "ease multiplier/popularity multiplier".
        weights: segment -> beta as applied to a model (``apply`` fills it).
        ease: the EASE part's multiplier (0: none), its λ and rank, and the weight ``apply`` gave it.
        ease_skipped: why the model has no EASE part, when it has none.
        attributes: the attribute ridge's multiplier (0: none), its λ, and the weight ``apply`` gave it.
    """

    multipliers: dict[str, float]
    validation: dict[str, dict]
    weights: dict[str, float] | None = None
    ease: dict[str, float] | None = None
    ease_skipped: str | None = None
    attributes: dict[str, float] | None = None

    def to_json(self) -> dict:
        out = {
            "multipliers": dict(self.multipliers),
            "weights": dict(self.weights or {}),
            "validation_ndcg@10": {s: {str(m): v for m, v in t.items()} for s, t in self.validation.items()},
            "ease": dict(self.ease or {}),
            "attributes": dict(self.attributes or {}),
        }
        if self.ease_skipped:
            out["ease_skipped"] = self.ease_skipped
        return out

    @property
    def ease_multiplier(self) -> float:
        return float((self.ease or {}).get("multiplier", 0.0))

    @property
    def attribute_multiplier(self) -> float:
        return float((self.attributes or {}).get("multiplier", 0.0))


NONE = Blend({s: 0.0 for s in SEGMENTS}, {})


def popularity(train: CSR) -> np.ndarray:
    """float32 [n_items]: ``log(1 + n_i) / log(1 + max n)``, 0 for items without training positives."""
    counts = np.bincount(train.indices, minlength=train.n_cols).astype(np.float64)
    top = np.log1p(max(1.0, counts.max(initial=0.0)))
    return (np.log1p(counts) / top).astype(np.float32)


def set_popularity(model, train: CSR) -> None:
    """Writes ``train``'s item popularity into the popularity column of the item ID table (the content
    path's column is 0: an item without positives)."""
    table = model.get_layer("item_id_embedding")
    values = np.array(table.embeddings.numpy())
    values[0, -1] = 0.0
    values[1:, -1] = popularity(train)
    table.embeddings.assign(values)


def set_weights(model, weights: dict[str, float]) -> None:
    layer = model.get_layer("user_tower").get_layer("popularity_weight")
    layer.weights_by_segment.assign(np.array([weights[s] for s in SEGMENTS], dtype=np.float32))


def _segment_users(model, U: FeatureRows, train: CSR, segment: str, users: np.ndarray) -> np.ndarray:
    """``users``' vectors as the segment sees them (popularity weights as the model has them)."""
    return hybrid_fit.users_vectors(
        model, U, train, users, ids=segment == "known", history=segment != "attributes"
    )


def _std(left: np.ndarray, right: np.ndarray) -> float:
    """The mean over users of the standard deviation of their scores ``left @ right.T`` over the
    catalogue (1 when all are flat), a block of users at a time: never users x items at once."""
    return scoring.mean_row_std(lambda pos: left[pos] @ right.T, len(left), len(right))


def _spread(uvec: np.ndarray, ivec: np.ndarray) -> float:
    return _std(uvec[:, :-1], ivec[:, :-1])  # the popularity column left out


def _sample(users: np.ndarray, seed: int) -> np.ndarray:
    if len(users) <= SPREAD_USERS:
        return users
    return np.sort(np.random.default_rng([seed, 41]).choice(users, SPREAD_USERS, replace=False))


def _best(table: dict) -> object:
    """The key with the best NDCG@10; ties: the smallest multipliers (keys sort as tuples or floats)."""
    return max(table, key=lambda k: (table[k], tuple(-x for x in np.atleast_1d(k))))


def choose(
    model,
    U: np.ndarray | FeatureRows,
    I: np.ndarray | FeatureRows,
    fit: CSR,
    val: CSR,
    seed: int,
    ease: hybrid_ease.Factors | None = None,
    ease_skipped: str | None = None,
    coding: hybrid_attributes.Coding | None = None,
) -> Blend:
    """Each segment's multiplier by validation NDCG@10 (ties: the smaller one), for a model trained on
    ``fit``: with ``ease`` (EASE's factors fitted on ``fit``) the EASE part's multiplier jointly with
    the known users' popularity, with ``coding`` the attribute ridge's λ and multiplier jointly with
    the attributes segment's. Leaves the model's weights at 0.

    Every grid point is a sum of a few score matrices (the towers', the parts', popularity) over the
    judged users and the catalogue: each is built a block at a time, and one pass over the catalogue
    ranks a segment's whole grid (trainer/hybrid/scoring.py).

    Long because it is one grid search per segment, in the order the shared weights need.
    """
    U, I = as_rows(U), as_rows(I)
    set_popularity(model, fit)
    set_weights(model, {s: 0.0 for s in SEGMENTS})
    judged = hybrid_fit.judged_users(fit, val, seed)
    ivec = hybrid_fit.catalogue_vectors(model, I, fit)
    pop = ivec[:, -1]
    # The parts' scores at unit spread (a multiplier of the hybrid's spread applies as is), as
    # functions of (judged positions, items lo..hi-1).
    extra = attr_extra = attr_info = groups = None
    if ease is not None:
        left = ease.user_part(fit, judged)
        e_std = _std(left, ease.items)
        extra = lambda pos, lo, hi: (left[pos] @ ease.items[lo:hi].T) / e_std  # noqa: E731
    if coding is not None:
        lam, oof = hybrid_attributes.choose_lambda(
            lambda ids: coding.codes(U.take(ids)), fit, val, judged, seed
        )
        a_std = scoring.mean_row_std(oof.rows, len(judged), len(ivec), oof.groups)
        attr_extra = lambda pos, lo, hi: oof.rows(pos, lo, hi) / a_std  # noqa: E731
        attr_info, groups = {"lambda": lam, "width": coding.width}, oof.groups  # one fold's W at a time
    chosen, table, ease_m, ease_w, attr_m, attr_w = {}, {}, 0.0, 0.0, 0.0, 0.0
    for segment in _CHOICE_ORDER:
        uvec = _segment_users(model, U, fit, segment, judged)
        spread = _spread(uvec[:SPREAD_USERS], ivec)
        joint = None  # (the part's unit-spread scores, its multipliers) where a part is weighed here
        if segment == "known" and extra is not None:
            joint = (extra, EASE_MULTIPLIERS)
        elif segment == "attributes" and attr_extra is not None:
            joint = (attr_extra, ATTRIBUTE_MULTIPLIERS)
        fixed = []  # the history segment is judged with the parts' weights as they will be served
        if segment == "history":
            fixed = [(w, t) for w, t in ((ease_w, extra), (attr_w, attr_extra)) if t is not None]
        keys = [(mx, m) for mx in joint[1] for m in MULTIPLIERS] if joint else list(MULTIPLIERS)

        def scores(pos, lo, hi, uvec=uvec, spread=spread, joint=joint, fixed=fixed, keys=keys):
            base = uvec[pos] @ ivec[lo:hi].T
            for w, term in fixed:
                base = base + w * term(pos, lo, hi)
            p = pop[None, lo:hi]
            part = joint[0](pos, lo, hi) if joint else None
            for key in keys:
                if joint:
                    yield base + (key[0] * spread) * part + (key[1] * spread) * p
                else:
                    yield base + (key * spread) * p

        grid = dict(zip(keys, scoring.ndcg(scores, judged, fit, val, n_scorings=len(keys), groups=groups)))
        if joint is not None:
            mx, chosen[segment] = _best(grid)
            # One weight for every user the part serves, set from this segment's spread as apply()
            # sets it: the history segment is judged with the weight it will be served.
            if segment == "known":
                ease_m, ease_w = mx, mx * spread
            else:
                attr_m, attr_w = mx, mx * spread
            table[segment] = {f"{a:g}/{m:g}": v for (a, m), v in grid.items()}
            best = grid[(mx, chosen[segment])]
        else:
            chosen[segment] = _best(grid)
            table[segment] = grid
            best = grid[chosen[segment]]
        part = "" if joint is None else f", its part {ease_m if segment == 'known' else attr_m:g}"
        _LOGGER.info(
            "popularity blend, %s users: multiplier %g%s (validation ndcg@10 %.4f)",
            segment,
            chosen[segment],
            part,
            best,
        )
    info = None if ease is None else {"multiplier": float(ease_m), "lambda": ease.lam, "rank": ease.rank}
    if attr_info is not None:
        attr_info["multiplier"] = float(attr_m)
    chosen = {s: chosen[s] for s in SEGMENTS}
    return Blend(
        chosen, {s: table[s] for s in SEGMENTS}, ease=info, ease_skipped=ease_skipped, attributes=attr_info
    )


def apply(
    model,
    U: np.ndarray | FeatureRows,
    I: np.ndarray | FeatureRows,
    train: CSR,
    blend: Blend,
    seed: int,
    cfg,
    coding: hybrid_attributes.Coding | None = None,
) -> tuple[object, Blend]:
    """Sets ``train``'s popularity and each segment's weight (multiplier x this model's spread over
    ``train``'s users) in ``model`` and, when the blend has an EASE part or an attribute ridge part
    (``coding``: the attributes' coding on ``train``'s users), returns the model widened with them
    (hybrid.with_served_parts; EASE and the ridge refitted on ``train`` with the chosen λ, ``cfg`` the
    recipe).

    Returns:
        (the model to serve, ``blend`` with the weights).
    """
    U, I = as_rows(U), as_rows(I)
    set_popularity(model, train)
    users = _sample(np.flatnonzero(hybrid_fit.known_users(train)), seed)
    ivec = hybrid_fit.catalogue_vectors(model, I, train)
    weights, spreads = {}, {}
    for segment in SEGMENTS:
        spreads[segment] = (
            _spread(_segment_users(model, U, train, segment, users), ivec) if len(users) else 1.0
        )
        weights[segment] = float(blend.multipliers[segment] * spreads[segment])
    set_weights(model, weights)
    _LOGGER.info("popularity weights: %s", {s: round(w, 4) for s, w in weights.items()})
    ease, attrs = dict(blend.ease or {}), dict(blend.attributes or {})
    f = ridge = None
    if blend.ease_multiplier > 0 and len(users):
        f = hybrid_ease.factors(train, ease["lambda"], int(ease["rank"]))
        e_std = _std(f.user_part(train, users), f.items)
        ease["weight"] = float(blend.ease_multiplier * spreads["known"] / e_std)
    if blend.attribute_multiplier > 0 and coding is not None and len(users):
        codes = lambda ids: coding.codes(U.take(ids))  # noqa: E731 - a block of users at a time
        ridge = hybrid_attributes.fit_ridge(
            codes, train, np.flatnonzero(hybrid_fit.known_users(train)), attrs["lambda"]
        )
        attrs["weight"] = float(
            blend.attribute_multiplier
            * spreads["attributes"]
            / _std(hybrid_attributes.codes_in_blocks(codes, users), ridge.T)
        )
        attrs["width"] = coding.width
    if f is not None or ridge is not None:
        rank = f.rank if f is not None else 0
        model = hybrid.with_served_parts(model, cfg, rank, coding.shape() if ridge is not None else None)
        if f is not None:
            hybrid_ease.install(model, f, ease["weight"], train)
            _LOGGER.info("EASE part: rank %d, λ %g, weight %.4f", f.rank, f.lam, ease["weight"])
        if ridge is not None:
            hybrid_attributes.install(model, coding, ridge, attrs["weight"], rank)
            _LOGGER.info(
                "attribute ridge part: %d codes, λ %g, weight %.4f",
                coding.width,
                attrs["lambda"],
                attrs["weight"],
            )
    return model, Blend(
        blend.multipliers, blend.validation, weights, ease or None, blend.ease_skipped, attrs or None
    )
