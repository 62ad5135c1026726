"""Synthetic data in the seed schema from a documented generative model with a known oracle.

The probability that user u interacts with item i is

    p(u, i) = sigmoid(b + A[personality_u, category_i]          # taste: personality <-> category
                        + kappa * B[profession_u] . f_i          # profession <-> item feature groups
                        + gamma * z_age_u * z_logprice_i         # older users buy dearer things
                        + pop_i + act_u + eps_ui)                # popularity, activity, pair noise

where f_i is the share of the item's feature phrases in each feature group, pop_i ~ N(0, 0.5),
act_u ~ N(0, 0.4), eps_ui ~ N(0, 0.25), and b is solved so the mean of p hits the target density.
Users and items are drawn first (personality -> profession -> age; category -> features, text,
price); pairs are then drawn one block of users at a time, each block from its own random stream, so
the same seed gives byte-identical files and the oracle can be recomputed block by block without
ever holding a dense matrix.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import GENERATOR_FILE, ITEMS_FILE, LONG_FILE, MATRIX_FILE, TRUTH_FILE, USERS_FILE

_LOGGER = logging.getLogger(__name__)

GENERATOR_VERSION = 1
NOTEBOOK_DENSITY = 0.0966  # the notebook's matrix: 966,286 ones in 10,000 x 1,000
# Pair draws are made in blocks of users whose size depends only on the catalogue size, so a block
# never holds more than this many floats, whatever the scale.
BLOCK_CELLS = 2_000_000

# name -> (id prefix, favourite categories)
PERSONALITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Tech Enthusiast": ("tec", ("laptop", "smartphone", "headphones", "smartwatch")),
    "Fashion Lover": ("fas", ("sneakers", "jacket", "sunglasses")),
    "Outdoor Adventurer": ("out", ("backpack", "tent", "jacket", "camera")),
    "Home Chef": ("hom", ("cookware", "coffee maker", "knife set")),
    "Fitness Fanatic": ("fit", ("smartwatch", "sneakers", "yoga mat")),
    "Book Lover": ("boo", ("novel", "e-reader", "coffee maker")),
    "Gamer": ("gam", ("laptop", "headphones", "game console")),
    "Traveler": ("tra", ("backpack", "camera", "sunglasses", "smartphone")),
}

# name -> (typical price in dollars, attributes the description names)
CATEGORIES: dict[str, tuple[float, tuple[str, ...]]] = {
    "laptop": (
        900,
        (
            "advanced cooling system",
            "high refresh rate display",
            "AI-powered processor",
            "backlit keyboard",
            "all-day battery",
        ),
    ),
    "smartphone": (
        650,
        ("triple-lens camera", "OLED display", "5G modem", "all-day battery", "AI-powered processor"),
    ),
    "headphones": (
        180,
        (
            "active noise cancelling",
            "spatial audio",
            "40-hour battery",
            "foldable design",
            "studio-grade drivers",
        ),
    ),
    "smartwatch": (
        300,
        ("heart-rate sensor", "GPS tracking", "always-on display", "sleep tracking", "contactless payments"),
    ),
    "camera": (
        750,
        ("full-frame sensor", "4K video", "image stabilisation", "weather sealing", "fast autofocus"),
    ),
    "sneakers": (
        120,
        ("cushioned sole", "knit upper", "grippy outsole", "reflective details", "lightweight build"),
    ),
    "jacket": (
        160,
        ("insulated lining", "water-repellent shell", "adjustable hood", "zip pockets", "packable design"),
    ),
    "sunglasses": (
        140,
        (
            "polarised lenses",
            "UV400 protection",
            "titanium frame",
            "scratch-resistant coating",
            "wraparound fit",
        ),
    ),
    "backpack": (
        110,
        (
            "padded laptop sleeve",
            "hidden pockets",
            "water-resistant fabric",
            "hip belt",
            "expandable main compartment",
        ),
    ),
    "tent": (
        260,
        ("two-layer design", "aluminium poles", "quick-pitch frame", "storm guy lines", "vestibule storage"),
    ),
    "cookware": (
        190,
        (
            "non-stick coating",
            "tri-ply steel",
            "induction-ready base",
            "oven-safe handles",
            "tempered glass lids",
        ),
    ),
    "coffee maker": (
        220,
        ("built-in grinder", "programmable timer", "milk frother", "thermal carafe", "pressure pump"),
    ),
    "knife set": (
        150,
        ("forged steel blades", "full-tang handles", "hardwood block", "precision edge", "honing rod"),
    ),
    "yoga mat": (
        60,
        ("non-slip surface", "extra cushioning", "alignment lines", "carry strap", "natural rubber"),
    ),
    "novel": (
        20,
        ("gripping plot", "award-winning author", "illustrated cover", "bonus chapter", "book-club guide"),
    ),
    "e-reader": (
        140,
        (
            "glare-free screen",
            "adjustable warm light",
            "weeks-long battery",
            "waterproof body",
            "huge library access",
        ),
    ),
    "game console": (
        480,
        ("4K gaming", "ray tracing", "ultra-fast SSD", "wireless controller", "online multiplayer"),
    ),
}

FEATURE_GROUPS: dict[str, tuple[str, ...]] = {
    "connectivity": ("Bluetooth 5.0", "USB-C connectivity", "Wi-Fi 6", "NFC pairing"),
    "power": ("Fast charging", "Long battery life", "Energy efficient", "Solar compatible"),
    "durability": ("Waterproof", "Shock resistant", "Reinforced stitching", "Scratch-proof coating"),
    "comfort": ("Ergonomic design", "Lightweight", "Breathable fabric", "Memory foam padding"),
    "smart": ("AI assistant", "App control", "Voice control", "Expandable storage"),
    "eco": ("Recycled materials", "Plastic-free packaging", "Carbon neutral shipping", "Repairable design"),
    "premium": ("Premium materials", "Limited edition", "Handcrafted finish", "Lifetime warranty"),
}

# profession -> typical age
PROFESSIONS: dict[str, float] = {
    "science": 38,
    "engineering": 36,
    "healthcare": 41,
    "education": 43,
    "arts": 33,
    "finance": 40,
    "law": 44,
    "sales": 35,
    "hospitality": 29,
    "trades": 39,
    "student": 21,
    "retired": 68,
}

AUDIENCES = (
    "gamers",
    "remote workers",
    "students",
    "travelers",
    "professionals",
    "families",
    "athletes",
    "creators",
    "home cooks",
    "commuters",
    "beginners",
    "enthusiasts",
)
BENEFITS = ("performance", "comfort", "durability", "everyday use", "high efficiency", "style")
QUALITIES = ("top-tier functionality", "reliable results", "great value", "lasting quality")
ADJECTIVES = ("sleek", "rugged", "compact", "versatile", "premium", "budget-friendly")
TEMPLATES = (
    "Designed for {aud}, this {noun} includes {a1} and {a2}. It's built for {benefit} and {benefit2}.",
    "With {a1} and {a2}, this {noun} is built for {benefit}. Perfect for {aud}, it delivers {quality}.",
    "This {noun} features {a1} and {a2}, making it ideal for {aud} who value {benefit}.",
    "A {adj} {noun} with {a1}, {a2} and {a3}. Great for {aud} looking for {quality}.",
)

# Effect sizes of the generative model (see the module docstring).
FAVOURITE_LIFT = 2.2
KAPPA = 1.5
GAMMA = 0.8
POP_SD = 0.5
ACTIVITY_SD = 0.4
NOISE_SD = 0.25


@dataclass(frozen=True)
class World:
    """Everything drawn before the pairs: attributes plus the terms of the logit."""

    users: dict[str, np.ndarray]  # user_id, age, profession, personality (+ p_idx, prof_idx, act)
    items: dict[str, np.ndarray]  # item_id, description, features, price, category (+ cat_idx, groups, pop)
    taste: np.ndarray  # A: [n_personalities, n_categories]
    prof_groups: np.ndarray  # B: [n_professions, n_groups]
    intercept: float
    seed: int

    def logits(self, users: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """Logits for the given users against every item [len(users), n_items], float32."""
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
        if rng is not None:
            z = z + rng.normal(0.0, NOISE_SD, size=z.shape)
        return z.astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _id_width(n: int) -> int:
    return max(4, len(str(n)))


def _draw_world(n_users: int, n_items: int, seed: int, density: float) -> World:
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
    groups = np.zeros((n_items, len(group_names)))
    descriptions, features = [], []
    for i, c in enumerate(cat_idx):
        n_feat = int(rng.integers(2, 6))
        chosen: list[str] = []
        while len(chosen) < n_feat:
            g = int(rng.choice(len(group_names), p=groups_given_cat[c]))
            phrase = FEATURE_GROUPS[group_names[g]][int(rng.integers(0, 4))]
            if phrase not in chosen:
                chosen.append(phrase)
                groups[i, g] += 1.0
        features.append(", ".join(chosen))
        attrs = list(CATEGORIES[cat_names[c]][1])
        a = rng.permutation(len(attrs))[:3]
        tpl = TEMPLATES[int(rng.integers(0, len(TEMPLATES)))]
        b1, b2 = rng.permutation(len(BENEFITS))[:2]
        descriptions.append(
            tpl.format(
                aud=AUDIENCES[int(rng.integers(0, len(AUDIENCES)))],
                noun=cat_names[c],
                a1=attrs[a[0]],
                a2=attrs[a[1]],
                a3=attrs[a[2]],
                benefit=BENEFITS[b1],
                benefit2=BENEFITS[b2],
                quality=QUALITIES[int(rng.integers(0, len(QUALITIES)))],
                adj=ADJECTIVES[int(rng.integers(0, len(ADJECTIVES)))],
            )
        )
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
        if _sigmoid(z + mid).mean() < density:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def block_size(n_items: int) -> int:
    return max(1, BLOCK_CELLS // max(1, n_items))


def iter_blocks(world: World) -> Iterator[tuple[np.ndarray, np.ndarray, np.random.Generator]]:
    """Yields (user ids of the block, true probabilities [b, n_items], the block's stream)."""
    n_users = len(world.users["user_id"])
    size = block_size(len(world.items["item_id"]))
    for b, start in enumerate(range(0, n_users, size)):
        users = np.arange(start, min(n_users, start + size))
        rng = np.random.default_rng([world.seed, 3, b])
        yield users, _sigmoid(world.logits(users, rng)), rng


def _write_csv(path: Path, header: list[str], columns: list[np.ndarray]) -> None:
    import pandas as pd

    pd.DataFrame(dict(zip(header, columns))).to_csv(path, index=False, lineterminator="\n")


def generate(
    out: Path | str,
    n_users: int = 10_000,
    n_items: int = 1_000,
    seed: int = 42,
    density: float = NOTEBOOK_DENSITY,
    long_form: bool = False,
    progress: bool = True,
) -> dict:
    """Writes users.csv, items.csv and the interactions (wide matrix, or long form) to ``out``.

    The wide form also gets true_probabilities.npy (float32 [n_users, n_items]) beside the CSVs;
    both forms get generator.json, from which :func:`true_probabilities` recomputes any block.

    Returns:
        A summary: sizes, positives, density, files written.
    """
    from tqdm import tqdm

    if n_users < 1 or n_items < 1:
        raise ValueError(f"users and items must be >= 1 (got {n_users}, {n_items})")
    if not 0.0 < density < 1.0:
        raise ValueError(f"density must be in (0, 1) (got {density})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    world = _draw_world(n_users, n_items, seed, density)
    u, it = world.users, world.items
    _write_csv(
        out / USERS_FILE,
        ["user_id", "age", "profession", "personality"],
        [u["user_id"], u["age"], u["profession"], u["personality"]],
    )
    _write_csv(
        out / ITEMS_FILE,
        ["item_id", "description", "features", "price", "category"],
        [it["item_id"], it["description"], it["features"], it["price"], it["category"]],
    )
    # A stale file of the other form would be read instead of the new one.
    for stale in (out / MATRIX_FILE, out / LONG_FILE, out / TRUTH_FILE):
        stale.unlink(missing_ok=True)

    positives = 0
    truth = None
    if not long_form:
        truth = np.lib.format.open_memmap(
            out / TRUTH_FILE, mode="w+", dtype=np.float32, shape=(n_users, n_items)
        )
    target = out / (LONG_FILE if long_form else MATRIX_FILE)
    item_ids = it["item_id"]
    with open(target, "wb") as fh:
        fh.write((("user_id,item_id" if long_form else "user_id," + ",".join(item_ids)) + "\n").encode())
        bar = tqdm(total=n_users, desc="generate", unit="user", disable=not progress)
        for users, probs, rng in iter_blocks(world):
            hit = rng.random(probs.shape, dtype=np.float32) < probs
            positives += int(hit.sum())
            ids = u["user_id"][users]
            if long_form:
                r, c = np.nonzero(hit)
                fh.write("".join(f"{ids[a]},{item_ids[b]}\n" for a, b in zip(r, c)).encode())
            else:
                truth[users] = probs
                # Each row is "0,1,0,...\n": build the bytes in numpy rather than formatting 10^7 ints.
                cells = np.empty((len(users), 2 * n_items), dtype=np.uint8)
                cells[:, 0::2] = np.where(hit, ord("1"), ord("0"))
                cells[:, 1::2] = ord(",")
                cells[:, -1] = ord("\n")
                for uid, row in zip(ids, cells):
                    fh.write(uid.encode() + b"," + row.tobytes())
            bar.update(len(users))
        bar.close()
    if truth is not None:
        truth.flush()
        del truth
    summary = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "users": n_users,
        "items": n_items,
        "target_density": density,
        "intercept": world.intercept,
        "positives": positives,
        "density": positives / (n_users * n_items),
        "form": "long" if long_form else "matrix",
        "block_users": block_size(n_items),
    }
    (out / GENERATOR_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    _LOGGER.info("wrote %s: %d positives (%.2f %%)", out, positives, 100 * summary["density"])
    return summary


def load_world(root: Path | str) -> World:
    """Rebuilds the generator's world from generator.json (same version and parameters)."""
    meta = json.loads((Path(root) / GENERATOR_FILE).read_text())
    if meta.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(
            f"{Path(root) / GENERATOR_FILE}: generator version {meta.get('generator_version')} "
            f"cannot be replayed by version {GENERATOR_VERSION}"
        )
    return _draw_world(meta["users"], meta["items"], meta["seed"], meta["target_density"])


def true_probabilities(root: Path | str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (user ids, true probabilities [b, n_items]) block by block for a generated data set.

    Reads true_probabilities.npy when present, else replays the generator from generator.json.
    """
    root = Path(root)
    if (root / TRUTH_FILE).is_file():
        probs = np.load(root / TRUTH_FILE, mmap_mode="r")
        size = block_size(probs.shape[1])
        for start in range(0, probs.shape[0], size):
            users = np.arange(start, min(probs.shape[0], start + size))
            yield users, np.asarray(probs[users])
        return
    for users, probs, _ in iter_blocks(load_world(root)):
        yield users, probs
