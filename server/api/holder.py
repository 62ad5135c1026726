"""The engine being served, its catalogue journal, and the one lock that orders writes and reloads.

Every catalogue change goes through here: validated and vectorised against the current engine,
written to the journal (store.py) **before** it is applied and acknowledged, then applied. A reload
builds the new engine beside the old one (requests and writes keep flowing), replays the whole
journal onto it, then, holding the write lock, replays what was journaled meanwhile and swaps. So a
write acknowledged before, during or after a reload is in the model served afterwards.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..catalog.store import DELETE, CatalogStore, Change, latest
from ..core.config import EngineConfig
from ..core.manifest import ArtifactError
from ..core.types import ModelInfo, NewItemData
from ..engine.deadline import Check, never
from ..engine.engine import Engine
from ..engine.errors import InvalidArgument, Unavailable
from ..engine.info import model_info
from ..engine.validation import check_id

_LOGGER = logging.getLogger(__name__)
REPLAY_BATCH = 512  # items per item-tower pass when replaying the journal
# Past this many replayed items, candidate lists are dropped and rebuilt once (one users x items
# product) rather than patched item by item (a Python loop over the users each item enters).
RELIST_AFTER = 64


class EngineHolder:
    """The engine currently served; swapped atomically on reload (readers take one reference).

    Args:
        artifacts: the serving folder loaded when :meth:`load` is given none.
        config: how engines load.
        on_ready: called with True once an engine serves.
        store: the catalogue journal (None: changes live in memory and are lost on restart).
    """

    def __init__(
        self,
        artifacts: Path | None,
        config: EngineConfig,
        on_ready: Callable[[bool], None] = lambda ok: None,
        store: CatalogStore | None = None,
    ):
        self.artifacts = artifacts
        self.config = config
        self.store = store
        self._engine: Engine | None = None
        self._reload_lock = threading.Lock()  # one load at a time
        self._write_lock = threading.Lock()  # journal order = apply order; the reload swap waits here
        self._on_ready = on_ready
        self.applied = 0  # the last journal sequence number the served engine holds
        self._stop_following = threading.Event()
        self._follower: threading.Thread | None = None
        self.follow_interval = 0.25  # seconds between polls for other writers' changes: a cheap MAX(seq)

    def get(self) -> Engine:
        engine = self._engine
        if engine is None:
            raise Unavailable(
                "the model is loading; retry shortly (health reports NOT_SERVING until it is ready)"
            )
        return engine

    @property
    def ready(self) -> bool:
        return self._engine is not None

    def info(self) -> ModelInfo:
        store = self.store
        return model_info(
            self.get(), durable=store is not None, journal_entries=store.count() if store else 0
        )

    # ------------------------------------------------------------------------------------- loading

    def load(self, artifacts: Path | str | None = None) -> tuple[Engine, Engine | None, float]:
        """Loads and warms a new engine, replays the journal onto it, then swaps it in; the old one
        serves (and takes writes) until the swap.

        Returns:
            (new engine, previous engine or None, seconds).

        Raises:
            ArtifactError: the folder is bad; nothing was swapped.
        """
        with self._reload_lock:
            t0 = time.perf_counter()
            path = Path(artifacts) if artifacts else self.artifacts
            if path is None:
                raise ArtifactError("<none>", "no artifacts folder given")
            # The typed manifest has checked every field the engine reads (ArtifactError naming it).
            try:
                engine = Engine(path, self.config)
                engine.warm_up()
            except (ArtifactError, OSError, ValueError):
                raise
            except Exception as err:  # a library's own error for a file it could not read: still refused
                _LOGGER.exception("loading %s failed", path)
                raise ArtifactError(path, f"could not be loaded ({type(err).__name__}: {err})") from err
            done = self._replay(engine, 0)  # the bulk, while the old engine still serves and writes
            with self._write_lock:
                # Whatever was journaled meanwhile; writers wait for the swap.
                self.applied = self._replay(engine, done)
                previous, self._engine = self._engine, engine
            self.artifacts = path
            if self._follower is None:
                self._follower = self.follow(self.follow_interval)
            self._on_ready(True)
            return engine, previous, time.perf_counter() - t0

    def _replay(self, engine: Engine, after: int) -> int:
        """Applies journal changes past ``after`` to ``engine``; returns the last sequence applied."""
        if self.store is None:
            return after
        upto = self.store.last_seq()
        if upto <= after:
            return after
        t0 = time.perf_counter()
        changes = latest(self.store.changes(after, upto))
        upserts = [c for c in changes if c.op != DELETE]
        deletes = [c.item_id for c in changes if c.op == DELETE]
        bulk = len(upserts) > RELIST_AFTER
        skipped = 0
        for start in range(0, len(upserts), REPLAY_BATCH):
            skipped += self._replay_upserts(engine, upserts[start : start + REPLAY_BATCH], not bulk)
        if deletes:
            engine.delete_items(deletes)
        if bulk:
            engine.relist()
        _LOGGER.info(
            "replayed %d journaled changes (%d upserts, %d deletes; %d skipped) onto %s in %.2f s",
            len(changes),
            len(upserts),
            len(deletes),
            skipped,
            engine.model_version,
            time.perf_counter() - t0,
        )
        return upto

    @staticmethod
    def _replay_upserts(engine: Engine, batch: list[Change], patch: bool) -> int:
        """Applies a batch of journaled upserts; an item this model cannot embed is skipped and logged
        (returns how many), so one item never keeps a model from loading."""
        items = [c.item for c in batch if c.item is not None]
        try:
            engine.apply_items(items, engine.item_vectors(items, validate=False), patch)
            return 0
        except InvalidArgument:
            pass
        skipped = 0
        for item in items:  # the batch failed: find the culprits one by one
            try:
                engine.apply_items([item], engine.item_vectors([item], validate=False), patch)
            except InvalidArgument as err:
                skipped += 1
                _LOGGER.warning(
                    "journaled item %r not served by %s: %s", item.item_id, engine.model_version, err
                )
        return skipped

    # ------------------------------------------------------------------------------------- writes

    def upsert(self, items: Sequence[NewItemData], check: Check = never) -> tuple[Engine, int, int, int]:
        """Validates and vectorises ``items``, journals them, then applies them.

        ``check`` (the client's deadline) is called before the journal write: once written, the items
        are applied whatever happens to the call (an upsert is idempotent, so a retry is safe).

        Returns:
            (the engine they went into, inserted, updated, catalogue size).
        """
        engine = self.get()
        vecs = engine.item_vectors(items, check=check)  # the tower pass, outside the lock
        with self._write_lock:
            if self._engine is not engine:  # a reload swapped models meanwhile: vectors from the new one
                engine = self.get()
                vecs = engine.item_vectors(items, check=check)
            check()
            seq = self.store.upsert(items) if self.store is not None else 0
            inserted, updated, count = engine.apply_items(items, vecs)
            self._advance(seq, len(items))
        return engine, inserted, updated, count

    def delete(self, item_ids: Sequence[str], check: Check = never) -> tuple[Engine, int, int]:
        """Journals and applies deletes of ``item_ids`` (ids the catalogue lacks are not journaled).

        Returns:
            (the engine, deleted, catalogue size).
        """
        engine = self.get()
        limit = engine.limits.max_delete_items
        if not 1 <= len(item_ids) <= limit:
            raise InvalidArgument(f"item_ids must hold 1..{limit} ids (got {len(item_ids)})")
        for j, x in enumerate(item_ids):
            if not x:
                raise InvalidArgument(f"item_ids[{j}] must not be empty")
            check_id(f"item_ids[{j}]", x)
        with self._write_lock:
            engine = self.get()
            known = [x for x in dict.fromkeys(item_ids) if engine.catalog.row(x) is not None]
            check()
            seq = self.store.delete(known) if self.store is not None and known else 0
            deleted, count = engine.delete_items(known)
            self._advance(seq, len(known))
        return engine, deleted, count

    def _advance(self, seq: int, n: int) -> None:
        """Marks our own write (journal entries seq-n+1..seq) applied, unless another writer's entries
        came first: then the follower replays from where we were, ours included, in journal order."""
        if seq and seq - n == self.applied:
            self.applied = seq

    # ----------------------------------------------------------------------------------- following

    def follow(self, interval: float = 0.25) -> threading.Thread | None:
        """Starts a thread that applies changes other writers journaled (other --workers processes
        sharing the --state-dir) every ``interval`` seconds; None without a journal."""
        if self.store is None:
            return None
        thread = threading.Thread(target=self._follow, args=(interval,), name="journal-follower", daemon=True)
        thread.start()
        return thread

    def catch_up(self) -> int:
        """Applies journal changes the served engine lacks; returns how many sequence numbers it advanced."""
        store, engine = self.store, self._engine
        if store is None or engine is None or store.last_seq() <= self.applied:
            return 0
        with self._write_lock:
            engine, before = self.get(), self.applied
            self.applied = self._replay(engine, before)
            return self.applied - before

    def _follow(self, interval: float) -> None:
        while not self._stop_following.wait(interval):
            try:
                self.catch_up()
            except Exception:  # keep following: the next poll retries from the same sequence number
                _LOGGER.exception("applying other writers' journal changes failed")

    def close(self) -> None:
        """Stops the follower (the store is closed by its owner, after this)."""
        self._stop_following.set()
        if self._follower is not None:
            self._follower.join(timeout=30)
