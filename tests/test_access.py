"""Access to a real server: admission pools (probes cannot starve clients), health requests that do not
parse, and safe defaults (loopback host, no open non-loopback port without --insecure, --token-file)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pipeline import running_server
from prometheus_client import CollectorRegistry

from towerserve.server.api.app import ServerConfig, create_server
from towerserve.server.core.config import is_loopback
from towerserve.v1 import recommender_pb2 as pb
from towerserve.v1 import recommender_pb2_grpc

TOKEN = "s3cret-access"
GOOD = (("authorization", f"Bearer {TOKEN}"),)
BAD = (("authorization", "Bearer wrong"),)
CHECK, WATCH = "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


@contextlib.contextmanager
def _server(**overrides) -> Iterator:
    """A real server with no model loaded (health NOT_SERVING; admission and auth need none), plus a
    channel and the server's metrics registry: yields (running, channel, registry)."""
    registry = CollectorRegistry()
    with (
        running_server(None, load=False, registry=registry, **overrides) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield running, channel, registry


def _count(registry, method: str, code: str, want: float | None = None, limit: float = 10.0) -> float:
    """The calls counted for ``method`` and ``code``; with ``want``, waits until that many are (the
    server counts a call after its status went out, so a client may look a moment too early)."""
    deadline = time.monotonic() + limit
    while True:
        got = registry.get_sample_value("towerserve_requests_total", {"method": method, "code": code}) or 0.0
        if want is None or got >= want or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def _watch(channel: grpc.Channel, metadata=None):
    """An open Watch stream whose first answer has arrived, so the server holds its slots."""
    stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), metadata=metadata)
    next(stream)
    return stream


def _refused(call, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        result = call(*args, **kw)
        if hasattr(result, "__next__"):  # a stream fails on its first read
            next(result)
    return err.value


def _list_services(channel: grpc.Channel, metadata=None) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata, timeout=10
    )
    return {s.name for r in replies for s in r.list_services_response.service}


def _settled(running, want: dict[str, int], limit: float = 10.0) -> None:
    """Waits until the server's slots in use are ``want``: a client's cancel reaches it asynchronously."""
    deadline = time.monotonic() + limit
    while running.access.in_use() != want:
        assert time.monotonic() < deadline, f"slots in use {running.access.in_use()}, expected {want}"
        time.sleep(0.02)


IDLE = {"rpcs": 0, "probes": 0, "watches": 0}


# -------------------------------------------------------------------------------------- admission


def test_watch_streams_cannot_take_the_slots_of_checks_or_clients():
    with _server(token=TOKEN, max_concurrent_rpcs=1, max_probe_rpcs=3, max_watch_streams=2) as (
        running,
        channel,
        registry,
    ):
        streams = [_watch(channel) for _ in range(2)]  # no token: health is open
        _settled(running, {"rpcs": 0, "probes": 2, "watches": 2})
        err = _refused(health_pb2_grpc.HealthStub(channel).Watch, health_pb2.HealthCheckRequest())
        assert err.code() == EXHAUSTED and "--max-watch-streams" in err.details(), err.details()
        # The probe pool keeps room for Checks, and authenticated calls have their own pool.
        assert (
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == NOT_SERVING
        )
        assert "towerserve.v1.Recommender" in _list_services(channel, GOOD)
        assert _count(registry, WATCH, "RESOURCE_EXHAUSTED", 1) == 1.0
        # A client's cancel gives the slot back: Watch works again.
        streams.pop().cancel()
        _settled(running, {"rpcs": 0, "probes": 1, "watches": 1})
        streams.append(_watch(channel))
        for stream in streams:
            stream.cancel()
        _settled(running, IDLE)
        assert _count(registry, WATCH, "CANCELLED", 3) == 3.0


def test_calls_refused_for_their_token_count_as_probes():
    with _server(token=TOKEN, max_concurrent_rpcs=1, max_probe_rpcs=2, max_watch_streams=2) as (
        running,
        channel,
        registry,
    ):
        streams = [_watch(channel) for _ in range(2)]  # every probe slot
        check = _refused(health_pb2_grpc.HealthStub(channel).Check, health_pb2.HealthCheckRequest())
        assert check.code() == EXHAUSTED and "--max-probe-rpcs" in check.details(), check.details()
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        for metadata in (None, BAD):
            err = _refused(stub.GetModelInfo, pb.GetModelInfoRequest(), metadata=metadata)
            assert err.code() == EXHAUSTED and "--max-probe-rpcs" in err.details(), err.details()
        # The right token is not a probe: it passes (UNAVAILABLE here only because no model is loaded).
        err = _refused(stub.GetModelInfo, pb.GetModelInfoRequest(), metadata=GOOD)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        for stream in streams:
            stream.cancel()
        _settled(running, IDLE)
        err = _refused(stub.GetModelInfo, pb.GetModelInfoRequest(), metadata=BAD)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        method = "/towerserve.v1.Recommender/GetModelInfo"
        assert _count(registry, method, "RESOURCE_EXHAUSTED", 2) == 2.0
        assert _count(registry, method, "UNAUTHENTICATED", 1) == 1.0
        assert _count(registry, CHECK, "RESOURCE_EXHAUSTED", 1) == 1.0
        _settled(running, IDLE)


def test_the_client_limit_names_its_flag_and_spares_health():
    """An authenticated reflection stream held open takes the one client slot."""
    release = threading.Event()

    def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")
        release.wait(30)

    with _server(token=TOKEN, max_concurrent_rpcs=1) as (running, channel, registry):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        held = stub.ServerReflectionInfo(requests(), metadata=GOOD, timeout=30)
        try:
            assert next(held).list_services_response.service
            _settled(running, {"rpcs": 1, "probes": 0, "watches": 0})
            err = _refused(_list_services, channel, GOOD)
            assert err.code() == EXHAUSTED, err.details()
            assert (
                "Concurrent RPC limit exceeded" in err.details() and "--max-concurrent-rpcs" in err.details()
            )
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == NOT_SERVING
            _watch(channel).cancel()
        finally:
            release.set()
        assert list(held) == []  # the client ended its side: the stream closes and gives its slot back
        _settled(running, IDLE)
        assert "towerserve.v1.Admin" in _list_services(channel, GOOD)


def test_probes_cannot_starve_an_authenticated_recommend(serving, users):
    """The issue's case: with a limit of 3, token-less Watch streams made the next authenticated RPC
    fail RESOURCE_EXHAUSTED, because gRPC's own limit counted them."""
    user = users[0]["user_id"]
    with (
        running_server(serving, token=TOKEN, max_concurrent_rpcs=3, max_watch_streams=3) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        streams = [_watch(channel) for _ in range(3)]
        extra = _refused(health_pb2_grpc.HealthStub(channel).Watch, health_pb2.HealthCheckRequest())
        assert extra.code() == EXHAUSTED
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        request = pb.RecommendRequest(user_id=user, top_n=3)
        assert len(stub.Recommend(request, metadata=GOOD).items) == 3
        assert _refused(stub.Recommend, request).code() == grpc.StatusCode.UNAUTHENTICATED
        for stream in streams:
            stream.cancel()
        _settled(running, IDLE)
        again = _watch(channel)
        assert running.access.in_use()["watches"] == 1
        again.cancel()


# ------------------------------------------------------------------------------- health garbage


def test_health_requests_that_do_not_parse_are_invalid_argument():
    with _server() as (_, channel, registry):
        check = channel.unary_unary(CHECK)  # no serializers: raw bytes both ways
        err = _refused(check, b"\xfe", timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert "grpc.health.v1.HealthCheckRequest" in err.details()
        err = _refused(channel.unary_stream(WATCH), b"\xfe", timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        # The stock servicer still answers what parses: the status, and NOT_FOUND for an unknown service.
        raw = check(health_pb2.HealthCheckRequest(service="").SerializeToString(), timeout=10)
        assert health_pb2.HealthCheckResponse.FromString(raw).status == NOT_SERVING
        unknown = _refused(check, health_pb2.HealthCheckRequest(service="nope").SerializeToString())
        assert unknown.code() == grpc.StatusCode.NOT_FOUND
        assert _count(registry, CHECK, "INVALID_ARGUMENT", 1) == 1.0


# --------------------------------------------------------------------------------- safe defaults


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("[::]", False),
        ("10.0.0.5", False),
        ("example.internal", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_the_default_host_is_loopback():
    assert is_loopback(ServerConfig().host)
    assert is_loopback(ServerConfig.from_env({}).host)


def test_an_open_non_loopback_bind_is_refused_unless_insecure(tmp_path):
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0.*--insecure"):
        ServerConfig(host="0.0.0.0").validate()
    with pytest.raises(ValueError, match=r"refusing to listen on \[::\]"):
        ServerConfig.from_env({"TOWERSERVE_HOST": "[::]"})
    with pytest.raises(ValueError, match="refusing to listen"):
        create_server(ServerConfig(host="0.0.0.0", port=0))  # refused before anything binds
    (tmp_path / "token").write_text("t0ken\n")
    tls = {"tls_cert": tmp_path / "c.pem", "tls_key": tmp_path / "k.pem"}
    for allowed in (
        {"insecure": True},
        {"token": "t"},
        {"token_file": tmp_path / "token"},
        {"read_token": "r"},
        {"admin_token_file": tmp_path / "token"},
        {**tls, "tls_client_ca": tmp_path / "ca.pem"},  # mutual TLS authenticates the caller
    ):
        ServerConfig(host="0.0.0.0", **allowed).validate()
    # TLS alone encrypts but lets anyone call: it is as open as plaintext (tests/test_privilege.py).
    with pytest.raises(ValueError, match="refusing to listen"):
        ServerConfig(host="0.0.0.0", **tls).validate()
    assert ServerConfig.from_env({"TOWERSERVE_HOST": "[::]", "TOWERSERVE_INSECURE": "1"}).insecure


def test_token_file_is_read_stripped_and_checked(tmp_path):
    good = tmp_path / "token"
    good.write_text(f"  {TOKEN}\n")
    assert ServerConfig(token_file=good).with_token_file().token == TOKEN
    for content, message in (("\n \n", "is empty"), ("two words", "one word"), ("a\nb\n", "one word")):
        path = tmp_path / "bad"
        path.write_text(content)
        with pytest.raises(ValueError, match=message):
            ServerConfig(token_file=path).with_token_file()
    with pytest.raises(ValueError, match="cannot read it"):
        ServerConfig(token_file=tmp_path / "missing").with_token_file()
    with pytest.raises(ValueError, match="not both"):
        ServerConfig(token="t", token_file=good).validate()
    # From the environment; a flag for one source replaces the environment's other.
    assert ServerConfig.from_env({"TOWERSERVE_TOKEN_FILE": str(good)}).token_file == good
    cfg = ServerConfig.from_env({"TOWERSERVE_TOKEN": "from-env"}, token_file=good)
    assert (cfg.token, cfg.token_file) == (None, good)
    assert ServerConfig.from_env({"TOWERSERVE_TOKEN_FILE": str(good)}, token="flag").token_file is None


def test_a_server_on_every_interface_reads_its_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    running = create_server(
        ServerConfig(host="0.0.0.0", port=0, token_file=path), metrics_registry=CollectorRegistry()
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            assert "towerserve.v1.Recommender" in _list_services(channel, GOOD)
            for metadata in (None, BAD):
                assert _refused(_list_services, channel, metadata).code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop(0)


# ------------------------------------------------------------------------------- the real command


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "towerserve.clients.cli", "serve", *args]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_refuses_an_open_port_on_every_interface(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for flags, message in (
        (("--host", "0.0.0.0"), "towerserve serve: error: refusing to listen on 0.0.0.0"),
        (("--token-file", str(empty)), f"towerserve serve: error: --token-file {empty} is empty"),
    ):
        cmd = _cli("--artifacts", str(tmp_path), "--port", "0", *flags)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_clean_env())
        assert done.returncode == 2 and message in done.stderr, done.stderr[-3000:]


@contextlib.contextmanager
def _serving_process(serving: Path, tmp_path: Path, *extra: str) -> Iterator[tuple[int, Path]]:
    """`towerserve serve` on every interface until SERVING; SIGTERM on exit (must exit 0)."""
    port, log = _free_port(), tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            _cli(
                "--artifacts", str(serving), "--host", "0.0.0.0", "--port", str(port), "--grace", "1", *extra
            ),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
        )
    try:
        deadline = time.monotonic() + 120
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                with contextlib.suppress(grpc.RpcError):
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == SERVING:
                        break
                time.sleep(0.1)
        yield port, log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_cli_insecure_serves_every_interface_with_a_loud_warning(serving, users, tmp_path):
    with (
        _serving_process(serving, tmp_path, "--insecure") as (port, log),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        assert len(stub.Recommend(pb.RecommendRequest(user_id=users[0]["user_id"], top_n=3)).items) == 3
    text = log.read_text()
    assert "WARNING" in text and "INSECURE (--insecure): listening on 0.0.0.0" in text, text[-3000:]
    assert "no --state-dir: items changed by UpsertItems/DeleteItems will NOT survive a restart" in text


def test_cli_token_file_end_to_end(serving, users, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    request = pb.RecommendRequest(user_id=users[0]["user_id"], top_n=3)
    with (
        _serving_process(
            serving, tmp_path, "--token-file", str(path), "--state-dir", str(tmp_path / "state")
        ) as (port, log),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        assert len(stub.Recommend(request, metadata=GOOD).items) == 3
        assert _refused(stub.Recommend, request).code() == grpc.StatusCode.UNAUTHENTICATED
    text = log.read_text()
    assert "token required" in text and "no token configured" not in text and "INSECURE" not in text, text[
        -3000:
    ]
    assert TOKEN not in text
    assert f"catalogue journal sqlite:///{tmp_path / 'state'}" in text and "NOT survive" not in text
