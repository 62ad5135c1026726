"""RecordInteractions against real servers (server/api/holder.py, server/engine/live.py): the next
Recommend reflects what a user did, on this replica at once and on another within a second; a retry
is applied once; what was acknowledged survives kill -9, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
from pipeline import running_server, serve_process

from towerserve.clients.client import Interaction, RecommenderClient, TowerserveError, User


def _target(running) -> str:
    return f"127.0.0.1:{running.port}"


def _ids(client: RecommenderClient, user: str, n: int = 20, **kw) -> list[str]:
    return [i.item_id for i in client.recommend(user, top_n=n, **kw).items]


def test_a_recorded_interaction_changes_the_next_recommend(hybrid, tmp_path):
    """The recorded item leaves the user's results and their vector pools it, at once, with no tower
    pass (mean pooling: an O(d) update), equal to the tower's own; exclude_seen false brings it back."""
    with (
        running_server(hybrid, state_dir=tmp_path / "state") as running,
        RecommenderClient(_target(running)) as c,
    ):
        engine = running.holder.get()
        user = engine.user_ids[3]
        top = _ids(c, user)
        x = top[0]
        before = engine.known_user_vectors()[3]
        got = c.record_interactions([Interaction(user, x, kind="purchase")])
        assert (got.recorded, got.duplicates, got.created_users) == (1, 0, 0) and got.sequence == 1
        after = _ids(c, user)
        assert x not in after and len(after) == len(top)  # left out, like a training positive
        assert x in _ids(c, user, exclude_seen=False)
        planned = engine.plan(user, 10)
        assert planned.vector is not None  # kept up to date as the event came: no tower pass
        assert not np.allclose(planned.vector, before)  # (toward x or not is the model's business)
        # The same vector a user-tower pass gives with the item in the history.
        row = engine.history_index.index[x]
        want = engine.inputs.user_vector(engine.serving, 3, engine.history([x]))
        np.testing.assert_allclose(planned.vector, want, rtol=1e-4, atol=1e-4)
        assert row in running.holder.get().live.get(3).rows
        assert c.model_info().recorded_interactions == 1


def test_request_history_items_are_left_out_like_training_positives(hybrid):
    with running_server(hybrid) as running, RecommenderClient(_target(running)) as c:
        engine = running.holder.get()
        someone = User(age=30, profession=engine.profile.profession, personality=engine.profile.personality)
        first = [i.item_id for i in c.recommend(user=someone, top_n=5).items]
        history = first[:2]
        again = [i.item_id for i in c.recommend(user=someone, top_n=20, history=history).items]
        assert not set(history) & set(again)
        kept = [
            i.item_id for i in c.recommend(user=someone, top_n=20, history=history, exclude_seen=False).items
        ]
        assert set(history) & set(kept)
        known = engine.user_ids[0]
        x = _ids(c, known)[0]
        assert x not in _ids(c, known, history=[x])


def test_score_pools_recorded_interactions_as_recommend_does(hybrid):
    with running_server(hybrid) as running, RecommenderClient(_target(running)) as c:
        user = running.holder.get().user_ids[7]
        top = _ids(c, user, 10)
        other = top[5]
        before = c.score([(user, other)]).scores[0]
        c.record_interactions([Interaction(user, i) for i in top[:2]])
        served = {i.item_id: i.score for i in c.recommend(user, top_n=20).items}
        after = c.score([(user, other)]).scores[0]
        assert after != pytest.approx(before, abs=1e-7)  # the vector moved
        assert other in served and after == pytest.approx(served[other], abs=1e-5)


def test_inline_evaluate_judges_as_served_but_never_on_what_it_pooled(hybrid):
    """Inline Evaluate ranks as Recommend does (recorded items pooled and left out), except the judged
    pairs themselves, which `promote` takes from the same journal the serving replica recorded."""
    with running_server(hybrid) as running, RecommenderClient(_target(running)) as c:
        user = running.holder.get().user_ids[5]
        top = _ids(c, user, 10)
        target = top[6]

        def ndcg() -> float:
            return c.evaluate(ks=[10], interactions=[(user, target)]).metrics["ndcg@10"]

        assert ndcg() == pytest.approx(1 / np.log2(6 + 2))
        c.record_interactions([Interaction(user, i) for i in top[:3]])
        served = _ids(c, user, 10)
        want = 1 / np.log2(served.index(target) + 2) if target in served else 0.0
        assert want != pytest.approx(1 / np.log2(6 + 2))  # three items above it left, the vector moved
        assert ndcg() == pytest.approx(want, rel=1e-6)
        c.record_interactions([Interaction(user, target)])
        assert ndcg() == pytest.approx(want, rel=1e-6)  # judged: neither pooled nor left out


def test_a_retried_batch_and_a_repeated_event_id_count_once(hybrid, journal):
    with running_server(hybrid, **journal) as running, RecommenderClient(_target(running)) as c:
        engine = running.holder.get()
        user = engine.user_ids[1]
        items = _ids(c, user, 3)
        events = [Interaction(user, items[0], event_id="e-1"), Interaction(user, items[1], event_id="e-2")]
        first = c.record_interactions(events, write_id="batch-1")
        again = c.record_interactions(events, write_id="batch-1")
        assert (first.recorded, first.repeated) == (2, False)
        assert (again.recorded, again.repeated, again.sequence) == (2, True, first.sequence)
        other = c.record_interactions(events + [Interaction(user, items[2], event_id="e-3")])
        assert (other.recorded, other.duplicates) == (1, 2)
        assert engine.live.recorded == 3  # applied once each
        assert running.holder.store.last_event() == 3


def test_unknown_users_and_items_and_bad_events(hybrid):
    with running_server(hybrid) as running, RecommenderClient(_target(running)) as c:
        engine = running.holder.get()
        item = engine.catalog.ids[0]
        with pytest.raises(TowerserveError) as err:
            c.record_interactions([Interaction("nobody-yet", item)])
        assert err.value.code == grpc.StatusCode.NOT_FOUND and "create_users" in err.value.details
        with pytest.raises(TowerserveError) as err:
            c.record_interactions([Interaction(engine.user_ids[0], "no-such-item")])
        assert err.value.code == grpc.StatusCode.NOT_FOUND and "no-such-item" in err.value.details
        for bad, says in (
            (Interaction(engine.user_ids[0], item, weight=-1.0), "weight"),
            (Interaction(engine.user_ids[0], item, timestamp=time.time() + 10 * 86400), "timestamp"),
            (Interaction(engine.user_ids[0], item, kind="k" * 65), "kind"),
            (Interaction(engine.user_ids[0], item, event_id="é"), "event_id"),
        ):
            with pytest.raises(TowerserveError) as err:
                c.record_interactions([bad])
            assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and says in err.value.details
        with pytest.raises(TowerserveError) as err:
            c.record_interactions([])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        # create_users: a new user, served by id from then on, without what they did.
        made = c.record_interactions([Interaction("newcomer", item)], create_users=True)
        assert made.created_users == 1
        got = _ids(c, "newcomer", 10)
        assert len(got) == 10 and item not in got
        assert c.record_interactions([Interaction("newcomer", engine.catalog.ids[1])]).created_users == 0


def test_record_via_one_replica_recommend_via_another_within_a_second(hybrid, journal):
    with (
        running_server(hybrid, **journal) as a,
        running_server(hybrid, **journal) as b,
        RecommenderClient(_target(a)) as ca,
        RecommenderClient(_target(b)) as cb,
    ):
        user = a.holder.get().user_ids[2]
        x = _ids(cb, user)[0]
        ca.record_interactions([Interaction(user, x)])
        t0 = time.monotonic()
        while x in _ids(cb, user):
            assert time.monotonic() - t0 < 1.0, "replica B still recommends the recorded item"
            time.sleep(0.02)


def _evict_the_first_user(c: RecommenderClient, engine) -> tuple[str, str]:
    """With a live budget of 4 events: the first user records one item, the second three, which
    evicts the first. Returns (the first user, their recorded item)."""
    first, second = engine.user_ids[0], engine.user_ids[1]
    x = _ids(c, first)[0]
    c.record_interactions([Interaction(first, x)])
    c.record_interactions([Interaction(second, y) for y in _ids(c, second, 3)])  # past the budget
    return first, x


def test_evicted_users_come_back_from_the_journal(hybrid, tmp_path):
    with (
        running_server(hybrid, state_dir=tmp_path / "state", live_budget_events=4) as running,
        RecommenderClient(_target(running)) as c,
    ):
        engine = running.holder.get()
        first, x = _evict_the_first_user(c, engine)
        assert 0 in engine.live.evicted and engine.live.held <= 8
        assert x not in _ids(c, first)  # read back from the journal


def _journal_flags(journal: dict) -> list[str]:
    if "state_dir" in journal:
        return ["--state-dir", str(journal["state_dir"])]
    return ["--catalog-url", journal["catalog_url"]]


def test_kill_9_after_an_ok_loses_no_interaction(hybrid, journal):
    proc, target = serve_process(hybrid, *_journal_flags(journal))
    try:
        with RecommenderClient(target) as c:
            from towerserve.server.engine.engine import Engine

            user = Engine(hybrid).user_ids[4]
            x = _ids(c, user)[0]
            assert c.record_interactions([Interaction(user, x)]).recorded == 1
            proc.send_signal(signal.SIGKILL)  # right after the OK
    finally:
        proc.wait(timeout=30)
        proc.stderr.close()
    proc, target = serve_process(hybrid, *_journal_flags(journal))
    try:
        with RecommenderClient(target) as c:
            assert x not in _ids(c, user) and c.model_info().recorded_interactions == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proc.stderr.close()


def test_the_record_command_and_a_record_load_test(hybrid, tmp_path):
    """`towerserve record` and `towerserve loadtest --rpc record_interactions` against a real server."""
    import json

    with running_server(hybrid, state_dir=tmp_path / "state") as running:
        engine = running.holder.get()
        user, item = engine.user_ids[5], engine.catalog.ids[2]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
        base = [sys.executable, "-m", "towerserve.clients.cli"]
        target = ["--target", _target(running)]
        done = subprocess.run(
            [*base, "record", *target, "--event", f"{user}:{item}:click", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["recorded"] == 1
        with RecommenderClient(_target(running)) as c:
            assert item not in _ids(c, user)
        users = hybrid / "catalog" / "users.csv"
        items = hybrid / "catalog" / "items.csv"
        load = subprocess.run(
            [
                *base,
                "loadtest",
                *target,
                "--rpc",
                "record_interactions",
                "--users",
                str(users),
                "--items",
                str(items),
            ]
            + ["--concurrency", "4", "--duration", "2s", "--warmup", "0s", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert load.returncode == 0, load.stderr
        result = json.loads(load.stdout)
        assert result["ok"] > 0 and result["errors"] == {}
        # The generator draws from a pool of requests, so a write id can come twice: applied once.
        assert 1 < engine.live.recorded <= 1 + result["ok"]
        assert running.holder.store.last_event() == engine.live.recorded


def test_an_evicted_user_is_served_without_their_events_while_the_journal_cannot_answer(hybrid, tmp_path):
    """The read-back of an evicted user's events must not fail their Recommend: with the journal away
    they are served as if they had none, and get them back once it answers."""
    with (
        running_server(hybrid, state_dir=tmp_path / "state", live_budget_events=4) as running,
        RecommenderClient(_target(running)) as c,
    ):
        engine = running.holder.get()
        first, x = _evict_the_first_user(c, engine)
        assert 0 in engine.live.evicted
        running.holder.following.clear()  # the follower would flip reachability back at once
        running.holder.journal_reachable = False
        assert len(_ids(c, first)) == 20 and 0 in engine.live.evicted  # served, nothing read back
        running.holder.journal_reachable = True
        assert x not in _ids(c, first) and 0 not in engine.live.evicted
