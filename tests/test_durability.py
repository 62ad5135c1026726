"""Nothing acknowledged is lost: the catalogue journal across restarts, reloads (to another model, under
load, with writes in flight) and a kill -9 right after an OK."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
from pipeline import running_server, serve_process

from towerserve.clients.client import ItemData, RecommenderClient, TowerserveError
from towerserve.server.engine import scoring


def _item(k: int | str, category: str = "journaled") -> ItemData:
    return ItemData(f"new-{k}", f"a journaled item number {k}", "durable, acknowledged", 5.0, category)


def _target(running) -> str:
    return f"127.0.0.1:{running.port}"


def _ids_in(client: RecommenderClient, user: str, category: str) -> set[str]:
    return {x.item_id for x in client.recommend(user, top_n=1000, categories=[category]).items}


def test_upserts_and_deletes_survive_a_restart(serving, tmp_path):
    state = tmp_path / "state"
    with running_server(serving, state_dir=state) as running, RecommenderClient(_target(running)) as c:
        info = c.model_info()
        assert info.durable_catalog and info.journal_entries == 0
        user = running.holder.get().user_ids[0]
        n = info.item_count
        assert c.upsert_items([_item(k) for k in range(5)]).item_count == n + 5
        victim = running.holder.get().catalog.ids[0]  # an item of the exported bundle
        assert c.delete_items([victim, "new-4", "never-existed"]).deleted == 2
        assert c.upsert_items([_item(1, "replaced")]).updated == 1
        assert c.model_info().journal_entries == 9  # 5 + 3 deletes (every id is journaled) + 1
    with running_server(serving, state_dir=state) as running, RecommenderClient(_target(running)) as c:
        assert c.model_info().item_count == n + 5 - 2
        assert _ids_in(c, user, "journaled") == {"new-0", "new-2", "new-3"}
        assert _ids_in(c, user, "replaced") == {"new-1"}
        with pytest.raises(TowerserveError) as err:
            c.score([(user, victim)])
        assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_without_a_state_dir_the_catalogue_is_not_durable(serving):
    with running_server(serving) as running, RecommenderClient(_target(running)) as c:
        info = c.model_info()
        assert not info.durable_catalog and info.journal_entries == 0


def test_reload_to_another_model_under_load_loses_nothing(serving, hybrid, tmp_path):
    """Reloads alternate between two different models while callers recommend and upsert: no call
    fails and every acknowledged item is in the model served at the end, with that model's vectors."""
    state = tmp_path / "state"
    root = Path(os.path.commonpath([serving, hybrid]))  # Admin.Reload loads only under its bundle root
    with (
        running_server(serving, state_dir=state, bundle_root=root) as running,
        RecommenderClient(_target(running)) as c,
    ):
        first = c.model_info().model_version
        users = running.holder.get().user_ids[:20]
        acked: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def upsert(worker: int) -> None:
            k = 0
            while not stop.is_set():
                key = f"w{worker}-{k}"
                try:
                    c.upsert_items([_item(key)])
                    acked.append(f"new-{key}")
                except Exception as err:  # every failure reaches the test, not only RPC errors
                    failures.append(f"upsert {key}: {err!r}")
                k += 1

        def recommend() -> None:
            while not stop.is_set():
                for u in users:
                    try:
                        c.recommend(u, top_n=10)
                    except Exception as err:
                        failures.append(f"recommend {u}: {err!r}")

        threads = [threading.Thread(target=upsert, args=(w,)) for w in range(3)]
        threads += [threading.Thread(target=recommend) for _ in range(2)]
        for t in threads:
            t.start()
        versions = []
        try:
            for folder in (hybrid, serving, hybrid):
                versions.append(c.reload(str(folder), timeout=300).model_version)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures, failures[:5]
        assert len(set(versions)) == 2 and versions[-1] != first
        assert len(acked) > 10
        engine = running.holder.get()
        assert engine.root == hybrid.resolve()
        missing = [x for x in acked if engine.catalog.row(x) is None]
        assert not missing, missing[:5]
        assert c.model_info().item_count == len(engine.catalog.columns.ids) - engine.catalog.deleted
        # Journaled items carry the served model's vectors: the same item upserted into a fresh
        # engine of this model scores identically.
        from towerserve.server.engine.engine import Engine

        fresh = Engine(hybrid, running.holder.config)
        probe = _item(acked[-1].removeprefix("new-"))
        fresh.upsert_items([probe])  # ItemData and NewItemData share fields
        u = users[0]
        assert c.score([(u, probe.item_id)]).scores == pytest.approx(
            scoring.score(fresh, [(u, probe.item_id)]).tolist(), rel=1e-6
        )


def test_writes_through_one_replica_reach_the_other_within_a_second(serving, journal):
    """Two servers on one journal (--workers processes on one --state-dir, or replicas on one
    PostgreSQL): each applies the other's upserts and deletes by following the journal; after both
    stop, a restarted server still has them."""
    with (
        running_server(serving, **journal) as a,
        running_server(serving, **journal) as b,
        RecommenderClient(_target(a)) as ca,
        RecommenderClient(_target(b)) as cb,
    ):
        user = a.holder.get().user_ids[0]
        t0 = time.monotonic()
        ca.upsert_items([_item("via-a", "shared")])
        cb.upsert_items([_item("via-b", "shared")])
        for c in (cb, ca):
            while _ids_in(c, user, "shared") != {"new-via-a", "new-via-b"}:
                assert time.monotonic() - t0 < 1.0, _ids_in(c, user, "shared")
                time.sleep(0.02)
        cb.delete_items(["new-via-a"])
        t0 = time.monotonic()
        while _ids_in(ca, user, "shared") != {"new-via-b"}:
            assert time.monotonic() - t0 < 1.0, _ids_in(ca, user, "shared")
            time.sleep(0.02)
        assert ca.model_info().item_count == cb.model_info().item_count
    with running_server(serving, **journal) as again, RecommenderClient(_target(again)) as c:
        assert _ids_in(c, user, "shared") == {"new-via-b"}
        assert c.model_info().journal_entries == 3


def test_kill_9_right_after_an_ok_loses_nothing(serving, items, tmp_path):
    """Upserts and deletes, an exported item's and an upserted one's, each acknowledged just before a
    kill -9: after the restart the upserted items are there and the deleted ones are NOT_FOUND."""
    state = tmp_path / "state"
    exported = next(iter(items))
    proc, target = serve_process(serving, "--state-dir", str(state))
    try:
        with RecommenderClient(target) as c:
            c.upsert_items([_item("before-crash", "crash"), _item("doomed", "crash")])
            c.delete_items(["new-never"])
            assert c.upsert_items([_item("last", "crash")]).inserted == 1
            assert c.delete_items([exported]).deleted == 1
            assert c.delete_items(["new-doomed"]).deleted == 1
            proc.send_signal(signal.SIGKILL)  # right after the OK: no drain, no flush, no goodbye
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    proc, target = serve_process(serving, "--state-dir", str(state))
    try:
        with RecommenderClient(target) as c:
            from towerserve.server.engine.engine import Engine

            user = Engine(serving).user_ids[0]
            assert _ids_in(c, user, "crash") == {"new-before-crash", "new-last"}
            for gone in (exported, "new-doomed"):
                with pytest.raises(TowerserveError) as err:
                    c.score([(user, gone)])
                assert err.value.code == grpc.StatusCode.NOT_FOUND, gone
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        proc.stderr.close()
