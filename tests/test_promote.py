"""The retrain loop: record -> `train --events` -> `towerserve promote` (clients/promote.py,
trainer/events.py), against a real server and its journal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pipeline
import pytest
from pipeline import running_server

from towerserve.clients.client import Interaction, RecommenderClient
from towerserve.clients.promote import MIN_PAIRS, promote


def _target(running) -> str:
    return f"127.0.0.1:{running.port}"


def _what_the_model_would_predict(client, users, n: int = 3) -> list[Interaction]:
    """Each user's top items now: interactions the serving model ranks well, so a model that ranks
    them badly is a worse model."""
    return [Interaction(u, i.item_id) for u in users for i in client.recommend(u, top_n=n).items]


def test_promote_accepts_an_equal_candidate_and_refuses_a_damaged_one(serving, tmp_path):
    state = tmp_path / "state"
    with (
        running_server(serving, state_dir=state, bundle_root=tmp_path) as running,
        RecommenderClient(_target(running)) as c,
    ):
        users = running.holder.get().user_ids[:15]
        held = _what_the_model_would_predict(c, users)
        equal = pipeline.copy_serving(serving, tmp_path / "equal")
        damaged = pipeline.shuffled_copy(serving, tmp_path / "damaged")
        c.record_interactions(held)  # after both candidates were "trained": every event is held out
        refused = promote(damaged, c, str(state))
        assert not refused.promoted and refused.pairs == len(held) and refused.after == 0
        assert refused.candidate["ndcg@10"] < refused.serving["ndcg@10"] * 0.99, refused
        assert "<" in refused.reason
        assert c.model_info().artifacts == str(serving.resolve())  # nothing reloaded
        forced = promote(damaged, c, str(state), dry_run=True, force=True)
        assert not forced.promoted and "dry run" in forced.reason
        accepted = promote(equal, c, str(state))
        assert accepted.promoted, accepted
        assert accepted.candidate["ndcg@10"] == pytest.approx(accepted.serving["ndcg@10"], rel=1e-6)
        assert c.model_info().artifacts == str(equal.resolve())


def test_train_with_events_records_them_and_promote_judges_only_later_ones(built, tmp_path):
    """`train --events` merges the journal's interactions (each user's latest held out: the time
    split) and records how far it read; promote then judges only what came after, and refuses to
    judge on too few."""
    serving, state = built["serving"], tmp_path / "state"
    with (
        running_server(serving, state_dir=state, bundle_root=tmp_path) as running,
        RecommenderClient(_target(running)) as c,
    ):
        users = running.holder.get().user_ids[:10]
        first = _what_the_model_would_predict(c, users, 2)
        c.record_interactions(first)
        c.record_interactions([Interaction("nobody-in-the-data", first[0].item_id)], create_users=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
        out = tmp_path / "retrained"
        train = [sys.executable, "-m", "towerserve.clients.cli", "train", "--data", str(built["data"])]
        train += ["--out", str(out), "--model", "two_tower", "--encoder", str(built["bert"])]
        train += [
            "--no-cold",
            "--no-cache",
            "--epochs",
            "2",
            "--embedding-dim",
            "8",
            "--events",
            str(state),
            "-q",
        ]
        done = subprocess.run(train, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        record = json.loads((out / "manifest.json").read_text())["data"]["events"]
        assert record["read"] == len(first) + 1 and record["unknown_users"] == 1
        assert record["merged"] == len(first) and record["upto"] == len(first) + 1
        # The time split: each user's most recent event held out of training, and judged on.
        assert record["held_out"] == len(users) and record["new_positives"] == len(first) - len(users)
        metrics = json.loads((out / "metrics.json").read_text())["holdout"]
        assert metrics["two_tower"]["time_users"] == len(users)
        assert 0 <= metrics["two_tower"]["time_ndcg@10"] <= 1 and "time_ndcg@10" in metrics["mostpop"]
        candidate = pipeline.tiny_export(out)
        too_few = promote(candidate, c, str(state))
        assert not too_few.promoted and too_few.pairs == 0 and "only 0" in too_few.reason
        later = _what_the_model_would_predict(c, running.holder.get().user_ids[10:20], 3)
        assert len(later) >= MIN_PAIRS
        c.record_interactions(later)
        judged = promote(candidate, c, str(state), dry_run=True)
        assert judged.after == len(first) + 1 and judged.pairs == len(
            set((e.user_id, e.item_id) for e in later)
        )
        assert judged.candidate["ndcg@10"] > 0 and judged.serving["ndcg@10"] > 0
