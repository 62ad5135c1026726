"""Item texts of the synthetic generator: feature phrases (and their group shares) and descriptions.

Two ways to draw the same distribution. :func:`draw_texts_loop` is the original per-item loop: dense
data sets must stay byte-identical, so it is kept draw for draw. It costs ~0.4 ms an item on a busy
core (400 s at 1,000,000 items), so pooled worlds, which are new and have no files to match, use
:func:`draw_texts_vectorised`: the same model (2-5 distinct phrases, each from a group drawn by the
category's group weights and then a uniform phrase of that group; three distinct category
attributes, two distinct benefits, a uniform template, audience, quality and adjective), drawn with
whole-array calls, so its draws differ from the loop's for the same stream.
"""

from __future__ import annotations

import numpy as np

from .vocab import ADJECTIVES, AUDIENCES, BENEFITS, CATEGORIES, FEATURE_GROUPS, QUALITIES, TEMPLATES

PHRASES_PER_GROUP = 4
# Candidate phrases drawn per item in the vectorised path; the first distinct ones are kept. Fewer
# than 5 distinct among 16 needs a category whose weight sits almost wholly on one 4-phrase group:
# such items (rare) are redrawn by the loop's rule.
CANDIDATES = 16


def _description(rng: np.random.Generator, cat: str) -> str:
    attrs = list(CATEGORIES[cat][1])
    a = rng.permutation(len(attrs))[:3]
    tpl = TEMPLATES[int(rng.integers(0, len(TEMPLATES)))]
    b1, b2 = rng.permutation(len(BENEFITS))[:2]
    return tpl.format(
        aud=AUDIENCES[int(rng.integers(0, len(AUDIENCES)))],
        noun=cat,
        a1=attrs[a[0]],
        a2=attrs[a[1]],
        a3=attrs[a[2]],
        benefit=BENEFITS[b1],
        benefit2=BENEFITS[b2],
        quality=QUALITIES[int(rng.integers(0, len(QUALITIES)))],
        adj=ADJECTIVES[int(rng.integers(0, len(ADJECTIVES)))],
    )


def _phrases_loop(rng: np.random.Generator, weights: np.ndarray, n_feat: int, groups_row: np.ndarray) -> str:
    group_names = list(FEATURE_GROUPS)
    chosen: list[str] = []
    while len(chosen) < n_feat:
        g = int(rng.choice(len(group_names), p=weights))
        phrase = FEATURE_GROUPS[group_names[g]][int(rng.integers(0, PHRASES_PER_GROUP))]
        if phrase not in chosen:
            chosen.append(phrase)
            groups_row[g] += 1.0
    return ", ".join(chosen)


def draw_texts_loop(
    rng: np.random.Generator, cat_idx: np.ndarray, groups_given_cat: np.ndarray
) -> tuple[list[str], list[str], np.ndarray]:
    """(descriptions, features, phrase counts per group [n_items, n_groups]), one item at a time."""
    cat_names = list(CATEGORIES)
    groups = np.zeros((len(cat_idx), len(FEATURE_GROUPS)))
    descriptions, features = [], []
    for i, c in enumerate(cat_idx):
        n_feat = int(rng.integers(2, 6))
        features.append(_phrases_loop(rng, groups_given_cat[c], n_feat, groups[i]))
        descriptions.append(_description(rng, cat_names[c]))
    return descriptions, features, groups


def _first_distinct(cand: np.ndarray) -> np.ndarray:
    """True where a candidate differs from every earlier one in its row."""
    first = np.ones(cand.shape, dtype=bool)
    for j in range(1, cand.shape[1]):
        first[:, j] = ~(cand[:, :j] == cand[:, j : j + 1]).any(axis=1)
    return first


def draw_texts_vectorised(
    rng: np.random.Generator, cat_idx: np.ndarray, groups_given_cat: np.ndarray
) -> tuple[list[str], list[str], np.ndarray]:
    """Same model and outputs as :func:`draw_texts_loop`, drawn with whole-array calls (pooled worlds)."""
    n, n_groups = len(cat_idx), len(FEATURE_GROUPS)
    cat_names = list(CATEGORIES)
    phrases = [p for g in FEATURE_GROUPS.values() for p in g]
    n_feat = rng.integers(2, 6, size=n)
    # Each candidate: a group by inverse CDF of its category's weights, then a phrase of that group.
    u = rng.random((n, CANDIDATES))
    cum = np.cumsum(groups_given_cat, axis=1)
    g = np.empty((n, CANDIDATES), dtype=np.int64)
    for c in range(len(cat_names)):
        rows = cat_idx == c
        g[rows] = np.searchsorted(cum[c], u[rows], side="right")
    g = np.minimum(g, n_groups - 1)
    cand = g * PHRASES_PER_GROUP + rng.integers(0, PHRASES_PER_GROUP, size=(n, CANDIDATES))
    first = _first_distinct(cand)
    keep = first & (np.cumsum(first, axis=1) <= n_feat[:, None])
    counts = keep.sum(axis=1)
    kept = cand[keep].tolist()  # row-major: each item's phrases in draw order
    groups = np.bincount(
        np.repeat(np.arange(n), counts) * n_groups + g[keep], minlength=n * n_groups
    ).reshape(n, n_groups)
    groups = groups.astype(np.float64)
    features, pos = [], 0
    for i, k in enumerate(counts.tolist()):
        if k < n_feat[i]:  # too few distinct candidates (rare): the loop's rule, from the same stream
            groups[i] = 0.0
            features.append(_phrases_loop(rng, groups_given_cat[cat_idx[i]], int(n_feat[i]), groups[i]))
        else:
            features.append(", ".join(phrases[x] for x in kept[pos : pos + k]))
        pos += k
    # Distinct attributes and benefits: the first positions of a random permutation of each row (one
    # width for every category's attributes: the vocabulary gives each five).
    attrs = [CATEGORIES[c][1] for c in cat_names]
    (n_attrs,) = {len(a) for a in attrs}
    attr = np.argsort(rng.random((n, n_attrs)), axis=1)[:, :3].tolist()
    ben = np.argsort(rng.random((n, len(BENEFITS))), axis=1)[:, :2].tolist()
    tpl = rng.integers(0, len(TEMPLATES), size=n).tolist()
    aud = rng.integers(0, len(AUDIENCES), size=n).tolist()
    qual = rng.integers(0, len(QUALITIES), size=n).tolist()
    adj = rng.integers(0, len(ADJECTIVES), size=n).tolist()
    descriptions = [
        TEMPLATES[tpl[i]].format(
            aud=AUDIENCES[aud[i]],
            noun=cat_names[c],
            a1=attrs[c][attr[i][0]],
            a2=attrs[c][attr[i][1]],
            a3=attrs[c][attr[i][2]],
            benefit=BENEFITS[ben[i][0]],
            benefit2=BENEFITS[ben[i][1]],
            quality=QUALITIES[qual[i]],
            adj=ADJECTIVES[adj[i]],
        )
        for i, c in enumerate(cat_idx.tolist())
    ]
    return descriptions, features, groups
