"""The serving engine: loads a verified artifacts folder and answers Recommend, Score, Evaluate, UpsertItems.

A request for a known user runs one user-tower pass and one matrix-vector product over item vectors
computed at export; then masking and an ``argpartition`` top-k. Readers never lock: the catalogue
is an immutable snapshot that UpsertItems replaces by a single reference assignment.

Where things live: the model's ONNX sessions in towers.py, the catalogue snapshot and ranking in
catalog.py, request checks in validation.py; this module loads them and runs the operations.
"""

from __future__ import annotations

import logging
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from .catalog import (
    ITEM_COLUMNS,
    Catalog,
    admissible,
    build_catalog,
    item_columns,
    rank,
    read_csv,
    upserted_columns,
    walk_candidates,
)
from .config import EngineConfig
from .csr import CSR
from .errors import InvalidArgument, NotFound
from .features import MINMAX, TEXT, load_tables
from .history import NO_HISTORY, History, HistoryIndex
from .inputs import TowerInputs, UserRef
from .manifest import MANIFEST_FILE, SERVED_SPLIT, ArtifactError, ServingManifest, check_dims
from .metrics import DEFAULT_KS, full_ranking_metrics, notebook_metric
from .numerics import sigmoid
from .runtime import resolve_providers
from .splits import RecordedSplit, load_recorded_split
from .towers import WARM_UP_LENGTH, Tower, load_encoder, text_vectors
from .types import ModelInfo, NewItemData, UserAttrs
from .validation import (
    check_id,
    show,
    validate_evaluate,
    validate_items,
    validate_recommend,
    validate_score,
)
from .versions import SERVING_VERSIONS

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

# Keys of the training metrics that are bookkeeping, not metrics (left out of GetModelInfo).
_NOT_METRICS = ("epochs", "train_seconds", "users")


def _read_npz(read: Callable[[Path], T], path: Path) -> T:
    """``read(path)``, with a file that is not what export wrote (no hash check, or a bug) named."""
    try:
        return read(path)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise ArtifactError(path, f"unreadable ({type(err).__name__}: {err})") from err


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
        # Every name and type the engine relies on is checked here (ArtifactError naming the field).
        self.manifest = m = ServingManifest.load(self.root, verify_hashes=config.verify_hashes)
        self.kind = config.model or m.default_model
        if self.kind not in m.models:
            raise ArtifactError(
                self.root / MANIFEST_FILE, f"has no model {self.kind!r} (has {sorted(m.models)})"
            )
        entry = m.models[self.kind]
        self.model_version = entry.model_version
        self.user_independent = entry.user_independent
        providers = resolve_providers(config.device)
        self.towers = {
            s: Tower(self.root, e, providers, config.tower_threads, s) for s, e in entry.splits.items()
        }
        self.serving = self.towers[SERVED_SPLIT]  # every model has one (the manifest checks)

        enc = m.encoder
        embeddings_file = self.root / m.catalog.embeddings_file
        self.tables = _read_npz(load_tables, embeddings_file)
        read = {
            s.name for t in self.towers.values() for s in (*t.user_specs, *t.item_specs) if s.kind == TEXT
        }
        if read - set(self.tables):
            raise ArtifactError(
                embeddings_file,
                f"lacks text fields {sorted(read - set(self.tables))} that the {self.kind} towers read",
            )
        self.text = text_vectors(self.tables, enc, embeddings_file)
        self.encoder, self.encoder_variant = load_encoder(
            self.root, enc, config.encoder_variant, providers, config.encoder_threads, self.text
        )
        self.encoder_name = enc.name or Path(enc.model).name
        self.user_fields = [s.name for s in self.serving.user_specs]
        self.item_fields = [s.name for s in self.serving.item_specs]

        numeric = {s.name for t in self.towers.values() for s in t.user_specs if s.kind == MINMAX}
        users = read_csv(self.root / m.catalog.users_file, ("user_id",), numeric=sorted(numeric))
        self.user_ids = [r["user_id"] for r in users]
        self.user_index = {u: j for j, u in enumerate(self.user_ids)}
        # Numeric user attributes, for the user towers' minmax fields (the text ones are in the tables).
        self.user_raw = {f: np.array([float(r[f]) for r in users]) for f in sorted(numeric)}
        for f in ("profession", "personality"):
            if f in self.tables:
                check_dims(embeddings_file, f"{f} rows", len(users), len(self.tables[f].index))

        items = read_csv(self.root / m.catalog.items_file, ITEM_COLUMNS, numeric=("price",))
        check_dims(self.root / m.catalog.items_file, "item rows", len(self.serving.item_vectors), len(items))
        self.splits: dict[str, RecordedSplit] = {
            s: _read_npz(load_recorded_split, self.root / e.file) for s, e in m.splits.items()
        }
        holdout = self.splits[SERVED_SPLIT]
        check_dims(self.root / m.splits[SERVED_SPLIT].file, "users", len(users), holdout.train.n_rows)
        self.seen: CSR = holdout.train.union(holdout.test)  # everything the user interacted with
        self.inputs = TowerInputs(
            self.tables,
            self.text,
            self.encoder,
            self.user_raw,
            len(self.user_ids),
            {s: r.train for s, r in self.splits.items()},
        )
        # Request histories name items of the exported catalogue (upserts never get a history row).
        self.history_index = HistoryIndex([r["item_id"] for r in items], self.serving.max_history)
        self.known_user_vectors()  # known users: one batched tower pass, at load
        self._write_lock = threading.Lock()
        self.catalog = self._build_catalog(**item_columns(items), vectors=self.serving.item_vectors)
        self.loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.providers = sorted(
            set().union(*(t.providers for t in self.towers.values())) | set(self.encoder.providers)
        )
        self.load_seconds = time.perf_counter() - t0
        _LOGGER.info(
            "loaded %s (%s, %d users, %d items, encoder %s/%s, providers %s) in %.2f s",
            self.root,
            self.model_version,
            len(self.user_ids),
            len(self.catalog),
            self.encoder_name,
            self.encoder_variant,
            self.providers,
            self.load_seconds,
        )

    # ------------------------------------------------------------------------------- building blocks

    def _build_catalog(self, **columns) -> Catalog:
        return build_catalog(
            **columns,
            users=self.known_user_vectors(),
            seen=self.seen,
            candidates=self.config.candidates,
            user_independent=self.user_independent,
        )

    def known_user_vectors(self, tower: Tower | None = None) -> np.ndarray:
        """Every known user's vector for ``tower`` (default: the served one), computed once."""
        return self.inputs.known_vectors(tower or self.serving)

    def history(self, ids: Sequence[str], name: str = "history") -> History:
        """A request's history against the served model (InvalidArgument past its limits)."""
        return self.history_index.resolve(ids, name)

    def user_index_of(self, user_id: str) -> int:
        idx = self.user_index.get(user_id)
        if idx is None:
            check_id("user_id", user_id)
            raise NotFound(f"unknown user_id {show(user_id)}")
        return idx

    def user_vectors(
        self,
        refs: Sequence[UserRef],
        tower: Tower | None = None,
        histories: Sequence[History] | None = None,
    ) -> np.ndarray:
        """Vectors [len(refs), d] for known users (int index: computed at load unless a history adds
        items) and unseen ones (UserAttrs: one user-tower pass for the request)."""
        return self.inputs.user_vectors(tower or self.serving, refs, histories)

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
        history: History | Sequence[str] = NO_HISTORY,
    ) -> tuple[Catalog, list[int], list[float]]:
        """Top-N for one user; ``history`` (ids, or :meth:`history`'s result) feeds a hybrid user tower.

        Written for the event loop, where every numpy call over the catalogue drops the GIL and,
        under load, pays for a contended re-acquire (measured: ~70 us of CPU for one mat-vec).
        So a known user with seen items excluded is answered from the snapshot's candidate list in
        plain Python when its top-M holds enough admissible items; otherwise the exact path runs:
        one mat-vec, exclusions assigned by index, one partition. Both give the same items. A history
        with items the model reads needs a user-tower pass and the exact path; without one, nothing
        changes.

        Returns:
            (catalogue snapshot, item rows, probabilities) best first; at most top_n of each.
        """
        validate_recommend(top_n, price_min, price_max, self.limits)
        cat = self.catalog  # one snapshot for the whole request
        ref = self.user_index_of(user) if isinstance(user, str) else user
        if not isinstance(history, History):
            history = self.history(history)
        excluded = {cat.index[i] for i in exclude_item_ids if i in cat.index}
        codes = {cat.categories.index(c) for c in categories if c in cat.category_set} if categories else None
        known = not isinstance(ref, UserAttrs)
        fixed = known and not history.used  # the vector computed at load
        if fixed and exclude_seen and cat.cand_rows is not None and top_n <= cat.cand_rows.shape[1]:
            hit = walk_candidates(cat, ref, top_n, excluded, price_min, price_max, codes)
            if hit is not None:
                return cat, *hit
        u = self.known_user_vectors()[ref] if fixed else self.inputs.user_vector(self.serving, ref, history)
        seen = self.seen.row(ref) if known and exclude_seen else None
        allowed = admissible(cat, price_min, price_max, codes)
        return cat, *rank(cat, u, top_n, excluded, allowed, seen)

    def score(
        self, pairs: Sequence[tuple[str | UserAttrs, str]], histories: Sequence[History] | None = None
    ) -> np.ndarray:
        """Probabilities for (user, item id) pairs, float32 [len(pairs)]; ``histories``: one per pair."""
        validate_score(len(pairs), self.limits)
        cat = self.catalog
        items = np.empty(len(pairs), dtype=np.int64)
        hists = histories or [NO_HISTORY] * len(pairs)
        refs: list[UserRef] = []
        per_ref: list[History] = []
        slot: dict[object, int] = {}
        which = np.empty(len(pairs), dtype=np.int64)
        for j, (user, item_id) in enumerate(pairs):
            i = cat.index.get(item_id)
            if i is None:
                check_id(f"pairs[{j}].item_id", item_id)
                raise NotFound(f"unknown item_id {show(item_id)} (pair {j})")
            items[j] = i
            ref = self.user_index_of(user) if isinstance(user, str) else user
            key = (ref, hists[j].rows)
            if key not in slot:  # each distinct (user, history) goes through the tower once
                slot[key] = len(refs)
                refs.append(ref)
                per_ref.append(hists[j])
            which[j] = slot[key]
        uvec = self.user_vectors(refs, histories=per_ref)
        logits = np.einsum("nd,nd->n", uvec[which], cat.vectors[items])
        return sigmoid(logits).astype(np.float32)

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
        validate_evaluate(ks, protocol, None if inline is None else len(inline), self.limits)
        if inline is not None:
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
            test, nb_users, nb_items = self._inline_split(inline, n_items)
        else:
            test = rec.test
            nb_users, nb_items = rec.notebook_users, rec.notebook_items
        logits = np.einsum("nd,nd->n", users_vec[nb_users], vectors[nb_items])
        metrics = {"notebook_score": notebook_metric(sigmoid(logits))}
        n_users = len(nb_users)
        if protocol == "full":
            full = full_ranking_metrics(
                lambda uu: users_vec[uu] @ vectors.T, test, rec.train, ks, on_chunk=check
            )
            n_users = int(full.pop("users"))
            metrics.update(full)
        return metrics, n_users

    def _inline_split(
        self, inline: Sequence[tuple[str, str]], n_items: int
    ) -> tuple[CSR, np.ndarray, np.ndarray]:
        """(held-out positives, notebook users, one positive each) from inline (user id, item id) pairs."""
        cat = self.catalog
        u = np.empty(len(inline), dtype=np.int64)
        i = np.empty(len(inline), dtype=np.int64)
        for j, (uid, iid) in enumerate(inline):
            u[j] = self.user_index_of(uid)
            ii = cat.index.get(iid)
            if ii is None or ii >= n_items:
                check_id(f"interactions[{j}].item_id", iid)
                raise NotFound(f"unknown item_id {show(iid)} (interaction {j})")
            i[j] = ii
        test = CSR.from_pairs(u, i, len(self.user_ids), n_items)
        rng = np.random.default_rng(42)
        lengths = test.row_lengths()
        nb_users = np.flatnonzero(lengths)
        nb_items = test.indices[test.indptr[nb_users] + rng.integers(0, lengths[nb_users])]
        return test, nb_users, nb_items

    def upsert_items(self, items: Sequence[NewItemData]) -> tuple[int, int, int]:
        """Adds or replaces items (encoder + item tower), then swaps the catalogue snapshot.

        Returns:
            (inserted, updated, catalogue size).
        """
        validate_items(items, self.limits)
        vecs = self.serving.items(self.inputs.records(self.serving.item_specs, items))
        bad = np.flatnonzero(~np.isfinite(vecs).all(axis=1))
        if bad.size:
            raise InvalidArgument(
                f"items[{int(bad[0])}] ({show(items[int(bad[0])].item_id)}): the item tower "
                "produced non-finite values for these attributes"
            )
        with self._write_lock:  # writers queue here; readers keep using the old snapshot meanwhile
            columns, inserted, updated = upserted_columns(self.catalog, items, vecs)
            # The new snapshot brings fresh candidate lists, so upserted items rank where they should.
            self.catalog = self._build_catalog(**columns)
        return inserted, updated, len(self.catalog)

    def warm_up(self) -> None:
        """One pass through every session, so the first real request pays no lazy initialisation."""
        if self.user_ids:
            self.recommend(self.user_ids[0], 10)
        self.encoder.encode(["warm up"], WARM_UP_LENGTH)

    def info(self) -> ModelInfo:
        training = self.manifest.training
        train = training.metrics.get(SERVED_SPLIT, {}).get(self.kind, {}) if training else {}
        cat = self.catalog
        return ModelInfo(
            model_version=self.model_version,
            model_kind=self.kind,
            user_independent_ranking=self.user_independent,
            item_count=len(cat),
            user_count=len(self.user_ids),
            providers=list(self.providers),
            encoder=self.encoder_name,
            encoder_variant=self.encoder_variant,
            vector_dim=self.serving.dim,
            user_fields=list(self.user_fields),
            item_fields=list(self.item_fields),
            training_metrics={
                k: float(v) for k, v in train.items() if isinstance(v, (int, float)) and k not in _NOT_METRICS
            },
            versions={
                **{f"export.{k}": str(v) for k, v in self.manifest.versions.items()},
                **{f"serve.{k}": v for k, v in SERVING_VERSIONS.items()},
            },
            artifacts=str(self.root),
            loaded_at=self.loaded_at,
            max_top_n=self.limits.max_top_n,
            max_score_pairs=self.limits.max_score_pairs,
            max_upsert_items=self.limits.max_upsert_items,
            max_inline_interactions=self.limits.max_inline_interactions,
            categories=list(cat.categories),
            max_history=self.serving.max_history,
        )
