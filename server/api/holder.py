"""The engine being served, its catalogue journal, and the one lock that orders writes and reloads.

Every catalogue change goes through here: validated and vectorised against the current engine,
written to the journal (store.py) **before** it is applied and acknowledged, then applied. A reload
builds the new engine beside the old one (requests and writes keep flowing), replays the whole
journal onto it, then, holding the write lock, replays what was journaled meanwhile and swaps. So a
write acknowledged before, during or after a reload is in the model served afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from ..catalog.store import (
    DELETE,
    WRITE_ID_RETENTION_S,
    CatalogStore,
    Journaled,
    JournalError,
    JournalFull,
    JournalReadOnly,
    JournalUnavailable,
    latest,
)
from ..core.config import EngineConfig
from ..core.manifest import ArtifactError
from ..core.types import Interaction, ModelInfo, NewItemData
from ..engine.deadline import Check, never
from ..engine.engine import Engine
from ..engine.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, ServingError, Unavailable
from ..engine.info import model_info
from ..engine.validation import SHORT_TEXT_LIMIT, check_text, check_write_id, validate_events

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")
REPLAY_BATCH = 512  # items per item-tower pass when replaying the journal
# Past this many replayed items, candidate lists are dropped and rebuilt once (one users x items
# product) rather than patched item by item (a Python loop over the users each item enters).
RELIST_AFTER = 64
# The longest the journal's follower holds the write lock for one step of a catch-up (a batch of
# patched items, or a rebuild of the candidate lists when that measures cheaper and fits): writes
# and reloads wait at most about this long for it.
PATCH_BUDGET_S = 0.05
# A user's most recent recorded interactions read back after an eviction (their left-out ids; the
# pooled rows come first among them).
MAX_RELOADED_IDS = 1000
# Event ids remembered without a journal (in memory, per process).
MEMORY_EVENT_IDS = 1_000_000
# Seconds between recounts of the journal's entries for GetModelInfo (a COUNT(*) scans the table, so
# it runs on the follower's thread, never under the write lock, and not on every poll).
RECOUNT_EVERY_S = 10.0
# Write ids remembered without a journal (in memory, per process): enough for the retries of the
# last few minutes of writes at any rate a catalogue sees.
MEMORY_WRITE_IDS = 100_000


def serving_error(err: JournalError) -> ServingError:
    """The status a journal failure is answered with (documented in engine/errors.py's table)."""
    if isinstance(err, JournalUnavailable):
        return Unavailable(f"the catalogue journal is unavailable, nothing was written; retry later: {err}")
    if isinstance(err, JournalFull):
        return ResourceExhausted(f"the catalogue journal is full, nothing was written: {err}")
    if isinstance(err, JournalReadOnly):
        return FailedPrecondition(f"the catalogue journal is read-only, nothing was written: {err}")
    return Unavailable(f"the catalogue journal failed, nothing was written: {err}")


# The reply field only each write RPC records: a repeated write_id's journaled reply tells which RPC
# first used it.
REPLY_MARK = {"UpsertItems": "inserted", "DeleteItems": "deleted", "RecordInteractions": "created_users"}


def same_kind(done: Journaled, write_id: str, rpc: str) -> None:
    """Refuses (INVALID_ARGUMENT) a write_id the journal holds for another kind of write: a write_id
    names one call, and answering a DeleteItems with an UpsertItems' reply would tell the client its
    delete happened. Nothing was written: a repeat applies nothing."""
    if done.reply is not None and REPLY_MARK[rpc] not in done.reply:
        first = next((name for name, key in REPLY_MARK.items() if key in done.reply), "another write")
        raise InvalidArgument(
            f"write_id {write_id!r} names an earlier {first} call; a write_id names one call, so "
            f"send this {rpc} with a fresh one (nothing was written)"
        )


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
        self.applied_events = 0  # the last recorded interaction's, likewise
        self._stop_following = threading.Event()
        # Cleared, the follower skips its polls: a replica made to lag on purpose (the consistency tests
        # hold one back this way to replay the races replicas meet under load).
        self.following = threading.Event()
        self.following.set()
        self._follower: threading.Thread | None = None
        self.follow_interval = 0.25  # seconds between polls for other writers' changes: a cheap MAX(seq)
        # What the follower last learnt about the journal (GetModelInfo and the metrics read these,
        # so they never wait on the database or the write lock).
        self.journal_reachable = True
        self.journal_head = 0  # the journal's last sequence number, as of the last poll
        self.journal_entries = 0
        self._counted_at = float("-inf")
        self._down_since: float | None = None
        self._fresh: set[str] | None = None  # during a catch-up: ids our own writes set meanwhile
        self._recent_events: dict[str, None] = {}  # event ids, without a journal (FIFO-bounded)
        self._recent_writes: dict[str, dict] = {}  # write id -> reply, without a journal (FIFO-bounded)

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
        info = model_info(self.get(), durable=self.store is not None, journal_entries=self.journal_entries)
        return dataclasses.replace(
            info,
            journal_reachable=self.journal_reachable,
            journal_behind=self.behind,
            write_id_retention_s=WRITE_ID_RETENTION_S if self.store is not None else 0,
            recorded_interactions=self.get().live.recorded,
        )

    @property
    def behind(self) -> int:
        """Journal sequence numbers this replica has not applied, as of the last poll."""
        return max(0, self.journal_head - self.applied)

    # ------------------------------------------------------------------------------------- loading

    def load(
        self, artifacts: Path | str | None = None, check: Check = never
    ) -> tuple[Engine, Engine | None, float]:
        """Loads and warms a new engine, replays the journal onto it, then swaps it in; the old one
        serves (and takes writes) until the swap. ``check`` (an Admin.Reload's deadline) is called
        just before the swap: a reload its caller gave up on swaps nothing.

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
            try:
                done = self._replay(engine, 0)  # the bulk, while the old engine still serves and writes
                done_events = self._replay_events(engine, 0)
                with self._write_lock:
                    check()  # before self.applied moves on: a refused swap leaves it the served engine's
                    # Whatever was journaled meanwhile; writers wait for the swap.
                    self.applied = self._replay(engine, done)
                    self.applied_events = self._replay_events(engine, done_events)
                    previous, self._engine = self._engine, engine
            except JournalError as err:
                if self._engine is not None:  # a Reload: the served engine holds the journal, keep it
                    raise serving_error(err) from None
                # The first load: serve reads from the bundle now; writes answer UNAVAILABLE and the
                # follower replays the whole journal as soon as the database answers.
                _LOGGER.warning(
                    "serving %s without the catalogue journal's changes for now: %s",
                    engine.model_version,
                    err,
                )
                check()
                with self._write_lock:
                    self.applied, self.applied_events, previous, self._engine = 0, 0, None, engine
                self._journal_down(err)
            self.artifacts = path
            engine.live.loader = self._user_events
            self._recount()
            if self._follower is None:
                self._follower = self.follow(self.follow_interval)
            self._on_ready(True)
            return engine, previous, time.perf_counter() - t0

    def _replay(self, engine: Engine, after: int) -> int:
        """Applies journal changes past ``after`` to an engine nobody else writes (a load), in bulk;
        returns the last sequence applied."""
        if self.store is None:
            return after
        upto = self.store.last_seq()
        if upto <= after:
            return after
        t0 = time.perf_counter()
        changes = latest(self.store.changes(after, upto))
        upserts = [c.item for c in changes if c.item is not None]
        deletes = [c.item_id for c in changes if c.op == DELETE]
        bulk = len(upserts) > RELIST_AFTER
        skipped = 0
        for start in range(0, len(upserts), REPLAY_BATCH):
            items, vecs = self._vectors(engine, upserts[start : start + REPLAY_BATCH])
            skipped += min(REPLAY_BATCH, len(upserts) - start) - len(items)
            engine.apply_items(items, vecs, not bulk)
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

    def _replay_events(self, engine: Engine, after: int) -> int:
        """Applies recorded interactions past ``after`` to ``engine``; returns the last sequence applied."""
        if self.store is None:
            return after
        upto = self.store.last_event()
        if upto <= after:
            return after
        t0, n = time.perf_counter(), 0
        batch: list[Interaction] = []
        for _, e in self.store.events(after, upto):
            batch.append(e)
            if len(batch) == REPLAY_BATCH:
                engine.record_interactions(batch)
                n, batch = n + len(batch), []
        engine.record_interactions(batch)
        n += len(batch)
        _LOGGER.info(
            "replayed %d recorded interactions onto %s in %.2f s",
            n,
            engine.model_version,
            time.perf_counter() - t0,
        )
        return upto

    def _user_events(self, user: int | str) -> list[Interaction] | None:
        """A user's recorded interactions read back from the journal (after the engine evicted them);
        None while the journal is away: the Recommend that asked goes on without them, it does not fail."""
        engine = self._engine
        if self.store is None or engine is None:
            return []
        if not self.journal_reachable:
            return None
        user_id = engine.user_ids[user] if isinstance(user, int) else user
        try:
            return self.store.user_events(user_id, engine.live.max_history + MAX_RELOADED_IDS)
        except JournalError as err:
            self._journal_down(err)
            return None

    @staticmethod
    def _vectors(engine: Engine, items: list[NewItemData]) -> tuple[list[NewItemData], np.ndarray]:
        """Journaled items and their vectors; one this model cannot embed is skipped and logged, so one
        item never keeps a model from loading or a replica from following."""
        try:
            return items, engine.item_vectors(items, validate=False)
        except InvalidArgument:
            pass
        kept, vecs = [], []
        for item in items:  # the batch failed: find the culprits one by one
            try:
                vecs.append(engine.item_vectors([item], validate=False))
                kept.append(item)
            except InvalidArgument as err:
                _LOGGER.warning(
                    "journaled item %r not served by %s: %s", item.item_id, engine.model_version, err
                )
        dim = engine.serving.dim
        return kept, np.concatenate(vecs) if vecs else np.zeros((0, dim), dtype=np.float32)

    # ------------------------------------------------------------------------------------- writes

    def upsert(
        self, items: Sequence[NewItemData], check: Check = never, write_id: str = ""
    ) -> tuple[Engine, dict, Journaled]:
        """Validates and vectorises ``items``, journals them (with ``write_id``), then applies them.

        ``check`` (the client's deadline) is called before the journal write: once written, the items
        are applied whatever happens to the call. A ``write_id`` already journaled applies nothing and
        returns the first application's reply (see store.py).

        Returns:
            (the engine they went into, reply {inserted, updated, item_count}, what the journal did).
        """
        check_write_id(write_id)
        engine = self.get()
        vecs = engine.item_vectors(items, check=check)  # the tower pass, outside the lock
        with self._write_lock:
            if self._engine is not engine:  # a reload swapped models meanwhile: vectors from the new one
                engine = self.get()
                vecs = engine.item_vectors(items, check=check)
            check()
            known = sum(engine.catalog.row(i.item_id) is not None for i in items)
            reply = {
                "inserted": len(items) - known,
                "updated": known,
                "item_count": engine.catalog.item_count + len(items) - known,
            }
            done = self._journal(lambda: self.store.upsert(items, write_id, reply), write_id, reply)
            same_kind(done, write_id, "UpsertItems")
            if done.reply is None:
                if self._fresh is not None:
                    self._fresh.update(i.item_id for i in items)
                inserted, updated, count = engine.apply_items(items, vecs)
                reply = {"inserted": inserted, "updated": updated, "item_count": count}
                self._advance(done.seq, len(items))
        return engine, done.reply or reply, done

    def delete(
        self, item_ids: Sequence[str], check: Check = never, write_id: str = ""
    ) -> tuple[Engine, dict, Journaled]:
        """Journals and applies deletes of ``item_ids``.

        Every id is journaled, whether this replica holds it or not: another replica may have added it
        a moment ago, and in journal order the delete comes after that upsert, so it wins everywhere.
        ``write_id`` as in :meth:`upsert`.

        Returns:
            (the engine, reply {deleted, item_count}, what the journal did).
        """
        check_write_id(write_id)
        engine = self.get()
        limit = engine.limits.max_delete_items
        if not 1 <= len(item_ids) <= limit:
            raise InvalidArgument(f"item_ids must hold 1..{limit} ids (got {len(item_ids)})")
        for j, x in enumerate(item_ids):
            if not x:
                raise InvalidArgument(f"item_ids[{j}] must not be empty")
            # Journaled, so held to what either journal can store (no NUL); blank is not empty here.
            check_text(f"item_ids[{j}]", x, SHORT_TEXT_LIMIT, required=False)
        ids = list(dict.fromkeys(item_ids))
        with self._write_lock:
            engine = self.get()
            check()
            held = sum(engine.catalog.row(x) is not None for x in ids)
            reply = {"deleted": held, "item_count": engine.catalog.item_count - held}
            done = self._journal(lambda: self.store.delete(ids, write_id, reply), write_id, reply)
            same_kind(done, write_id, "DeleteItems")
            if done.reply is None:
                if self._fresh is not None:
                    self._fresh.update(ids)
                deleted, count = engine.delete_items(ids)
                reply = {"deleted": deleted, "item_count": count}
                self._advance(done.seq, len(ids))
        return engine, done.reply or reply, done

    def _journal(self, write: Callable[[], Journaled], write_id: str, reply: dict) -> Journaled:
        """Runs ``write`` against the journal (or, without one, remembers ``write_id`` in memory);
        a journal failure becomes the status the client gets. Holds the write lock (the caller's)."""
        if self.store is None:
            if write_id in self._recent_writes:
                return Journaled(0, self._recent_writes[write_id])
            if write_id:
                if len(self._recent_writes) >= MEMORY_WRITE_IDS:
                    self._recent_writes.pop(next(iter(self._recent_writes)))
                self._recent_writes[write_id] = reply
            return Journaled(0)
        return self._guarded(write)

    def _guarded(self, write: Callable[[], T]) -> T:
        """``write()`` against the journal, refused at once while it is known to be away; a journal
        failure becomes the status the client gets. Holds the write lock (the caller's)."""
        if not self.journal_reachable:  # fail fast: the follower flips this back when the database answers
            raise Unavailable(
                "the catalogue journal is unreachable, nothing was written; retry later "
                "(reads are served meanwhile)"
            )
        try:
            return write()
        except JournalUnavailable as err:
            self._journal_down(err)
            raise serving_error(err) from None
        except JournalError as err:
            raise serving_error(err) from None

    def record(
        self, events: Sequence[Interaction], create_users: bool, check: Check = never, write_id: str = ""
    ) -> tuple[Engine, dict, Journaled]:
        """Validates RecordInteractions' events, journals them (with ``write_id``; an event whose
        event id the journal holds is left out), then applies them to the users' live histories.

        Returns:
            (the engine, reply {recorded, duplicates, created_users}, what the journal did).
        """
        check_write_id(write_id)
        engine = self.get()
        events = validate_events(events, engine.limits, time.time())
        with self._write_lock:
            engine = self.get()
            check()
            new_users = engine.new_users(events, create_users)
            reply = {"created_users": len(new_users)}
            if self.store is None:
                done = self._journal(lambda: None, write_id, reply)
                kept = [] if done.reply is not None else self._fresh_in_memory(events)
            else:
                done, kept = self._guarded(lambda: self.store.record(events, write_id, reply))
            same_kind(done, write_id, "RecordInteractions")
            if done.reply is None:
                # In place: without a journal, the dict _journal remembered under write_id is this one.
                reply.update(created_users=engine.record_interactions(kept, relist=True), recorded=len(kept))
                reply["duplicates"] = len(events) - len(kept)
                if self.store is not None and done.seq - len(kept) == self.applied_events:
                    self.applied_events = done.seq
        return engine, done.reply or reply, done

    def _fresh_in_memory(self, events: Sequence[Interaction]) -> list[Interaction]:
        """Without a journal: ``events`` less those whose event id this process has seen (bounded)."""
        kept = []
        for e in events:
            if e.event_id:
                if e.event_id in self._recent_events:
                    continue
                if len(self._recent_events) >= MEMORY_EVENT_IDS:
                    self._recent_events.pop(next(iter(self._recent_events)))
                self._recent_events[e.event_id] = None
            kept.append(e)
        return kept

    def _advance(self, seq: int, n: int) -> None:
        """Marks our own write (journal entries seq-n+1..seq) applied, unless another writer's entries
        came first: then the follower replays from where we were, ours included, in journal order."""
        if seq and seq - n == self.applied:
            self.applied = seq
        # Our own entries count at once; other writers' at the follower's next recount.
        self.journal_entries += n if self.store is not None else 0
        self.journal_head = max(self.journal_head, seq)

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
        """Applies journal changes the served engine lacks (other writers'); returns how many sequence
        numbers it advanced.

        Never holds the write lock for longer than one step of about PATCH_BUDGET_S: the items are
        patched into the candidate lists a batch at a time (each batch's tower pass outside the lock),
        sized from the engine's measured cost of a patched item; when a rebuild of the lists measures
        cheaper than patching them all and itself fits that budget, the lists are rebuilt instead.
        Known users keep their candidate lists throughout. Writes of our own that land between two
        steps win over the older journaled versions of their items still to come.

        Raises:
            JournalError: the journal could not be read (the follower counts that as an outage).
        """
        store, engine = self.store, self._engine
        if store is None or engine is None:
            return 0
        self.journal_head = head = store.last_seq()
        if time.monotonic() - self._counted_at > RECOUNT_EVERY_S:
            self._recount()
        self._catch_up_events(store, engine)
        before = self.applied
        if head <= before:
            return 0
        changes = latest(store.changes(before, head))  # read outside the lock
        upserts = [c.item for c in changes if c.item is not None]
        deletes = [c.item_id for c in changes if c.op == DELETE]
        with self._write_lock:
            if self._engine is not engine or self.applied != before:  # a reload moved on meanwhile
                return 0
            self._fresh = set()
        try:
            rebuild = (
                engine.relist_seconds <= PATCH_BUDGET_S
                and len(upserts) * engine.patch_seconds > engine.relist_seconds
            )
            step = 0
            while step < len(upserts):
                # Sized from the cost of a patched item measured so far (1 until there is one).
                per_item = engine.patch_seconds
                size = len(upserts) if rebuild else max(1, int(PATCH_BUDGET_S / per_item)) if per_item else 1
                batch = upserts[step : step + size]
                step += size
                items, vecs = self._vectors(engine, batch)
                with self._write_lock:
                    if self._engine is not engine:
                        return 0
                    keep = [k for k, item in enumerate(items) if item.item_id not in self._fresh]
                    if keep:
                        engine.apply_items([items[k] for k in keep], vecs[keep], relist=rebuild)
            with self._write_lock:
                if self._engine is not engine:
                    return 0
                gone = [x for x in deletes if x not in self._fresh]
                if gone:
                    engine.delete_items(gone)
                self.applied = max(self.applied, head)
                return self.applied - before
        finally:
            with self._write_lock:
                self._fresh = None

    def _catch_up_events(self, store: CatalogStore, engine: Engine) -> None:
        """Applies other writers' recorded interactions, REPLAY_BATCH at a time under the write lock
        (each event is an O(d) update: a batch holds the lock for milliseconds)."""
        head = store.last_event()
        while self.applied_events < head:
            before = self.applied_events
            batch = [e for _, e in store.events(before, min(head, before + REPLAY_BATCH))]
            with self._write_lock:
                if self._engine is not engine or self.applied_events != before:
                    return
                engine.record_interactions(batch)
                self.applied_events = min(head, before + REPLAY_BATCH)

    def _recount(self) -> None:
        """Refreshes the journal figures GetModelInfo reports (outside the write lock: a COUNT scans)."""
        if self.store is None or not self.journal_reachable:
            return
        try:
            self.journal_head, self.journal_entries = self.store.last_seq(), self.store.count()
            self._counted_at = time.monotonic()
        except JournalError as err:
            self._journal_down(err)

    def _journal_down(self, err: Exception) -> None:
        """Records an outage: one warning when it starts (not one per poll or write)."""
        self.journal_reachable = False
        if self._down_since is None:
            self._down_since = time.monotonic()
            _LOGGER.warning(
                "catalogue journal unreachable: %s; reads are served from memory, writes answer "
                "UNAVAILABLE until it returns",
                err,
            )

    def _follow(self, interval: float) -> None:
        while not self._stop_following.wait(interval):
            if not self.following.is_set():
                continue
            try:
                self.catch_up()
            except JournalError as err:
                self._journal_down(err)
                continue
            except Exception:  # keep following: the next poll retries from the same sequence number
                _LOGGER.exception("applying other writers' journal changes failed")
                continue
            if self._down_since is not None:
                _LOGGER.warning(
                    "catalogue journal reachable again after %.1f s; caught up to sequence %d",
                    time.monotonic() - self._down_since,
                    self.applied,
                )
                self._down_since = None
            self.journal_reachable = True

    def close(self) -> None:
        """Stops the follower (the store is closed by its owner, after this)."""
        self._stop_following.set()
        if self._follower is not None:
            self._follower.join(timeout=30)
