"""The Python client library (sync and asyncio) against real servers: typed results, errors, retries, auth, TLS."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from messages import missing
from pipeline import running_server
from prometheus_client import CollectorRegistry

from towerserve.clients.client import (
    TLS,
    AsyncRecommenderClient,
    Evaluation,
    ItemData,
    ModelInfo,
    Recommendation,
    RecommendedItem,
    RecommenderClient,
    ReloadResult,
    RetryPolicy,
    Scores,
    TowerserveError,
    UpsertResult,
    User,
)

ROOT = Path(__file__).resolve().parents[1]
RECOMMEND = "/towerserve.v1.Recommender/Recommend"
TOKEN = "t0k"
NO_RETRY = RetryPolicy(attempts=1)


def _target(running) -> str:
    return f"127.0.0.1:{running.port}"


def _calls(registry: CollectorRegistry, code: str, at_least: int = 1, method: str = RECOMMEND) -> float:
    """RPCs the server itself counted: proof of how many attempts really reached it.

    A failed call is counted just *after* its status went out (abort sends it, then the interceptor's
    finally runs), so the count may trail the client's exception by a moment: poll up to a deadline.
    """
    deadline = time.monotonic() + 2.0
    while True:
        value = (
            registry.get_sample_value("towerserve_requests_total", {"method": method, "code": code}) or 0.0
        )
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.01)


def _dead_target() -> str:
    """A port nobody listens on: any RPC attempted there fails UNAVAILABLE, never ValueError."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def target(serving) -> str:
    """The personalised model (it reads personality); read-only: mutating tests start their own server."""
    with running_server(serving, model="two_tower") as running:
        yield _target(running)


@pytest.fixture()
def client(target):
    with RecommenderClient(target, retry=NO_RETRY) as c:
        yield c


def _ids(rec: Recommendation) -> list[str]:
    return [it.item_id for it in rec.items]


def _user(row: dict[str, str]) -> User:
    return User(float(row["age"]), row["profession"], row["personality"])


# ---------------------------------------------------------------------------------------- Recommend


def test_recommend_by_id_is_typed_and_matches_the_catalogue(target, users, items):
    with RecommenderClient(target) as client:
        rec = client.recommend(users[0]["user_id"], top_n=5)
        info = client.model_info()
    assert isinstance(rec, Recommendation) and len(rec.items) == 5
    assert all(isinstance(it, RecommendedItem) for it in rec.items)
    scores = [it.score for it in rec.items]
    assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
    for it in rec.items:
        row = items[it.item_id]
        assert (it.price, it.description, it.features, it.category) == (
            float(row["price"]),
            row["description"],
            row["features"],
            row["category"],
        )
    assert rec.model_version == info.model_version and rec.model_version.startswith("two_tower-")
    # Leaving the with-block closed the channel.
    with pytest.raises(ValueError, match="closed channel"):
        client.recommend(users[0]["user_id"])


def test_recommend_by_attributes_ranks_like_the_same_known_user(client, users):
    # Attributes equal to a known user's give that user's unfiltered ranking; a client that mixed up
    # age/profession/personality would not.
    row = users[5]
    by_id = client.recommend(row["user_id"], top_n=1000, exclude_seen=False)
    by_attrs = client.recommend(user=_user(row), top_n=1000)
    assert _ids(by_attrs) == _ids(by_id)
    assert [it.score for it in by_attrs.items] == pytest.approx([it.score for it in by_id.items], abs=1e-5)

    other = next(u for u in users if u["personality"] != row["personality"])
    swapped = client.recommend(
        user=User(float(row["age"]), row["profession"], other["personality"]), top_n=1000
    )
    assert [it.score for it in swapped.items] != pytest.approx([it.score for it in by_id.items], abs=1e-5)


def test_two_tower_needs_personality(client):
    with pytest.raises(TowerserveError) as err:
        client.recommend(user=User(33, "science"), top_n=3)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert missing(err.value.details, ("user.personality",)) == [], err.value.details


def test_filters(client, users, items):
    user = users[2]["user_id"]
    full = _ids(client.recommend(user, top_n=1000, exclude_seen=False))
    assert len(full) == len(items)
    price = {i: float(r["price"]) for i, r in items.items()}
    prices = sorted(price.values())
    lo, hi = prices[len(prices) // 4], prices[3 * len(prices) // 4]

    both = client.recommend(user, top_n=5, exclude_seen=False, price_min=lo, price_max=hi)
    assert _ids(both) == [i for i in full if lo <= price[i] <= hi][:5]
    # One bound alone leaves the other open (an unset bound must not be sent as 0).
    assert (
        _ids(client.recommend(user, top_n=5, exclude_seen=False, price_min=hi))
        == [i for i in full if price[i] >= hi][:5]
    )
    assert (
        _ids(client.recommend(user, top_n=5, exclude_seen=False, price_max=lo))
        == [i for i in full if price[i] <= lo][:5]
    )

    wanted = sorted({r["category"] for r in items.values()})[:2]
    by_category = client.recommend(user, top_n=1000, exclude_seen=False, categories=wanted)
    assert _ids(by_category) == [i for i in full if items[i]["category"] in wanted]

    excluded = client.recommend(
        user, top_n=5, exclude_seen=False, exclude_item_ids=full[:3] + ["not_an_item"]
    )
    assert _ids(excluded) == full[3:8]

    # exclude_seen defaults to True: the same order with the user's seen items taken out.
    unseen = _ids(client.recommend(user, top_n=1000))
    assert 0 < len(unseen) < len(full)
    kept = set(unseen)
    assert unseen == [i for i in full if i in kept]


def test_give_exactly_one_of_user_id_or_user_before_any_rpc(users):
    # Against a dead port: an RPC, had one been attempted, would fail UNAVAILABLE instead.
    with RecommenderClient(_dead_target(), retry=NO_RETRY, timeout=1.0) as client:
        with pytest.raises(ValueError, match="exactly one of user_id or user"):
            client.recommend(users[0]["user_id"], user=_user(users[0]))
        with pytest.raises(ValueError, match="exactly one of user_id or user"):
            client.recommend()
        with pytest.raises(ValueError, match=r"split must be one of \['cold', 'holdout'\] \(got 'train'\)"):
            client.evaluate(split="train")
        with pytest.raises(
            ValueError, match=r"protocol must be one of \['full', 'notebook'\] \(got 'fast'\)"
        ):
            client.evaluate(protocol="fast")
        with pytest.raises(TowerserveError) as err:  # the control: a valid call does reach the network
            client.recommend(users[0]["user_id"])
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------------------------ Score, Evaluate


def test_score_keeps_pair_order(client, users):
    row = users[4]
    top = client.recommend(row["user_id"], top_n=4, exclude_seen=False)
    cold = client.recommend(user=_user(users[7]), top_n=4)
    pairs = (
        [(row["user_id"], it.item_id) for it in reversed(top.items)]
        + [(_user(users[7]), it.item_id) for it in cold.items]
        + [(row["user_id"], top.items[0].item_id)]
    )
    expected = (
        [it.score for it in reversed(top.items)] + [it.score for it in cold.items] + [top.items[0].score]
    )

    scores = client.score(pairs)
    assert isinstance(scores, Scores) and scores.model_version == top.model_version
    assert scores.scores == pytest.approx(expected, abs=1e-5)


def test_evaluate(client, users, items):
    info = client.model_info()
    holdout = client.evaluate()
    assert isinstance(holdout, Evaluation)
    assert (holdout.split, holdout.protocol, holdout.model_version) == ("holdout", "full", info.model_version)
    assert {f"ndcg@{k}" for k in (5, 10, 20)} | {"mrr", "auc", "notebook_score"} <= set(holdout.metrics)
    assert holdout.users > 0 and holdout.seconds > 0
    # The server's full-ranking numbers are the ones recorded at training time.
    assert holdout.metrics["ndcg@10"] == pytest.approx(info.training_metrics["ndcg@10"], abs=1e-6)

    cold = client.evaluate(split="cold", ks=(5,))
    assert (cold.split, cold.protocol) == ("cold", "full") and cold.users > 0
    assert "ndcg@5" in cold.metrics and "ndcg@10" not in cold.metrics

    notebook = client.evaluate(protocol="notebook")
    assert (notebook.split, notebook.protocol) == ("holdout", "notebook")
    assert set(notebook.metrics) == {"notebook_score"}
    assert notebook.metrics["notebook_score"] == pytest.approx(holdout.metrics["notebook_score"], abs=1e-6)

    assert set(client.evaluate(ks=(3, 7)).metrics) >= {"ndcg@3", "recall@7"}

    ids = list(items)
    inline = client.evaluate(
        ks=(5,),
        interactions=[
            (users[0]["user_id"], ids[0]),
            (users[1]["user_id"], ids[1]),
            (users[1]["user_id"], ids[2]),
        ],
    )
    assert (inline.split, inline.users) == ("inline", 2)
    assert 0.0 <= inline.metrics["ndcg@5"] <= 1.0


def test_model_info_is_typed(client, serving, users, items):
    info = client.model_info()
    assert isinstance(info, ModelInfo)
    assert (info.model_kind, info.user_independent_ranking) == ("two_tower", False)
    assert (info.item_count, info.user_count) == (len(items), len(users))
    assert info.providers == ["CPUExecutionProvider"]
    assert "personality" in info.user_fields and "category" in info.item_fields
    assert info.categories == sorted({r["category"] for r in items.values()})
    assert isinstance(info.training_metrics["ndcg@10"], float)
    assert info.versions["serve.grpcio"] == grpc.__version__
    assert info.artifacts == str(serving.resolve())
    assert (info.max_top_n, info.max_score_pairs, info.max_upsert_items, info.max_inline_interactions) == (
        1000,
        10_000,
        1000,
        200_000,
    )
    assert info.vector_dim > 0 and info.encoder and info.encoder_variant and info.loaded_at


# ------------------------------------------------------------------------------ UpsertItems, Reload


def test_upsert_items_then_recommend_then_reload(serving, users, items):
    kayak = ItemData(
        "item_new_kayak", "An inflatable kayak for lakes and calm rivers.", "Lightweight", 99.5, "kayak"
    )
    with running_server(serving, model="two_tower") as running, RecommenderClient(_target(running)) as client:
        before = client.model_info()
        done = client.upsert_items([kayak])
        assert done == UpsertResult(
            inserted=1, updated=0, item_count=len(items) + 1, model_version=before.model_version
        )
        found = client.recommend(users[0]["user_id"], top_n=10, categories=["kayak"])
        assert _ids(found) == ["item_new_kayak"]
        got = found.items[0]
        assert (got.description, got.features, got.price, got.category) == (
            kayak.description,
            kayak.features,
            kayak.price,
            kayak.category,
        )
        again = client.upsert_items([replace(kayak, price=120.0)])
        assert (again.inserted, again.updated, again.item_count) == (0, 1, len(items) + 1)
        assert client.recommend(users[0]["user_id"], categories=["kayak"]).items[0].price == 120.0

        reloaded = client.reload()
        assert isinstance(reloaded, ReloadResult)
        assert (reloaded.model_version, reloaded.previous_model_version) == (before.model_version,) * 2
        assert reloaded.seconds > 0
        # Upserts live in memory: reloading the folder brings back the catalogue on disk.
        assert client.model_info().item_count == len(items)


# ------------------------------------------------------------------------------------------ health


def test_health_follows_the_model_lifecycle(serving, users):
    with (
        running_server(serving, load=False) as running,
        RecommenderClient(_target(running), retry=NO_RETRY) as client,
    ):
        assert client.health() == "NOT_SERVING"
        assert client.health("towerserve.v1.Recommender") == "NOT_SERVING"
        with pytest.raises(TowerserveError) as err:
            client.recommend(users[0]["user_id"])
        assert (err.value.code, err.value.method) == (grpc.StatusCode.UNAVAILABLE, "Recommend")
        assert "loading" in err.value.details
        running.load()
        assert client.health() == "SERVING"
        assert client.health("towerserve.v1.Admin") == "SERVING"
        # The standard Check answers NOT_FOUND for a service it does not know.
        with pytest.raises(TowerserveError) as err:
            client.health("no.such.Service")
        assert (err.value.code, err.value.method) == (grpc.StatusCode.NOT_FOUND, "Health")


# ------------------------------------------------------------------------------------------ errors


def test_unknown_user_is_not_found(client):
    with pytest.raises(TowerserveError) as info:
        client.recommend("nobody_0001", top_n=3)
    err = info.value
    assert not isinstance(err, grpc.RpcError)
    assert (err.code, err.method) == (grpc.StatusCode.NOT_FOUND, "Recommend")
    assert missing(err.details, ("user_id", "'nobody_0001'")) == [], err.details
    assert missing(str(err), ("Recommend", "NOT_FOUND", err.details)) == [], str(err)
    assert err.__cause__ is None and err.__suppress_context__  # no grpc traceback chained on


def test_top_n_zero_is_invalid_argument(client, users):
    with pytest.raises(TowerserveError) as err:
        client.recommend(users[0]["user_id"], top_n=0)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    limit = str(client.model_info().max_top_n)
    assert missing(err.value.details, ("top_n", "0", limit)) == [], err.value.details


@pytest.mark.parametrize(
    "method,call,code,says",
    [  # says: what the details must name, from the call: the field, the value sent
        ("Score", lambda c, u: c.score([(u, "no_such_item")]), "NOT_FOUND", ("item_id", "'no_such_item'")),
        ("Evaluate", lambda c, u: c.evaluate(ks=(0,)), "INVALID_ARGUMENT", ("ks", "0")),
        ("UpsertItems", lambda c, u: c.upsert_items([]), "INVALID_ARGUMENT", ("items", "0")),
        ("Reload", lambda c, u: c.reload("/no/such/folder"), "FAILED_PRECONDITION", ("bundle root",)),
    ],
    ids=["score", "evaluate", "upsert", "reload"],
)
def test_every_method_raises_towerserve_error(client, users, method, call, code, says):
    with pytest.raises(TowerserveError) as err:
        call(client, users[0]["user_id"])
    assert not isinstance(err.value, grpc.RpcError)
    assert (err.value.method, err.value.code.name) == (method, code)
    assert missing(err.value.details, says) == [], err.value.details


def test_timeouts_against_a_silent_peer():
    # A socket that completes TCP but never speaks HTTP/2: the call can only end at its deadline.
    # (Tiny deadlines against the real server are no test: gRPC's timers are too coarse to fail them reliably.)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        retry = RetryPolicy(attempts=5, initial_backoff=5.0)  # DEADLINE_EXCEEDED must not be retried
        with RecommenderClient(target, timeout=1.0, retry=retry) as client:
            # The default, then per call; a retry would add the 5 s backoff, so 4 s bounds catch one.
            for timeout, low, high in ((None, 0.9, 4.0), (0.1, 0.05, 4.0)):
                t0 = time.monotonic()
                with pytest.raises(TowerserveError) as err:
                    client.recommend("tra_0001", timeout=timeout)
                elapsed = time.monotonic() - t0
                assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
                assert low <= elapsed < high, (timeout, elapsed)


# ----------------------------------------------------------------------------------------- retries


def _load_later(running, delay: float = 0.3) -> threading.Thread:
    thread = threading.Timer(delay, running.load)
    thread.start()
    return thread


def test_unavailable_is_retried_until_the_server_is_ready(serving, users):
    registry = CollectorRegistry()
    with running_server(serving, load=False, registry=registry) as running:
        with (
            RecommenderClient(_target(running), retry=NO_RETRY) as client,
            pytest.raises(TowerserveError) as err,
        ):
            client.recommend(users[0]["user_id"])
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert _calls(registry, "UNAVAILABLE") == 1

        loader = _load_later(running)
        retry = RetryPolicy(attempts=20, initial_backoff=0.05, max_backoff=0.2)
        t0 = time.monotonic()
        try:
            with RecommenderClient(_target(running), retry=retry) as client:
                rec = client.recommend(users[0]["user_id"], top_n=3)
        finally:
            loader.join()
        assert len(rec.items) == 3
        assert time.monotonic() - t0 >= 0.25
        assert _calls(registry, "UNAVAILABLE", 3) >= 3 and _calls(registry, "OK") == 1


def test_unavailable_is_tried_exactly_attempts_times(serving, users):
    registry = CollectorRegistry()
    retry = RetryPolicy(attempts=3, initial_backoff=0.1, multiplier=1.0, jitter=0.0)
    with (
        running_server(serving, load=False, registry=registry) as running,
        RecommenderClient(_target(running), retry=retry) as client,
    ):
        t0 = time.monotonic()
        with pytest.raises(TowerserveError) as err:
            client.recommend(users[0]["user_id"])
        elapsed = time.monotonic() - t0
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert _calls(registry, "UNAVAILABLE", 3) == 3
    assert elapsed >= 0.2  # two 0.1 s sleeps between three attempts (the count above: no fourth)


def test_not_found_is_not_retried(serving):
    registry = CollectorRegistry()
    retry = RetryPolicy(attempts=5, initial_backoff=5.0, max_backoff=5.0)
    with (
        running_server(serving, registry=registry) as running,
        RecommenderClient(_target(running), retry=retry) as client,
    ):
        t0 = time.monotonic()
        with pytest.raises(TowerserveError) as err:
            client.recommend("nobody")
        elapsed = time.monotonic() - t0
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    assert elapsed < 4.0  # a retry would have slept the 5 s backoff first
    assert _calls(registry, "NOT_FOUND") == 1


def test_retry_policy_delays():
    # Nominal delays: 0.1, 0.2, 0.4, then capped at 0.5, 0.5 (attempts - 1 = 5 of them).
    nominal = [0.1, 0.2, 0.4, 0.5, 0.5]
    exact = list(
        RetryPolicy(attempts=6, initial_backoff=0.1, max_backoff=0.5, multiplier=2.0, jitter=0.0).delays()
    )
    assert exact == pytest.approx(nominal)
    policy = RetryPolicy(attempts=6, initial_backoff=0.1, max_backoff=0.5, multiplier=2.0, jitter=0.2)
    seen = set()
    for _ in range(200):
        delays = list(policy.delays())
        assert len(delays) == 5
        assert all(n * 0.8 <= d <= n * 1.2 for d, n in zip(delays, nominal)), delays
        seen.add(round(delays[0], 6))
    assert len(seen) > 100  # jittered, not constant
    assert list(RetryPolicy(attempts=1).delays()) == []


# ------------------------------------------------------------------------------------------ token, TLS


def test_token(serving, users):
    with running_server(serving, token=TOKEN) as running:
        with RecommenderClient(_target(running), token=TOKEN) as client:
            assert len(client.recommend(users[0]["user_id"], top_n=2).items) == 2
            assert client.reload().model_version  # Admin takes the same token
        for token, reason in ((None, "missing authorization metadata"), ("wrong", "invalid bearer token")):
            with RecommenderClient(_target(running), token=token, retry=NO_RETRY) as client:
                with pytest.raises(TowerserveError) as err:
                    client.recommend(users[0]["user_id"])
                assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert reason in err.value.details
                assert client.health() == "SERVING"  # health stays open for load balancers


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """Self-signed server certificate for DNS:localhost only (no IP), and a self-signed client certificate."""
    d = tmp_path_factory.mktemp("certs")
    ec = ["-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"]
    _openssl(
        "req",
        *ec,
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.crt",
        cwd=d,
    )
    _openssl(
        "req",
        *ec,
        "-subj",
        "/CN=towerserve test client",
        "-addext",
        "extendedKeyUsage=clientAuth",
        "-keyout",
        "client.key",
        "-out",
        "client.crt",
        cwd=d,
    )
    return d


def test_tls(serving, certs, users):
    user = users[0]["user_id"]
    with running_server(serving, tls_cert=certs / "server.crt", tls_key=certs / "server.key") as running:
        with RecommenderClient(
            f"localhost:{running.port}", tls=TLS(root_certificates=certs / "server.crt")
        ) as c:
            assert len(c.recommend(user, top_n=3).items) == 3
        # The certificate names localhost only; server_name makes 127.0.0.1 acceptable.
        with RecommenderClient(_target(running), tls=TLS(certs / "server.crt", server_name="localhost")) as c:
            assert len(c.recommend(user, top_n=3).items) == 3
        for tls in (TLS(root_certificates=certs / "server.crt"), None):  # wrong name; plaintext to a TLS port
            with (
                RecommenderClient(_target(running), tls=tls, retry=NO_RETRY, timeout=5) as c,
                pytest.raises(TowerserveError) as err,
            ):
                c.recommend(user)
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
        with (
            RecommenderClient(f"localhost:{running.port}", tls=True, retry=NO_RETRY, timeout=5) as c,
            pytest.raises(TowerserveError) as err,
        ):
            c.recommend(user)  # system roots do not trust a self-signed certificate
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(serving, certs, users):
    user = users[0]["user_id"]
    with running_server(
        serving,
        tls_cert=certs / "server.crt",
        tls_key=certs / "server.key",
        tls_client_ca=certs / "client.crt",
    ) as running:
        target = f"localhost:{running.port}"
        signed = TLS(certs / "server.crt", client_cert=certs / "client.crt", client_key=certs / "client.key")
        with RecommenderClient(target, tls=signed) as c:
            assert len(c.recommend(user, top_n=3).items) == 3
        with (
            RecommenderClient(target, tls=TLS(certs / "server.crt"), retry=NO_RETRY, timeout=5) as c,
            pytest.raises(TowerserveError) as err,
        ):
            c.recommend(user)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------------------------------- asyncio


def test_async_client(target, users, items):
    row = users[3]
    categories = sorted({r["category"] for r in items.values()})[:5]
    with RecommenderClient(target) as sync:  # the reference answers
        filtered = sync.recommend(
            row["user_id"], top_n=5, exclude_seen=False, price_min=1.0, categories=categories
        )
        full = _ids(sync.recommend(row["user_id"], top_n=1000, exclude_seen=False))
        tops = [_ids(sync.recommend(u["user_id"], top_n=3)) for u in users[:20]]
        info = sync.model_info()

    async def main():
        async with AsyncRecommenderClient(target, retry=NO_RETRY) as client:
            rec = await client.recommend(
                row["user_id"], top_n=5, exclude_seen=False, price_min=1.0, categories=categories
            )
            assert rec == filtered and len(rec.items) == 5
            assert _ids(await client.recommend(user=_user(row), top_n=1000)) == full
            # One channel, many calls in flight.
            many = await asyncio.gather(*(client.recommend(u["user_id"], top_n=3) for u in users[:20]))
            assert [_ids(r) for r in many] == tops

            scores = await client.score(
                [(row["user_id"], rec.items[0].item_id), (_user(row), rec.items[1].item_id)]
            )
            assert scores.scores == pytest.approx([rec.items[0].score, rec.items[1].score], abs=1e-5)
            assert scores.model_version == info.model_version
            ev = await client.evaluate(protocol="notebook")
            assert (ev.protocol, set(ev.metrics)) == ("notebook", {"notebook_score"})
            inline = await client.evaluate(ks=(5,), interactions=[(row["user_id"], rec.items[0].item_id)])
            assert (inline.split, inline.users) == ("inline", 1)
            assert await client.model_info() == info
            assert await client.health() == "SERVING"

            with pytest.raises(TowerserveError) as err:
                await client.recommend("nobody")
            assert not isinstance(err.value, grpc.RpcError)
            assert (err.value.code, err.value.method) == (grpc.StatusCode.NOT_FOUND, "Recommend")
            assert missing(err.value.details, ("user_id", "'nobody'")) == [], err.value.details
            with pytest.raises(TowerserveError) as err:
                await client.score([(row["user_id"], "nothing")])
            assert (err.value.code, err.value.method) == (grpc.StatusCode.NOT_FOUND, "Score")
            with pytest.raises(ValueError, match="exactly one of user_id or user"):
                await client.recommend(row["user_id"], user=_user(row))
            with pytest.raises(ValueError, match="split must be one of"):
                await client.evaluate(split="train")

    asyncio.run(main())


def test_async_upsert_and_reload(serving, users, items):
    tent = ItemData("item_async_tent", "A two-person tent.", "Waterproof", 150.0, "tent")

    async def main(target):
        async with AsyncRecommenderClient(target) as client:
            done = await client.upsert_items([tent])
            assert (done.inserted, done.updated, done.item_count) == (1, 0, len(items) + 1)
            tents = await client.recommend(users[0]["user_id"], top_n=1000, categories=["tent"])
            assert "item_async_tent" in _ids(tents)
            reloaded = await client.reload()
            assert reloaded.model_version == reloaded.previous_model_version == done.model_version
            assert (await client.model_info()).item_count == len(items)

    with running_server(serving, model="two_tower") as running:
        asyncio.run(main(_target(running)))


def test_async_retries_on_unavailable_only(serving, users):
    registry = CollectorRegistry()

    async def main(target, running):
        async with AsyncRecommenderClient(target, retry=NO_RETRY) as client:
            assert await client.health() == "NOT_SERVING"
            with pytest.raises(TowerserveError) as err:
                await client.recommend(users[0]["user_id"])
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
        loader = _load_later(running)
        try:
            retry = RetryPolicy(attempts=20, initial_backoff=0.05, max_backoff=0.2)
            async with AsyncRecommenderClient(target, retry=retry) as client:
                assert len((await client.recommend(users[0]["user_id"], top_n=3)).items) == 3
        finally:
            loader.join()
        async with AsyncRecommenderClient(
            target, retry=RetryPolicy(attempts=5, initial_backoff=5.0)
        ) as client:
            t0 = time.monotonic()
            with pytest.raises(TowerserveError) as err:
                await client.recommend("nobody")
            assert err.value.code == grpc.StatusCode.NOT_FOUND and time.monotonic() - t0 < 1.0

    with running_server(serving, load=False, registry=registry) as running:
        asyncio.run(main(_target(running), running))
    assert _calls(registry, "UNAVAILABLE", 3) >= 3 and _calls(registry, "OK") == 1
    assert _calls(registry, "NOT_FOUND") == 1


# ------------------------------------------------------------------------------------ client-only install


_CALL = """
import sys
from towerserve.clients.client import AsyncRecommenderClient, RecommenderClient, TowerserveError
with RecommenderClient(sys.argv[1]) as client:
    print(len(client.recommend(sys.argv[2], top_n=3).items))
    try:
        client.recommend("nobody")
    except TowerserveError as err:
        print(err.code.name)
"""
_HEAVY = ("tensorflow", "torch", "onnxruntime", "numpy", "keras", "transformers")
_PROBE = (
    "import towerserve.clients.client as c; import importlib.util; "
    f"print([m for m in {_HEAVY!r} if importlib.util.find_spec(m)])"
)


def _project_copy(dst: Path) -> Path:
    """The files setuptools packages, copied out of the checkout: building in place would write build/
    and *.egg-info into it (and race with other test sessions doing the same)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = set(meta["tool"]["setuptools"]["package-dir"].values())
    for name in {"pyproject.toml", meta["project"]["readme"]}:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_bytes((ROOT / name).read_bytes())
    for folder in folders:
        shutil.copytree(ROOT / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def _local_index(dst: Path, names: tuple[str, ...]) -> Path:
    """A folder of wheels repacked from this interpreter's installed distributions ``names`` and what
    they require (their files and dist-info as pip installed them; no bytecode, no installer
    records), so that installing the client needs no package index: the check runs the same offline."""
    import zipfile
    from importlib import metadata

    from packaging.requirements import Requirement

    dst.mkdir(parents=True, exist_ok=True)
    todo, done = list(names), set()
    while todo:  # the distributions and everything they require, here
        name = todo.pop().lower().replace("_", "-")
        if name in done:
            continue
        done.add(name)
        dist = metadata.distribution(name)
        for r in map(Requirement, dist.requires or ()):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
        tag = next(
            x.split(":", 1)[1].strip() for x in dist.read_text("WHEEL").splitlines() if x.startswith("Tag:")
        )
        wheel = dst / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-{tag}.whl"
        with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
            for f in dist.files or ():
                path = Path(dist.locate_file(f))
                skip = f.name in ("INSTALLER", "REQUESTED", "direct_url.json") or "__pycache__" in f.parts
                if not skip and f.parts[0] != ".." and path.is_file():
                    z.write(path, f.as_posix())
    return dst


def test_client_only_install(serving, tmp_path, users):
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for var in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(var, None)
    venv = tmp_path / "venv"
    # Without --system-site-packages: nothing of the project venv leaks in.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    python = venv / "bin" / "python"
    src = _project_copy(tmp_path / "src")
    # Offline: the client's dependencies and the build backend come from a local wheel index.
    index = _local_index(tmp_path / "wheels", ("grpcio", "protobuf", "setuptools"))
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(index), str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, f"pip install failed:\n{done.stderr[-3000:]}"

    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, env=env, timeout=60)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.strip() == "[]"

    # Every command is listed; one whose extra is missing says which, in one line, and exits 2.
    towerserve = str(venv / "bin" / "towerserve")
    listed = subprocess.run([towerserve, "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert listed.returncode == 0, listed.stderr[-3000:]
    for command in ("generate", "baselines", "train", "export", "serve", "recommend", "info", "loadtest"):
        assert f"\n    {command} " in listed.stdout, command
    for command, extra in (
        ("train", "train"),
        ("serve", "server"),
        ("export", "train"),
        ("generate", "train"),
        ("baselines", "train"),
    ):
        done = subprocess.run([towerserve, command], capture_output=True, text=True, env=env, timeout=60)
        line = f"towerserve {command} needs the '{extra}' extra: pip install 'towerserve[{extra}]'\n"
        assert (done.returncode, done.stdout, done.stderr) == (2, "", line)

    with running_server(serving) as running:
        call = subprocess.run(
            [str(python), "-c", _CALL, _target(running), users[0]["user_id"]],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=tmp_path,
        )
        assert call.returncode == 0, call.stderr[-3000:]
        assert call.stdout.split() == ["3", "NOT_FOUND"]
        # The console script comes with the client install.
        cli = subprocess.run(
            [str(venv / "bin" / "towerserve"), "info", "--json", "--target", _target(running)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            cwd=tmp_path,
        )
        assert cli.returncode == 0, cli.stderr[-3000:]
        assert '"health": "SERVING"' in cli.stdout


def test_history_goes_into_the_requests_and_comes_back_typed():
    # No server needed: what the client puts on the wire, and what it makes of the replies.
    from towerserve.clients import convert
    from towerserve.v1 import recommender_pb2 as pb

    req = convert.recommend_request(User(30, "x", history=("a", "b")), 5, True, None, None, (), ())
    assert list(req.history) == ["a", "b"] and req.WhichOneof("user_ref") == "user"
    req = convert.recommend_request("u1", 5, True, None, None, (), (), ["c"])
    assert list(req.history) == ["c"] and req.user_id == "u1"
    assert list(convert.recommend_request("u1", 5, True, None, None, (), ()).history) == []
    pairs = convert.score_request(
        [("u1", "i1"), (User(30, "x"), "i2", ["a"]), (User(30, "x", history=["b"]), "i3")]
    )
    assert [list(p.history) for p in pairs.pairs] == [[], ["a"], ["b"]]
    with pytest.raises(ValueError, match="pairs\\[0\\]"):
        convert.score_request([("u1",)])
    with pytest.raises(ValueError, match="history"):
        convert.recommend_request(User(30, "x", history=["a"]), 5, True, None, None, (), (), ["b"])
    with pytest.raises(TypeError, match="str"):
        convert.recommend_request("u1", 5, True, None, None, (), (), "abc")
    assert convert.recommendation(pb.RecommendResponse(history_used=3)).history_used == 3
    scores = convert.scores(pb.ScoreResponse(scores=[0.5, 0.25], model_version="m", history_used=[2, 0]))
    assert (scores.scores, scores.model_version, scores.history_used) == ([0.5, 0.25], "m", [2, 0])
    assert convert.model_info(pb.GetModelInfoResponse(max_history=100)).max_history == 100
