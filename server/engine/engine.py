"""The serving engine: loads a verified artifacts folder and answers Recommend and UpsertItems; Score,
Evaluate and GetModelInfo are functions of an engine (scoring.py, evaluation.py, info.py).

A known user's Recommend walks their precomputed candidate list when it can, else scores the
catalogue exactly or through the item index (ranking.py); unseen users and histories take a
user-tower pass first. Readers never lock: each request takes one catalogue snapshot, and
UpsertItems publishes the next one with a single reference assignment.

Where things live: the model's ONNX sessions in towers.py, the catalogue snapshot in catalog.py
(columns.py, candidates.py), the request paths in ranking.py, the item index in index.py, request
checks in validation.py; this module loads them and runs the operations.
"""

from __future__ import annotations

import logging
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np

from ..catalog import candidates as candidates_mod
from ..catalog.index import AnnIndex
from ..catalog.snapshot import (
    ITEM_COLUMNS,
    Catalog,
    build_catalog,
    deleted,
    item_columns,
    read_columns,
    relisted,
    upserted,
)
from ..core.config import EngineConfig
from ..core.csr import CSR
from ..core.features import MINMAX, TEXT, load_tables
from ..core.manifest import MANIFEST_FILE, SERVED_SPLIT, ArtifactError, ItemIndex, ServingManifest, check_dims
from ..core.splits import RecordedSplit, load_recorded_split
from ..core.types import Interaction, NewItemData, UserAttrs
from . import ranking
from .deadline import Check, never
from .errors import InvalidArgument, NotFound
from .history import NO_HISTORY, History, HistoryIndex, joined
from .inputs import TowerInputs, UserRef
from .live import LiveHistories
from .ranking import Query
from .runtime import resolve_providers
from .towers import WARM_UP_LENGTH, Tower, load_encoder, text_vectors
from .validation import (
    check_id,
    check_ids,
    show,
    validate_items,
    validate_recommend,
)

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
# Up to this many catalogue cells (items x vector width), an exact scoring of a ready vector costs less
# on the event loop than handing the request to the worker pool (~0.7 ms on 2 cores); see
# benchmarks/bench_interactions.py.
INLINE_SCORE_CELLS = 250_000
# Up to this many cells, a user whose recorded interactions moved their vector gets a candidate list
# of their own (one exact scoring: ~0.5 ms at 1,682 items x 578), built by RecordInteractions in
# the worker pool, or at the user's first Recommend on a replica that followed the event, and walked
# by their Recommends as known users' lists are (microseconds).
LIVE_LIST_CELLS = 2_000_000


class Planned(NamedTuple):
    """A Recommend after :meth:`Engine.plan`: the resolved query, the user, the request's history
    (what history_used reports), the history the tower pools (the request's joined by the user's
    recorded interactions) and, when the recorded interactions already give it, the user's vector."""

    query: Query
    ref: UserRef
    history: History
    pooled: History
    vector: np.ndarray | None = None
    cand: tuple[np.ndarray, np.ndarray] | None = None  # the live vector's own candidate list


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

        self._load_text(m, providers)
        self.user_fields = [s.name for s in self.serving.user_specs]
        self.item_fields = [s.name for s in self.serving.item_specs]
        users = self._load_users(m)
        items = read_columns(self.root / m.catalog.items_file, ITEM_COLUMNS, numeric=("price",))
        n_items = len(items["item_id"])
        check_dims(self.root / m.catalog.items_file, "item rows", len(self.serving.item_vectors), n_items)
        self.splits: dict[str, RecordedSplit] = {
            s: _read_npz(load_recorded_split, self.root / e.file) for s, e in m.splits.items()
        }
        holdout = self.splits[SERVED_SPLIT]
        check_dims(self.root / m.splits[SERVED_SPLIT].file, "users", len(self.user_ids), holdout.train.n_rows)
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
        self.history_index = HistoryIndex(items["item_id"], self.serving.max_history)
        self.known_user_vectors()  # known users: one batched tower pass, at load
        # Recorded interactions (RecordInteractions), applied to users' vectors and exclusions as they come.
        self.live = LiveHistories(
            self.serving.max_history if self.serving.history_input else 0,
            config.live_budget_events,
            self.serving.mean_history,
            self.history_index.index.get,
        )
        self.created: set[str] = set()  # users RecordInteractions created (create_users)
        self.profile = _population_profile(users, self.user_raw)
        self._write_lock = threading.Lock()
        self.ann = self._load_index(entry.splits[SERVED_SPLIT].index, n_items)
        t_build = time.perf_counter()
        self.catalog = self._build_catalog(**item_columns(items), vectors=self.serving.item_vectors)
        # What keeping the candidate lists costs, measured on this machine and catalogue: a full
        # rebuild, and (an average over recent writes) one item patched into them. The journal's
        # follower picks between the two with these (api/holder.py: catch_up).
        self.relist_seconds = time.perf_counter() - t_build
        self.patch_seconds = 0.0
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

    # ------------------------------------------------------------------------------- loading

    def _load_text(self, m: ServingManifest, providers: list[str]) -> None:
        """The text fields' embedding tables and the encoder for texts that are not in them."""
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
            self.root, enc, self.config.encoder_variant, providers, self.config.encoder_threads, self.text
        )
        self.encoder_name = enc.name or Path(enc.model).name

    def _load_users(self, m: ServingManifest) -> dict[str, list[str]]:
        """users.csv's columns; sets the known users' ids, index and numeric attributes."""
        embeddings_file = self.root / m.catalog.embeddings_file
        numeric = {s.name for t in self.towers.values() for s in t.user_specs if s.kind == MINMAX}
        users = read_columns(self.root / m.catalog.users_file, ("user_id",), numeric=sorted(numeric))
        self.user_ids = users["user_id"]
        self.user_index = {u: j for j, u in enumerate(self.user_ids)}
        # Numeric user attributes, for the user towers' minmax fields (the text ones are in the tables).
        self.user_raw = {f: np.asarray(users[f], dtype=np.float64) for f in sorted(numeric)}
        for f in ("profession", "personality"):
            if f in self.tables and len(self.tables[f].index) != len(self.user_ids):
                raise ArtifactError(  # either file may be the damaged one: name both
                    self.root / m.catalog.users_file,
                    f"has {len(self.user_ids)} users, but {embeddings_file.name} has {len(self.tables[f].index)} "
                    f"{f} rows (one per user)",
                )
        return users

    # ------------------------------------------------------------------------------- building blocks

    def _build_catalog(self, **columns) -> Catalog:
        return build_catalog(
            **columns,
            users=self.known_user_vectors(),
            seen=self.seen,
            candidates=self.config.candidates,
            user_independent=self.user_independent,
            ann=self.ann,
            candidate_budget_mb=self.config.candidate_budget_mb,
        )

    def _load_index(self, entry: ItemIndex | None, n_items: int) -> AnnIndex | None:
        """The served split's approximate index (None: exact search, or a bundle from before indexes)."""
        if entry is None or entry.kind == "exact" or self.config.exact:
            return None
        if entry.file is None:
            raise ArtifactError(self.root / MANIFEST_FILE, f"index of kind {entry.kind!r} names no file")
        vectors = self.serving.item_vectors
        bad = np.flatnonzero(~np.isfinite(vectors).all(axis=1))
        try:
            ann = AnnIndex.load(
                self.root / entry.file, entry.kind, entry.search, entry.recall_at_10, n_items, bad
            )
        except RuntimeError as err:  # FAISS reports an unreadable file this way
            raise ArtifactError(self.root / entry.file, f"unreadable index ({err})") from err
        check_dims(self.root / entry.file, "indexed items", n_items, len(ann))
        return ann

    def known_user_vectors(self, tower: Tower | None = None) -> np.ndarray:
        """Every known user's vector for ``tower`` (default: the served one), computed once."""
        return self.inputs.known_vectors(tower or self.serving)

    def history(self, ids: Sequence[str], name: str = "history") -> History:
        """A request's history against the served model (InvalidArgument past its limits)."""
        return self.history_index.resolve(ids, name)

    # ------------------------------------------------------------------------------ interactions

    def new_users(self, events: Sequence[Interaction], create_users: bool) -> list[str]:
        """Checks RecordInteractions' events against the current snapshot; returns the user ids they
        would create (without creating them).

        Raises:
            NotFound: an unknown user (without ``create_users``) or an item not in the catalogue.
        """
        cat, new = self.catalog, {}
        for j, e in enumerate(events):
            if e.user_id not in self.user_index and e.user_id not in self.created:
                if not create_users:
                    raise NotFound(
                        f"events[{j}].user_id {show(e.user_id)} is not a user of the served model "
                        "(create_users adds it)"
                    )
                new[e.user_id] = None
            if cat.row(e.item_id) is None:
                raise NotFound(f"events[{j}].item_id {show(e.item_id)} is not in the catalogue")
        return list(new)

    def record_interactions(self, events: Sequence[Interaction], relist: bool = False) -> int:
        """Applies journaled events to the users' live histories (a user the model does not know is a
        created one); returns how many users it created. Never refuses: what the journal holds is
        applied as it can be (an item deleted since still leaves the user's results). ``relist``: build
        the touched known users' own candidate lists now (a live write, in the worker pool), not at
        their next Recommend (a replay of thousands of events touches users who may never ask)."""
        created, touched = 0, {}
        for e in events:
            user = self.user_index.get(e.user_id)
            if user is None and e.user_id not in self.created:
                self.created.add(e.user_id)
                created += 1
            row = self.history_index.index.get(e.item_id)
            self.live.record(e.user_id if user is None else user, e.item_id, row, e.at)
            if user is not None:
                touched[user] = None
        if relist:
            cat = self.catalog
            for user in touched:
                live = self.live.get(user)
                if live is not None and live.vector is not None and live.rows:
                    self._live_list(user, live, cat, live.vector)
        return created

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

    def plan(
        self,
        user: str | UserAttrs,
        top_n: int,
        exclude_seen: bool = True,
        price_min: float | None = None,
        price_max: float | None = None,
        categories: Sequence[str] = (),
        exclude_item_ids: Sequence[str] = (),
        history: History | Sequence[str] = NO_HISTORY,
        history_ids: Sequence[str] = (),
    ) -> Planned:
        """A Recommend checked and resolved against the current snapshot: cheap (dict lookups), so the
        servicer runs it on the event loop and sends only :meth:`answer` to the worker pool.

        With ``exclude_seen`` the results leave out the user's training positives, their recorded
        interactions and the request's history (``history_ids``: its ids as sent, for a model that
        reads no history too). A user's recorded interactions join the history the tower pools.
        """
        validate_recommend(top_n, price_min, price_max, self.limits, len(categories), len(exclude_item_ids))
        check_ids("exclude_item_ids", exclude_item_ids)
        cat = self.catalog  # one snapshot for the whole request
        live = None
        if isinstance(user, str) and user not in self.user_index and user in self.created:
            ref, live = self.profile, self.live.get(user)  # a created user: the population's attributes
        else:
            ref = self.user_index_of(user) if isinstance(user, str) else user
            live = self.live.get(ref) if not isinstance(ref, UserAttrs) and len(self.live) else None
        if not isinstance(history, History):
            history_ids, history = history, self.history(history)
        excluded = {j for j in map(cat.row, exclude_item_ids) if j is not None}
        if exclude_seen:  # what the user did, recorded or sent, is not recommended back to them
            excluded.update(j for j in map(cat.row, history_ids) if j is not None)
            if live is not None:
                excluded.update(live.left_out_rows(cat))
        # Unknown categories match nothing (a filter of only unknown ones returns no items).
        codes = {cat.category_index[c] for c in categories if c in cat.category_index} if categories else None
        known = not isinstance(ref, UserAttrs)
        seen = self.seen.row(ref) if known and exclude_seen else None
        pooled, vector, cand = history, None, None
        if live is not None and live.rows:
            if known and not history.used and live.vector is not None:
                vector = live.vector  # kept up to date as events came: O(d) when they came, O(1) here
                cand = self._live_list(ref, live, cat, vector)
            else:
                pooled = joined(history, live.rows, self.history_index.max_history)
        q = Query(cat, top_n, excluded, price_min, price_max, codes, ref if known else None, seen)
        return Planned(q, ref, history, pooled, vector, cand)

    def _live_list(
        self, user: int, live, cat: Catalog, vector: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The user's candidate list for their live vector (cached on their live history until the next
        event or catalogue snapshot); None where building one costs more than it saves."""
        cached = live.history.cached
        if cached is not None and cached[0] == live.version and cached[1] is cat:
            return cached[2], cached[3]
        if cat.ann is not None or cat.n * vector.shape[0] > LIVE_LIST_CELLS or not self.config.candidates:
            return None
        left_out = live.left_out_rows(cat)
        rows = np.union1d(self.seen.row(user), np.asarray(left_out, dtype=np.int64)).astype(np.int64)
        seen = CSR.from_pairs(np.zeros(len(rows), np.int64), rows, 1, cat.n)
        got = candidates_mod.build(
            vector[None, :], cat.vectors64, seen, cat.nan_rows, self.config.candidates, 1 << 30
        )
        if not got:
            return None
        live.history.cached = (live.version, cat, got["cand_rows"][0], got["cand_probs"][0])
        return got["cand_rows"][0], got["cand_probs"][0]

    def answer_inline(self, p: Planned) -> tuple[list[int], list[float]] | None:
        """The answer when it takes no scoring over the catalogue (ranking.inline), or only a small one
        of a vector that is ready (INLINE_SCORE_CELLS), else None."""
        if p.vector is not None:  # recorded interactions moved the vector: the snapshot's lists are stale
            cat, q = p.query.cat, p.query
            if p.cand is not None and q.seen is not None:  # the list leaves seen items out
                hit = ranking.walk(*p.cand, cat, q.top_n, q.excluded, q.price_min, q.price_max, q.codes)
                if hit is not None:
                    return hit
            if cat.ann is None and cat.n * p.vector.shape[0] <= INLINE_SCORE_CELLS:
                return ranking.full(p.query, p.vector)  # cheaper than the hand-off to the pool
            return None
        if p.query.user is None or p.pooled.used:  # a tower pass or a history sum
            return None
        return ranking.inline(p.query, lambda: self.known_user_vectors()[p.query.user])

    def answer(self, p: Planned, check: Check = never) -> tuple[list[int], list[float]]:
        """The answer by the snapshot's index (exact or approximate), after a user-tower pass when a
        history or an unseen user needs one (``check``: the deadline): the pool's part of a Recommend."""
        (got,) = self.answer_batch([(p, check)])
        if isinstance(got, Exception):
            raise got
        return got

    def answer_batch(
        self, batch: Sequence[tuple[Planned, Check]]
    ) -> list[tuple[list[int], list[float]] | Exception]:
        """:meth:`answer` for many requests in one pool wake-up (server/api/batcher.py): the user-tower
        passes they need as one run, the searches of an approximate index as one FAISS call; the same
        answers as one :meth:`answer` each. Each request keeps its own deadline and errors: one that
        fails (an expired deadline, an unseen user's bad attributes) gets its exception in its place,
        and the others their answers."""
        out: list = [None] * len(batch)
        vectors: list[np.ndarray | None] = [None] * len(batch)
        tower: list[int] = []
        for j, (p, check) in enumerate(batch):
            try:
                check()
            except Exception as err:
                out[j] = err
                continue
            if p.vector is not None:
                vectors[j] = p.vector
            elif p.query.user is not None and not p.pooled.used:
                vectors[j] = self.known_user_vectors()[p.query.user]
            else:
                tower.append(j)
        # One tower pass for those whose texts are all known. A new text runs the encoder with its
        # own request alone: the int8 encoder quantizes each run's activations by the run's range,
        # so encoding it beside other requests' texts would change its vector (by ~1e-5).
        specs = self.serving.user_specs
        shared = [
            j
            for j in tower
            if not isinstance(batch[j][0].ref, UserAttrs) or not self.inputs.new_texts(specs, batch[j][0].ref)
        ]
        if len(shared) > 1:
            try:
                got = self.inputs.user_vectors(
                    self.serving, [batch[j][0].ref for j in shared], [batch[j][0].pooled for j in shared]
                )
                for k, j in enumerate(shared):
                    vectors[j] = got[k]
                tower = [j for j in tower if vectors[j] is None]
            except Exception:  # a request the pass refuses: each alone below, with its own error
                pass
        for j in tower:
            p, check = batch[j]
            try:
                vectors[j] = self.inputs.user_vector(self.serving, p.ref, p.pooled, check)
            except Exception as err:
                out[j] = err
        todo = [j for j in range(len(batch)) if out[j] is None]
        first = ranking.first_searches([batch[j][0].query for j in todo], [vectors[j] for j in todo])
        for j, found in zip(todo, first):
            q, check = batch[j][0].query, batch[j][1]
            try:
                check()
                out[j] = ranking.full(q, vectors[j], found)
            except Exception as err:
                out[j] = err
        return out

    def recommend(self, *args, **kwargs) -> tuple[Catalog, list[int], list[float]]:
        """Top-N for one user, all in the calling thread (:meth:`plan`'s arguments); ``history``
        (ids, or :meth:`history`'s result) feeds a hybrid user tower.

        Returns:
            (catalogue snapshot, item rows, probabilities) best first; at most top_n of each.
        """
        p = self.plan(*args, **kwargs)
        hit = self.answer_inline(p)
        return p.query.cat, *(hit if hit is not None else self.answer(p))

    def item_vectors(
        self, items: Sequence[NewItemData], validate: bool = True, check: Check = never
    ) -> np.ndarray:
        """The served item tower's vectors for ``items`` (encoder for texts the tables lack), with
        ``check`` (the deadline) between encoder runs and tower blocks. An upsert's texts are bounded
        by max_upsert_items and the text lengths, not by max_new_texts (each item brings two).

        Raises:
            InvalidArgument: ``validate`` and a request limit broken, or a vector not finite.
        """
        if validate:
            validate_items(items, self.limits)
        vecs = self.serving.items(self.inputs.records(self.serving.item_specs, items, check), check)
        bad = np.flatnonzero(~np.isfinite(vecs).all(axis=1))
        if bad.size:
            raise InvalidArgument(
                f"items[{int(bad[0])}] ({show(items[int(bad[0])].item_id)}): the item tower "
                "produced non-finite values for these attributes"
            )
        return vecs

    def apply_items(
        self, items: Sequence[NewItemData], vecs: np.ndarray, patch: bool = True, relist: bool = False
    ) -> tuple[int, int, int]:
        """Writes ``items`` with their :meth:`item_vectors` and publishes the next snapshot;
        ``patch=False`` (a bulk replay) drops the candidate lists until :meth:`relist`; ``relist=True``
        rebuilds them before the snapshot is published (no reader sees it without lists).

        Returns:
            (inserted, updated, catalogue size).
        """
        with self._write_lock:  # writers queue here; readers keep using their snapshot meanwhile
            # Cost proportional to the items: columns written in place, candidate lists patched.
            t0 = time.perf_counter()
            cat, rows, inserted, updated = upserted(
                self.catalog,
                items,
                vecs,
                self.known_user_vectors(),
                self.seen,
                self.user_independent,
                patch and not relist,
            )
            if relist:
                cat = self._relisted(cat)
            elif patch and self.catalog.cand_rows is not None and len(items):
                per_item = (time.perf_counter() - t0) / len(items)
                self.patch_seconds = (
                    per_item if not self.patch_seconds else 0.8 * self.patch_seconds + 0.2 * per_item
                )
            if self.ann is not None:  # the index first: no snapshot can return the rows before it
                self.ann.upsert(rows, vecs)
            self.catalog = cat
        return inserted, updated, cat.item_count

    def upsert_items(self, items: Sequence[NewItemData]) -> tuple[int, int, int]:
        """Adds or replaces items in memory (the server journals them first: holder.py).

        Returns:
            (inserted, updated, catalogue size).
        """
        return self.apply_items(items, self.item_vectors(items))

    def relist(self) -> None:
        """Rebuilds the candidate lists in one pass (after a bulk replay)."""
        with self._write_lock:
            self.catalog = self._relisted(self.catalog)

    def _relisted(self, cat: Catalog) -> Catalog:
        """``cat`` with its candidate lists rebuilt (timed: relist_seconds). Holds the write lock."""
        c, t0 = self.config, time.perf_counter()
        cat = relisted(
            cat,
            self.known_user_vectors(),
            self.seen,
            c.candidates,
            self.user_independent,
            c.candidate_budget_mb,
        )
        self.relist_seconds = time.perf_counter() - t0
        return cat

    def delete_items(self, item_ids: Sequence[str]) -> tuple[int, int]:
        """Removes the items the catalogue has (unknown ids are ignored) and publishes the next snapshot.

        Returns:
            (deleted, catalogue size).
        """
        with self._write_lock:
            cat, rows = deleted(
                self.catalog, item_ids, self.known_user_vectors(), self.seen, self.user_independent
            )
            if self.ann is not None and rows.size:
                self.ann.remove(rows)
            self.catalog = cat
        return int(rows.size), cat.item_count

    def warm_up(self) -> None:
        """One pass through every session, so the first real request pays no lazy initialisation."""
        if self.user_ids:
            self.recommend(self.user_ids[0], 10)
        self.encoder.encode(["warm up"], WARM_UP_LENGTH)


def _population_profile(users: dict[str, list[str]], raw: dict[str, np.ndarray]) -> UserAttrs:
    """A user with an empty profile (one RecordInteractions created): the training users' median
    age and most common profession and personality, the attributes a tower most often saw."""

    def mode(field: str) -> str | None:
        counts = Counter(filter(None, users.get(field, ())))  # C-level: users.csv may hold millions
        return counts.most_common(1)[0][0] if counts else None

    ages = raw.get("age")
    if ages is None:
        ages = np.array([float(a) for a in users.get("age", ()) if a] or [30.0])
    return UserAttrs(float(np.median(ages)), mode("profession") or "unknown", mode("personality"))
