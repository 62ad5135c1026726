"""The serving engine: a verified artifacts folder in memory, answering with ONNX Runtime and numpy.

A request for a known user runs one user-tower pass and one matrix-vector product over item vectors
computed at export; then masking and an ``argpartition`` top-k. Readers never lock: the catalogue
is an immutable snapshot that UpsertItems replaces by a single reference assignment.
"""

from __future__ import annotations

import csv
import itertools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .csr import CSR
from .encoder import OnnxTextEncoder
from .errors import DeadlineExceeded, InvalidArgument, NotFound
from .features import MINMAX, FieldSpec, FieldTable, assemble, load_tables
from .manifest import ArtifactError, check_dims, load_manifest
from .metrics import DEFAULT_KS, full_ranking_metrics, notebook_metric
from .runtime import CUDA, make_session, resolve_providers
from .splits import RecordedSplit, load_recorded_split

_LOGGER = logging.getLogger(__name__)

SHORT_TEXT_LIMIT = 200  # ids, profession, personality, category
LONG_TEXT_LIMIT = 5000  # description, features
MAX_AGE = 150.0
MAX_PRICE = 1e9  # beyond this a price is a unit or typing error, and scaling it overflows
MAX_K = 1000
# Candidate lists are built at load only while users x items stays below this (a few seconds of
# work); larger deployments serve every request through the exact path.
CANDIDATE_MAX_CELLS = 200_000_000
# Keys of the training metrics that are bookkeeping, not metrics (left out of GetModelInfo).
_NOT_METRICS = ("epochs", "train_seconds", "users")


def _show(value: str, width: int = 60) -> str:
    """A bounded repr for error messages: an id of 20,000 characters must not bloat the status."""
    return repr(value) if len(value) <= width else repr(value[:width]) + f"... ({len(value)} characters)"


def _walk_candidates(
    cat: Catalog,
    user: int,
    top_n: int,
    excluded: set[int],
    price_min: float | None,
    price_max: float | None,
    codes: set[int] | None,
) -> tuple[list[int], list[float]] | None:
    """The first top_n admissible items of the user's candidate list, or None when the list (the
    user's top-M unseen items) runs out before top_n are found and more items exist beyond it."""
    rows, probs = [], []
    price, code = cat.price_list, cat.code_list
    # Most requests stop after about top_n entries: convert a short head first, the rest on demand.
    head = top_n + 16
    cand_rows, cand_probs = cat.cand_rows[user], cat.cand_probs[user]
    pairs = zip(cand_rows[:head].tolist(), cand_probs[:head].tolist())
    if head < len(cand_rows):
        pairs = itertools.chain(pairs, zip(cand_rows[head:].tolist(), cand_probs[head:].tolist()))
    for j, p in pairs:
        if j < 0:
            return rows, probs  # the list held every unseen item: nothing more exists
        if (
            j in excluded
            or (price_min is not None and price[j] < price_min)
            or (price_max is not None and price[j] > price_max)
            or (codes is not None and code[j] not in codes)
        ):
            continue
        rows.append(j)
        probs.append(p)
        if len(rows) == top_n:
            return rows, probs
    return None


def _logits(vectors64: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Item logits for one user, float32 [n]: summed in float64, so the candidate lists (a batched
    product) and the exact path (a matrix-vector product) give the same numbers and orders."""
    return (vectors64 @ u.astype(np.float64)).astype(np.float32)


def _sigmoid(x: float) -> float:
    # float32 rounding, as the ONNX head would give; math.exp would overflow below -709.
    return float(np.float32(1.0 / (1.0 + math.exp(-x)) if x > -700 else 0.0))


def _check_id(name: str, value: str) -> None:
    if len(value) > SHORT_TEXT_LIMIT:
        raise InvalidArgument(f"{name} is {len(value)} characters; the limit is {SHORT_TEXT_LIMIT}")


@dataclass(frozen=True)
class Limits:
    """Request size limits (reported by GetModelInfo so clients can plan batches)."""

    max_top_n: int = 1000
    max_score_pairs: int = 10_000
    max_upsert_items: int = 1000
    max_inline_interactions: int = 200_000


@dataclass(frozen=True)
class EngineConfig:
    """How an artifacts folder is loaded.

    Attributes:
        model: model kind to serve (None: the manifest's default, the best holdout NDCG@10).
        device: "cpu" or "cuda" (falls back to CPU, visibly, where CUDA is not available).
        encoder_variant: fp32 / optimized / int8 / fp16 (None: int8 on CPU when it passed its gate,
            fp16 on CUDA).
        tower_threads: ORT threads per tower session; 1, because parallelism comes from gRPC's pool.
        encoder_threads: ORT threads for the text encoder.
        verify_hashes: check every file's sha256 against the manifest at load.
        candidates: per known user, the exact top-M unseen items kept with each catalogue snapshot
            (0: off). Requests that M answers never touch numpy; see Engine.recommend.
        limits: request size limits.
    """

    model: str | None = None
    device: str = "cpu"
    encoder_variant: str | None = None
    tower_threads: int = 1
    encoder_threads: int = 1
    verify_hashes: bool = True
    candidates: int = 128
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class UserAttrs:
    """An unseen user's attributes (None: not given)."""

    age: float
    profession: str
    personality: str | None = None


@dataclass(frozen=True)
class NewItemData:
    item_id: str
    description: str
    features: str
    price: float
    category: str


@dataclass(frozen=True)
class Catalog:
    """An immutable snapshot of the items; replaced whole by UpsertItems."""

    ids: list[str]
    index: dict[str, int]
    price: np.ndarray  # float64 [n]
    category: list[str]
    category_code: np.ndarray  # int32 [n], into categories
    categories: list[str]
    description: list[str]
    features: list[str]
    vectors: np.ndarray  # float32 [n, d] of the served model
    vectors64: np.ndarray  # the same in float64, for _logits
    order: np.ndarray | None  # best-first item order when the ranking is user-independent
    nan_rows: np.ndarray  # rows whose vector is not finite (never recommended)
    category_set: frozenset[str]
    order_list: list[int]  # ``order`` as Python ints (walked per request without numpy)
    wire: list[tuple[bytes, bytes]]  # per item: serialized Item fields before and after ``score``
    price_list: list[float]  # price and category code as Python values, for the candidate walk
    code_list: list[int]
    cand_rows: np.ndarray | None = None  # int32 [n_users, M]: each known user's best unseen items, -1 pads
    cand_probs: np.ndarray | None = None  # float32 [n_users, M]: their probabilities

    def __len__(self) -> int:
        return len(self.ids)


class _Tower:
    """One (model, split) pair of ONNX towers with its feature specs."""

    def __init__(self, root: Path, entry: dict, providers: Sequence[str], threads: int):
        self.user_specs = [FieldSpec.from_json(d) for d in entry["features"]["user"]]
        self.item_specs = [FieldSpec.from_json(d) for d in entry["features"]["item"]]
        u, i = entry["user_tower"], entry["item_tower"]
        self.user_session = make_session(root / u["file"], providers, threads)
        self.item_session = make_session(root / i["file"], providers, threads)
        self.user_in, self.user_out = u["input"], u["output"]
        self.item_in, self.item_out = i["input"], i["output"]
        for sess, spec, d, f in (
            (self.user_session, self.user_specs, u, u["file"]),
            (self.item_session, self.item_specs, i, i["file"]),
        ):
            check_dims(root / f, "input width", d["input_dim"], int(sess.get_inputs()[0].shape[1]))
            check_dims(root / f, "feature spec width", d["input_dim"], sum(s.dim for s in spec))
        self.dim = int(u["output_dim"])
        vec_path = root / entry["item_vectors_file"]
        self.item_vectors = np.load(vec_path).astype(np.float32)
        check_dims(vec_path, "vector width", self.dim, int(self.item_vectors.shape[1]))
        self._all_users: np.ndarray | None = None
        self._lock = threading.Lock()

    def users(self, features: np.ndarray) -> np.ndarray:
        return self.user_session.run([self.user_out], {self.user_in: features})[0]

    def items(self, features: np.ndarray) -> np.ndarray:
        return self.item_session.run([self.item_out], {self.item_in: features})[0]

    def all_user_vectors(
        self, build_features: Callable[[list[FieldSpec], np.ndarray], np.ndarray], n_users: int
    ) -> np.ndarray:
        """Every known user's vector: one batched user-tower pass, computed once and then reused by
        Recommend, Score and Evaluate (a known user's attributes never change while served)."""
        if self._all_users is not None:
            return self._all_users
        with self._lock:
            if self._all_users is None:
                out = np.empty((n_users, self.dim), dtype=np.float32)
                for start in range(0, n_users, 4096):
                    rows = np.arange(start, min(n_users, start + 4096))
                    out[rows] = self.users(build_features(self.user_specs, rows))
                self._all_users = out
            return self._all_users


class _TextVectors:
    """Text -> vector for one field: the exported table first, then the ONNX encoder (LRU-cached)."""

    def __init__(self, table: FieldTable, max_length: int, pad_to: int | None, cache_size: int = 10_000):
        self.known = {str(t): r for r, t in enumerate(table.texts)}
        self.table = table.vectors
        self.max_length = max_length
        self.pad_to = pad_to
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()

    def get(self, texts: Sequence[str], encoder: OnnxTextEncoder) -> np.ndarray:
        out = np.empty((len(texts), self.table.shape[1]), dtype=np.float32)
        missing: list[int] = []
        with self.lock:
            for j, t in enumerate(texts):
                r = self.known.get(t)
                if r is not None:
                    out[j] = self.table[r]
                elif t in self.cache:
                    self.cache.move_to_end(t)
                    out[j] = self.cache[t]
                else:
                    missing.append(j)
        if missing:
            uniq = sorted({texts[j] for j in missing})
            vecs = dict(zip(uniq, encoder.encode(uniq, self.max_length, self.pad_to)))
            with self.lock:
                for t, v in vecs.items():
                    self.cache[t] = v
                    if len(self.cache) > self.cache_size:
                        self.cache.popitem(last=False)
            for j in missing:
                out[j] = vecs[texts[j]]
        return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ArtifactError(path, f"unreadable ({err})") from err


def _check_text(name: str, value: str, limit: int, required: bool = True) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidArgument(f"{name} is {len(value)} characters; the limit is {limit}")
    return value


def validate_attrs(attrs: UserAttrs, needs_personality: bool) -> None:
    if not math.isfinite(attrs.age) or attrs.age <= 0 or attrs.age > MAX_AGE:
        raise InvalidArgument(f"user.age must be in (0, {MAX_AGE:g}] (got {attrs.age})")
    _check_text("user.profession", attrs.profession, SHORT_TEXT_LIMIT)
    if needs_personality:
        if not attrs.personality:
            raise InvalidArgument(
                "user.personality is required: the served model reads it (see GetModelInfo.user_fields)"
            )
        _check_text("user.personality", attrs.personality, SHORT_TEXT_LIMIT)


class Engine:
    """Loads ``root`` (a folder written by `towerserve export`) and answers requests.

    Raises:
        ArtifactError: a file is missing, tampered with or inconsistent (named in the message).
    """

    def __init__(self, root: Path | str, config: EngineConfig = EngineConfig()):
        t0 = time.perf_counter()
        self.root = Path(root).resolve()
        self.config = config
        self.limits = config.limits
        self.manifest = m = load_manifest(self.root, verify_hashes=config.verify_hashes)
        self.kind = config.model or m["default_model"]
        if self.kind not in m["models"]:
            raise ArtifactError(
                self.root / "manifest.json", f"has no model {self.kind!r} (has {sorted(m['models'])})"
            )
        entry = m["models"][self.kind]
        self.model_version = entry["model_version"]
        self.user_independent = bool(entry["user_independent"])
        providers = resolve_providers(config.device)
        self.towers = {
            s: _Tower(self.root, e, providers, config.tower_threads) for s, e in entry["splits"].items()
        }
        if "holdout" not in self.towers:
            raise ArtifactError(
                self.root / "manifest.json", f"model {self.kind!r} has no holdout split to serve"
            )
        self.serving = self.towers["holdout"]

        enc = m["encoder"]
        tables = load_tables(self.root / m["catalog"]["embeddings_file"])
        variant = config.encoder_variant or (
            enc["gpu_variant"] if CUDA in providers else enc["default_variant"]
        )
        if variant not in enc["variants"]:
            raise ArtifactError(
                self.root / "manifest.json",
                f"has no encoder variant {variant!r} (has {sorted(enc['variants'])})",
            )
        padded = enc.get("padded_lengths", {})
        self.encoder = self._encoder(enc, variant, providers, config.encoder_threads)
        if not enc["variants"][variant].get("accepted", False) or CUDA in self.encoder.providers:
            # Export checks variants on its own machine (often CPU only); a variant it could not
            # check, or any graph now running on CUDA, is checked here on the device that runs it,
            # against the training-time vectors, with a fall-back to fp32 if it disagrees.
            ok, detail = self._self_check(tables, enc, padded)
            if not ok:
                _LOGGER.warning(
                    "encoder variant %s failed its load-time check (%s); using fp32 instead", variant, detail
                )
                variant = "fp32"
                self.encoder = self._encoder(enc, variant, providers, config.encoder_threads)
        self.encoder_variant = variant
        self.encoder_name = enc.get("name") or Path(enc["model"]).name
        self.text = {f: _TextVectors(tables[f], int(enc["max_lengths"][f]), padded.get(f)) for f in tables}
        self.user_fields = [s.name for s in self.serving.user_specs]
        self.item_fields = [s.name for s in self.serving.item_specs]

        users = _read_csv(self.root / m["catalog"]["users_file"])
        self.user_ids = [r["user_id"] for r in users]
        self.user_index = {u: j for j, u in enumerate(self.user_ids)}
        self.user_age = np.array([float(r["age"]) for r in users])
        self.user_rows = {f: tables[f].index for f in ("profession", "personality") if f in tables}
        for f, rows in self.user_rows.items():
            check_dims(self.root / m["catalog"]["embeddings_file"], f"{f} rows", len(users), len(rows))

        items = _read_csv(self.root / m["catalog"]["items_file"])
        check_dims(
            self.root / m["catalog"]["items_file"], "item rows", len(self.serving.item_vectors), len(items)
        )
        self.item_rows = {f: tables[f].index for f in ("description", "features", "category") if f in tables}
        self.splits: dict[str, RecordedSplit] = {
            s: load_recorded_split(self.root / e["file"]) for s, e in m["splits"].items()
        }
        holdout = self.splits["holdout"]
        check_dims(self.root / m["splits"]["holdout"]["file"], "users", len(users), holdout.train.n_rows)
        self.seen: CSR = holdout.train.union(holdout.test)  # everything the user interacted with
        self.known_user_vectors()  # known users: one batched tower pass, at load
        self._write_lock = threading.Lock()
        self.catalog = self._make_catalog(
            ids=[r["item_id"] for r in items],
            price=np.array([float(r["price"]) for r in items]),
            category=[r["category"] for r in items],
            description=[r["description"] for r in items],
            features=[r["features"] for r in items],
            vectors=self.serving.item_vectors,
        )
        self.loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.providers = sorted(
            {
                p
                for t in self.towers.values()
                for s in (t.user_session, t.item_session)
                for p in s.get_providers()
            }
            | set(self.encoder.providers)
        )
        self.load_seconds = time.perf_counter() - t0
        _LOGGER.info(
            "loaded %s (%s, %d users, %d items, encoder %s/%s, providers %s) in %.2f s",
            self.root,
            self.model_version,
            len(self.user_ids),
            len(self.catalog),
            self.encoder_name,
            variant,
            self.providers,
            self.load_seconds,
        )

    def _encoder(self, enc: dict, variant: str, providers, threads: int) -> OnnxTextEncoder:
        path = self.root / enc["variants"][variant]["file"]
        encoder = OnnxTextEncoder(path, self.root / enc["tokenizer_file"], enc["pooling"], providers, threads)
        check_dims(
            path,
            "embedding width",
            int(enc["dim"]),
            int(encoder.session.get_outputs()[0].shape[1] or enc["dim"]),
        )
        return encoder

    def _self_check(
        self,
        tables: dict[str, FieldTable],
        enc: dict,
        padded: dict,
        sample: int = 32,
        min_cosine: float = 0.999,
    ) -> tuple[bool, str]:
        field_name = max(tables, key=lambda f: len(tables[f].texts))
        table = tables[field_name]
        texts = [str(t) for t in table.texts[:sample]]
        try:
            got = self.encoder.encode(texts, int(enc["max_lengths"][field_name]), padded.get(field_name))
        except Exception as err:  # an ORT kernel missing on this device, for instance
            return False, f"{type(err).__name__}: {err}"
        ref = table.vectors[: len(texts)]
        cos = (got * ref).sum(1) / np.maximum(
            np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12
        )
        return bool(
            cos.mean() >= min_cosine
        ), f"cosine mean {cos.mean():.5f} on {len(texts)} {field_name} texts"

    # ------------------------------------------------------------------------------------- features

    def _candidates(self, vectors64: np.ndarray, nan_rows: np.ndarray) -> dict[str, np.ndarray]:
        """Each known user's exact top-M unseen items (score desc, ties by row, as the exact path).

        Built block by block with a few large numpy calls, off the request path (load, upsert).
        """
        n_users, n_items = len(self.user_ids), len(vectors64)
        m = min(self.config.candidates, n_items)
        if m <= 0 or n_users * n_items > CANDIDATE_MAX_CELLS:
            return {}
        users = self.known_user_vectors().astype(np.float64)
        rows = np.full((n_users, m), -1, dtype=np.int32)
        probs = np.zeros((n_users, m), dtype=np.float32)
        for start in range(0, n_users, 2048):
            block = np.arange(start, min(n_users, start + 2048))
            scores = (users[block] @ vectors64.T).astype(
                np.float32
            )  # as _logits: float64 sums, float32 result
            seen = self.seen.dense_rows(block)  # upserted items (beyond the recorded columns) are never seen
            scores[:, : seen.shape[1]][seen] = -np.inf
            if nan_rows.size:
                scores[:, nan_rows] = -np.inf
            top = (
                np.argpartition(scores, n_items - m, axis=1)[:, n_items - m :]
                if m < n_items
                else np.broadcast_to(np.arange(n_items), scores.shape).copy()
            )
            best = np.take_along_axis(scores, top, axis=1)
            order = np.lexsort((top, -best), axis=1)
            top, best = np.take_along_axis(top, order, axis=1), np.take_along_axis(best, order, axis=1)
            finite = np.isfinite(best)
            rows[block] = np.where(finite, top, -1)
            probs[block] = np.where(finite, 1.0 / (1.0 + np.exp(-best.astype(np.float64))), 0.0)
        return {"cand_rows": rows, "cand_probs": probs}

    def _make_catalog(self, ids, price, category, description, features, vectors, wire=None) -> Catalog:
        categories = sorted(set(category))
        code = {c: j for j, c in enumerate(categories)}
        order = None
        if self.user_independent:
            # Every user ranks items the same way: sort once with any user's vector.
            order = np.argsort(-(vectors @ self.known_user_vectors()[0]), kind="stable")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        vectors64 = vectors.astype(np.float64)
        category_code = np.array([code[c] for c in category], dtype=np.int32)
        price = np.asarray(price, dtype=np.float64)
        nan_rows = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        if order is not None and nan_rows.size:
            order = order[~np.isin(order, nan_rows)]
        return Catalog(
            ids=list(ids),
            index={x: j for j, x in enumerate(ids)},
            price=price,
            category=list(category),
            category_code=category_code,
            categories=categories,
            description=list(description),
            features=list(features),
            vectors=vectors,
            vectors64=vectors64,
            order=order,
            nan_rows=nan_rows,
            category_set=frozenset(categories),
            order_list=order.tolist() if order is not None else [],
            wire=wire
            if wire is not None
            else [
                item_wire(i, p, d, f, c)
                for i, p, d, f, c in zip(ids, price.tolist(), description, features, category)
            ],
            price_list=price.tolist(),
            code_list=category_code.tolist(),
            **self._candidates(vectors64, nan_rows),
        )

    def _user_features(self, specs: list[FieldSpec], rows: np.ndarray) -> np.ndarray:
        parts = {}
        for s in specs:
            if s.kind == MINMAX:
                parts[s.name] = self.user_age[rows]
            else:
                parts[s.name] = self.text[s.name].table[self.user_rows[s.name][rows]]
        return assemble(specs, parts)

    def _record_features(
        self, specs: list[FieldSpec], records: Sequence[UserAttrs | NewItemData]
    ) -> np.ndarray:
        """Input vectors for records that carry raw attributes (unseen users, new items): numbers are
        scaled, texts looked up in the exported tables or encoded (and cached)."""
        parts = {}
        for s in specs:
            values = [getattr(r, s.name) for r in records]
            parts[s.name] = (
                np.array(values, dtype=np.float64)
                if s.kind == MINMAX
                else self.text[s.name].get(values, self.encoder)
            )
        return assemble(specs, parts)

    def known_user_vectors(self, tower: _Tower | None = None) -> np.ndarray:
        """Every known user's vector for ``tower`` (default: the served one), computed once."""
        return (tower or self.serving).all_user_vectors(self._user_features, len(self.user_ids))

    def user_index_of(self, user_id: str) -> int:
        idx = self.user_index.get(user_id)
        if idx is None:
            _check_id("user_id", user_id)
            raise NotFound(f"unknown user_id {_show(user_id)}")
        return idx

    def user_vectors(self, refs: Sequence[int | UserAttrs], tower: _Tower | None = None) -> np.ndarray:
        """Vectors [len(refs), d] for known users (int index: computed at load) and unseen ones
        (UserAttrs: one user-tower pass for the request)."""
        tower = tower or self.serving
        known_vecs = self.known_user_vectors(tower)
        new = [j for j, r in enumerate(refs) if isinstance(r, UserAttrs)]
        if not new:
            return known_vecs[np.asarray(refs, dtype=np.int64)]
        needs_personality = "personality" in [s.name for s in tower.user_specs]
        attrs = [refs[j] for j in new]
        for a in attrs:
            validate_attrs(a, needs_personality)
        out = np.empty((len(refs), tower.dim), dtype=np.float32)
        out[new] = tower.users(self._record_features(tower.user_specs, attrs))
        known = [j for j, r in enumerate(refs) if not isinstance(r, UserAttrs)]
        if known:
            out[known] = known_vecs[[refs[j] for j in known]]
        return out

    # ------------------------------------------------------------------------------------- requests

    def recommend(
        self,
        user: str | UserAttrs,
        top_n: int,
        exclude_seen: bool = True,
        price_min: float | None = None,
        price_max: float | None = None,
        categories: Sequence[str] = (),
        exclude_item_ids: Sequence[str] = (),
    ) -> tuple[Catalog, list[int], list[float]]:
        """Top-N for one user.

        Written for the event loop, where every numpy call over the catalogue drops the GIL and,
        under load, pays for a contended re-acquire (measured: ~70 us of CPU for one mat-vec).
        So a known user with seen items excluded is answered from the snapshot's candidate list in
        plain Python when its top-M holds enough admissible items; otherwise the exact path runs:
        one mat-vec, exclusions assigned by index, one partition. Both give the same items.

        Returns:
            (catalogue snapshot, item rows, probabilities) best first; at most top_n of each.
        """
        if not 1 <= top_n <= self.limits.max_top_n:
            raise InvalidArgument(f"top_n must be in [1, {self.limits.max_top_n}] (got {top_n})")
        for name, v in (("price_range.min", price_min), ("price_range.max", price_max)):
            if v is not None and not math.isfinite(v):
                raise InvalidArgument(f"{name} must be a finite number (got {v})")
        if price_min is not None and price_max is not None and price_min > price_max:
            raise InvalidArgument(f"price_range.min {price_min} is above price_range.max {price_max}")
        cat = self.catalog  # one snapshot for the whole request
        ref = self.user_index_of(user) if isinstance(user, str) else user
        excluded = {cat.index[i] for i in exclude_item_ids if i in cat.index}
        codes = {cat.categories.index(c) for c in categories if c in cat.category_set} if categories else None
        known = not isinstance(ref, UserAttrs)
        if known and exclude_seen and cat.cand_rows is not None and top_n <= cat.cand_rows.shape[1]:
            hit = _walk_candidates(cat, ref, top_n, excluded, price_min, price_max, codes)
            if hit is not None:
                return cat, *hit
        u = self.known_user_vectors()[ref] if known else self.user_vectors([ref])[0]
        if known and exclude_seen:
            excluded.update(self.seen.row(ref).tolist())
        allowed = None
        if price_min is not None or price_max is not None or codes is not None:
            allowed = np.ones(len(cat), dtype=bool)
            if price_min is not None:
                allowed &= cat.price >= price_min
            if price_max is not None:
                allowed &= cat.price <= price_max
            if codes is not None:
                pick = np.zeros(len(cat.categories), dtype=bool)
                pick[list(codes)] = True
                allowed &= pick[cat.category_code]
        if cat.order is not None:
            return cat, *self._walk_order(cat, u, top_n, excluded, allowed)
        scores = _logits(cat.vectors64, u)
        if excluded:
            scores[list(excluded)] = -np.inf
        if cat.nan_rows.size:  # defensive: an item whose vector is not finite is never returned
            scores[cat.nan_rows] = -np.inf
        if allowed is not None:
            scores[~allowed] = -np.inf
        n = len(scores)
        k = min(top_n, n)
        top = np.argpartition(scores, n - k)[n - k :] if k < n else np.arange(n)
        best = scores[top]
        order = np.lexsort((top, -best))  # best first; ties by catalogue row, as the candidate lists
        rows, logits = top[order].tolist(), best[order].tolist()
        keep = [j for j, x in enumerate(logits) if x != -math.inf]
        return cat, [rows[j] for j in keep], [_sigmoid(logits[j]) for j in keep]

    @staticmethod
    def _walk_order(
        cat: Catalog, u: np.ndarray, top_n: int, excluded: set[int], allowed: np.ndarray | None
    ) -> tuple[list[int], list[float]]:
        """The user-independent ranking: first top_n admissible items of the precomputed order."""
        rows: list[int] = []
        for j in cat.order_list:
            if j in excluded or (allowed is not None and not allowed[j]):
                continue
            rows.append(j)
            if len(rows) == top_n:
                break
        logits = _logits(cat.vectors64[rows], u).tolist() if rows else []
        return rows, [_sigmoid(x) for x in logits]

    def score(self, pairs: Sequence[tuple[str | UserAttrs, str]]) -> np.ndarray:
        """Probabilities for (user, item id) pairs, float32 [len(pairs)]."""
        if not 1 <= len(pairs) <= self.limits.max_score_pairs:
            raise InvalidArgument(
                f"pairs must hold 1..{self.limits.max_score_pairs} pairs (got {len(pairs)})"
            )
        cat = self.catalog
        items = np.empty(len(pairs), dtype=np.int64)
        refs: list[int | UserAttrs] = []
        slot: dict[object, int] = {}
        which = np.empty(len(pairs), dtype=np.int64)
        for j, (user, item_id) in enumerate(pairs):
            i = cat.index.get(item_id)
            if i is None:
                _check_id(f"pairs[{j}].item_id", item_id)
                raise NotFound(f"unknown item_id {_show(item_id)} (pair {j})")
            items[j] = i
            key = self.user_index_of(user) if isinstance(user, str) else user
            if key not in slot:  # each distinct user goes through the tower once
                slot[key] = len(refs)
                refs.append(key)
            which[j] = slot[key]
        uvec = self.user_vectors(refs)
        logits = np.einsum("nd,nd->n", uvec[which], cat.vectors[items])
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def evaluate(
        self,
        split: str = "holdout",
        ks: Sequence[int] = DEFAULT_KS,
        protocol: str = "full",
        inline: Sequence[tuple[str, str]] | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[dict[str, float], int]:
        """Metrics of the served model (the cold split uses the model trained without those users/items).

        Returns:
            (metrics, users evaluated).
        """
        ks = list(ks) or list(DEFAULT_KS)
        bad = [k for k in ks if not 1 <= k <= MAX_K]
        if bad:
            raise InvalidArgument(f"ks must be in [1, {MAX_K}] (got {bad})")
        if protocol not in ("full", "notebook"):
            raise InvalidArgument(f"protocol must be 'full' or 'notebook' (got {protocol!r})")
        if inline is not None:
            if not 1 <= len(inline) <= self.limits.max_inline_interactions:
                raise InvalidArgument(
                    f"interactions must hold 1..{self.limits.max_inline_interactions} pairs "
                    f"(got {len(inline)})"
                )
            split = "holdout"
        if split not in self.splits or split not in self.towers:
            raise InvalidArgument(
                f"split must be one of {sorted(set(self.splits) & set(self.towers))} (got {split!r})"
            )
        rec = self.splits[split]
        tower = self.towers[split]
        n_items = rec.train.n_cols
        vectors = tower.item_vectors[:n_items]  # recorded splits rank the exported catalogue
        if check:
            check()
        users_vec = self.known_user_vectors(tower)
        if inline is not None:
            cat = self.catalog
            u = np.empty(len(inline), dtype=np.int64)
            i = np.empty(len(inline), dtype=np.int64)
            for j, (uid, iid) in enumerate(inline):
                u[j] = self.user_index_of(uid)
                ii = cat.index.get(iid)
                if ii is None or ii >= n_items:
                    _check_id(f"interactions[{j}].item_id", iid)
                    raise NotFound(f"unknown item_id {_show(iid)} (interaction {j})")
                i[j] = ii
            test = CSR.from_pairs(u, i, len(self.user_ids), n_items)
            rng = np.random.default_rng(42)
            lengths = test.row_lengths()
            nb_users = np.flatnonzero(lengths)
            nb_items = test.indices[test.indptr[nb_users] + rng.integers(0, lengths[nb_users])]
        else:
            test = rec.test
            nb_users, nb_items = rec.notebook_users, rec.notebook_items
        logits = np.einsum("nd,nd->n", users_vec[nb_users], vectors[nb_items])
        metrics = {"notebook_score": notebook_metric(1.0 / (1.0 + np.exp(-logits)))}
        n_users = len(nb_users)
        if protocol == "full":
            full = full_ranking_metrics(
                lambda uu: users_vec[uu] @ vectors.T, test, rec.train, ks, on_chunk=check
            )
            n_users = int(full.pop("users"))
            metrics.update(full)
        return metrics, n_users

    def upsert_items(self, items: Sequence[NewItemData]) -> tuple[int, int, int]:
        """Adds or replaces items (encoder + item tower), then swaps the catalogue snapshot.

        Returns:
            (inserted, updated, catalogue size).
        """
        if not 1 <= len(items) <= self.limits.max_upsert_items:
            raise InvalidArgument(
                f"items must hold 1..{self.limits.max_upsert_items} items (got {len(items)})"
            )
        seen_ids = set()
        for j, it in enumerate(items):
            _check_text(f"items[{j}].item_id", it.item_id, SHORT_TEXT_LIMIT)
            _check_text(f"items[{j}].description", it.description, LONG_TEXT_LIMIT)
            _check_text(f"items[{j}].features", it.features, LONG_TEXT_LIMIT)
            _check_text(f"items[{j}].category", it.category, SHORT_TEXT_LIMIT)
            if not math.isfinite(it.price) or not 0 <= it.price <= MAX_PRICE:
                raise InvalidArgument(f"items[{j}].price must be in [0, {MAX_PRICE:g}] (got {it.price})")
            if it.item_id in seen_ids:
                raise InvalidArgument(f"items[{j}].item_id {it.item_id!r} appears twice in the request")
            seen_ids.add(it.item_id)
        vecs = self.serving.items(self._record_features(self.serving.item_specs, items))
        bad = np.flatnonzero(~np.isfinite(vecs).all(axis=1))
        if bad.size:
            raise InvalidArgument(
                f"items[{int(bad[0])}] ({_show(items[int(bad[0])].item_id)}): the item tower "
                "produced non-finite values for these attributes"
            )
        with self._write_lock:  # writers queue here; readers keep using the old snapshot meanwhile
            cat = self.catalog
            ids, price = list(cat.ids), cat.price.copy()
            category, description, features = list(cat.category), list(cat.description), list(cat.features)
            wire = list(cat.wire)
            vectors = cat.vectors
            new_rows = [it for it in items if it.item_id not in cat.index]
            if new_rows:
                vectors = np.concatenate(
                    [vectors, np.zeros((len(new_rows), vectors.shape[1]), dtype=np.float32)]
                )
                price = np.concatenate([price, np.zeros(len(new_rows))])
            else:
                vectors = vectors.copy()
            index = dict(cat.index)
            inserted = updated = 0
            for it, v in zip(items, vecs):
                j = index.get(it.item_id)
                if j is None:
                    j = len(ids)
                    index[it.item_id] = j
                    ids.append(it.item_id)
                    category.append(it.category)
                    description.append(it.description)
                    features.append(it.features)
                    wire.append(b"")
                    inserted += 1
                else:
                    category[j], description[j], features[j] = it.category, it.description, it.features
                    updated += 1
                price[j] = it.price
                vectors[j] = v
                wire[j] = item_wire(it.item_id, it.price, it.description, it.features, it.category)
            # The new snapshot brings fresh candidate lists, so upserted items rank where they should.
            self.catalog = self._make_catalog(ids, price, category, description, features, vectors, wire)
        return inserted, updated, len(self.catalog)

    def warm_up(self) -> None:
        """One pass through every session, so the first real request pays no lazy initialisation."""
        if self.user_ids:
            self.recommend(self.user_ids[0], 10)
        self.encoder.encode(["warm up"], 16)

    def info(self) -> dict:
        train = self.manifest.get("training", {}).get("metrics", {}).get("holdout", {}).get(self.kind, {})
        return {
            "model_version": self.model_version,
            "model_kind": self.kind,
            "user_independent_ranking": self.user_independent,
            "item_count": len(self.catalog),
            "user_count": len(self.user_ids),
            "providers": self.providers,
            "encoder": self.encoder_name,
            "encoder_variant": self.encoder_variant,
            "vector_dim": self.serving.dim,
            "user_fields": self.user_fields,
            "item_fields": self.item_fields,
            "training_metrics": {
                k: float(v) for k, v in train.items() if isinstance(v, (int, float)) and k not in _NOT_METRICS
            },
            "versions": {
                **{f"export.{k}": str(v) for k, v in self.manifest.get("versions", {}).items()},
                **{f"serve.{k}": v for k, v in SERVING_VERSIONS.items()},
            },
            "artifacts": str(self.root),
            "loaded_at": self.loaded_at,
            "max_top_n": self.limits.max_top_n,
            "max_score_pairs": self.limits.max_score_pairs,
            "max_upsert_items": self.limits.max_upsert_items,
            "max_inline_interactions": self.limits.max_inline_interactions,
            "categories": list(self.catalog.categories),
        }


def item_wire(
    item_id: str, price: float, description: str, features: str, category: str
) -> tuple[bytes, bytes]:
    """An Item's serialized fields around ``score`` (field 2): responses splice the score between,
    byte-for-byte what ``Item.SerializeToString()`` gives, without building a message per item."""
    from towerserve.v1 import recommender_pb2 as pb

    head = pb.Item(item_id=item_id).SerializeToString()
    tail = pb.Item(
        price=price, description=description, features=features, category=category
    ).SerializeToString()
    return head, tail


def _serving_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("towerserve", "onnxruntime", "numpy", "grpcio", "protobuf", "tokenizers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


SERVING_VERSIONS = _serving_versions()


def check_deadline(time_remaining: Callable[[], float | None], need: float = 0.0) -> Callable[[], None]:
    """A callable that raises DeadlineExceeded once the client's deadline is (about to be) passed."""

    def check() -> None:
        left = time_remaining()
        if left is not None and left <= need:
            raise DeadlineExceeded(f"deadline exceeded ({max(left, 0.0) * 1000:.0f} ms left)")

    return check
