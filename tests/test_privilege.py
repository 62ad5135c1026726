"""Least privilege on a real server: each token's right (read < write < admin), Admin.Reload bounded by
its bundle root and by its deadline, TLS without client certificates counted as open, and the metrics
endpoint on loopback unless told otherwise."""

from __future__ import annotations

import logging
import re
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pipeline
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pipeline import server_and_channel
from prometheus_client import CollectorRegistry

from towerserve.clients.cli import build_parser
from towerserve.server.api.app import create_server, start_metrics
from towerserve.server.core.access import RIGHTS, Right, needed
from towerserve.server.core.config import ServerConfig, is_loopback
from towerserve.server.core.rpcs import RPCS
from towerserve.server.engine.engine import Engine
from towerserve.v1 import recommender_pb2 as pb
from towerserve.v1 import recommender_pb2_grpc

READ, WRITE, ADMIN = "r3ad-only-secret", "wr1te-secret", "adm1n-secret"
OK, DENIED, UNAUTHENTICATED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
)
REFUSED = grpc.StatusCode.FAILED_PRECONDITION
NOT_A_BUNDLE = (
    "reload refused, still serving the previous model: the requested bundle is not under the bundle "
    "root or is not a valid bundle"
)


def _auth(token: str | None):
    return (("authorization", f"Bearer {token}"),) if token else None


def _status(call: Callable, *args, **kw) -> tuple[grpc.StatusCode, str]:
    """OK and "", or the code and details the call failed with."""
    try:
        call(*args, **kw)
    except grpc.RpcError as err:
        return err.code(), err.details()
    return OK, ""


def _wait_for(predicate: Callable[[], bool], limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------ rights


def test_every_rpc_has_its_right_and_health_needs_none():
    assert set(RIGHTS) == set(RPCS), "a new RPC needs a decision in server/core/access.py: RIGHTS"
    by_right = {r: {name for name, need in RIGHTS.items() if need == r} for r in Right}
    assert by_right == {
        Right.READ: {"Recommend", "Score", "Evaluate", "GetModelInfo"},
        Right.WRITE: {"UpsertItems", "DeleteItems", "RecordInteractions"},
        Right.ADMIN: {"Reload"},
    }
    assert all(needed(rpc.path) == RIGHTS[name] for name, rpc in RPCS.items())
    assert needed("/grpc.health.v1.Health/Check") is None and needed("/grpc.health.v1.Health/Watch") is None
    assert needed("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == Right.READ
    assert needed("/towerserve.v1.Admin/NotYetDecided") == Right.ADMIN  # closed until someone decides
    assert Right.READ < Right.WRITE < Right.ADMIN


def test_each_right_takes_its_token_from_a_flag_a_file_or_the_environment(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for name, right in (
        ("read_token", Right.READ),
        ("write_token", Right.WRITE),
        ("admin_token", Right.ADMIN),
        ("token", Right.ADMIN),  # the single token of old keeps every right
    ):
        env, flag = "TOWERSERVE_" + name.upper(), "--" + name.replace("_", "-")
        secret = f"{name}-s3cret"
        path = tmp_path / name
        path.write_text(f"  {secret}\n")
        assert ServerConfig(**{name: secret}).grants() == [(secret, right)]
        assert secret not in repr(ServerConfig(**{name: secret}))
        assert ServerConfig.from_env({env: secret}).grants() == [(secret, right)]
        from_file = ServerConfig.from_env({env + "_FILE": str(path)}).with_token_file()
        assert from_file.grants() == [(secret, right)] and getattr(from_file, name + "_file") is None
        # A flag for one source replaces the environment's other, as for --token.
        assert getattr(ServerConfig.from_env({env: "env"}, **{name + "_file": path}), name) is None
        with pytest.raises(ValueError, match=f"give {flag} or {flag}-file .*not both"):
            ServerConfig(**{name: "a", name + "_file": path}).validate()
        with pytest.raises(ValueError, match=re.escape(f"{flag}-file {empty} is empty")):
            ServerConfig(**{name + "_file": empty}).with_token_file()
    args = build_parser().parse_args(
        [
            "serve",
            "--read-token-file",
            "r",
            "--write-token",
            "w",
            "--admin-token-file",
            "a",
            "--bundle-root",
            "b",
        ]
    )
    assert (args.read_token_file, args.write_token, args.admin_token_file, args.bundle_root) == (
        Path("r"),
        "w",
        Path("a"),
        Path("b"),
    )


@pytest.fixture(scope="module")
def rights(serving):
    """A loaded server with one token per right (its bundle root: the parent of ``serving``)."""
    with server_and_channel(serving, read_token=READ, write_token=WRITE, admin_token=ADMIN) as (
        running,
        channel,
    ):
        yield running, channel


def _calls(channel, users, items) -> dict[str, Callable]:
    """One call per RPC, each taking the metadata to send and returning its status."""
    stub, admin = recommender_pb2_grpc.RecommenderStub(channel), recommender_pb2_grpc.AdminStub(channel)
    user = users[0]["user_id"]
    item_id, row = next(iter(items.items()))
    known = pb.NewItem(  # an exported item's own attributes: an update, and no text to encode
        item_id=item_id,
        description=row["description"],
        features=row["features"],
        price=float(row["price"]),
        category=row["category"],
    )
    requests = {
        "Recommend": (stub.Recommend, pb.RecommendRequest(user_id=user, top_n=3)),
        "Score": (stub.Score, pb.ScoreRequest(pairs=[pb.ScorePair(user_id=user, item_id=item_id)])),
        "Evaluate": (stub.Evaluate, pb.EvaluateRequest(ks=[5])),
        "GetModelInfo": (stub.GetModelInfo, pb.GetModelInfoRequest()),
        "UpsertItems": (stub.UpsertItems, pb.UpsertItemsRequest(items=[known])),
        "DeleteItems": (stub.DeleteItems, pb.DeleteItemsRequest(item_ids=["no_such_item_for_privilege"])),
        "RecordInteractions": (
            stub.RecordInteractions,
            pb.RecordInteractionsRequest(events=[pb.InteractionEvent(user_id=user, item_id=item_id)]),
        ),
        "Reload": (admin.Reload, pb.ReloadRequest()),  # the served folder again
    }
    return {
        name: (lambda md, call=call, req=req: _status(call, req, metadata=md, timeout=120))
        for name, (call, req) in requests.items()
    }


def test_each_token_calls_what_its_right_allows(rights, users, items):
    running, channel = rights
    calls = _calls(channel, users, items)
    assert set(calls) == set(RPCS)
    for token, right in ((READ, Right.READ), (WRITE, Right.WRITE), (ADMIN, Right.ADMIN)):
        for name, call in calls.items():
            code, details = call(_auth(token))
            if RIGHTS[name] <= right:
                assert code == OK, (name, right, code, details)
            else:  # known token, right too low: PERMISSION_DENIED naming both rights, never the token
                assert code == DENIED, (name, right, code, details)
                assert f"needs the {RIGHTS[name].label} right" in details, details
                assert f"grants {right.label} only" in details and token not in details, details
    # No token, or one the server does not know: UNAUTHENTICATED, whatever the RPC.
    for metadata, reason in (
        (None, "missing authorization metadata"),
        (_auth("guess"), "invalid bearer token"),
    ):
        for name in ("Recommend", "UpsertItems", "Reload"):
            code, details = calls[name](metadata)
            assert code == UNAUTHENTICATED and reason in details, (name, code, details)
    # Reflection is a read; health needs no token at all (load balancers carry none).
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    listing = [reflection_pb2.ServerReflectionRequest(list_services="")]
    assert list(reflection.ServerReflectionInfo(iter(listing), metadata=_auth(READ), timeout=30))
    code, _ = _status(lambda: list(reflection.ServerReflectionInfo(iter(listing), timeout=30)))
    assert code == UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    registry = running.metrics.registry
    labels = {"method": "/towerserve.v1.Admin/Reload", "code": "PERMISSION_DENIED"}
    _wait_for(lambda: registry.get_sample_value("towerserve_requests_total", labels) == 2.0, 10)
    _wait_for(lambda: running.access.in_use() == {"rpcs": 0, "probes": 0, "watches": 0}, 10)


def test_two_rights_may_share_a_secret_on_purpose(serving, users, items):
    """The same secret as read and write token: whoever holds it has the higher right."""
    with server_and_channel(serving, read_token=WRITE, write_token=WRITE) as (_, channel):
        calls = _calls(channel, users, items)
        assert calls["UpsertItems"](_auth(WRITE))[0] == OK
        assert calls["Reload"](_auth(WRITE))[0] == DENIED


# ------------------------------------------------------------------------------- the bundle root


def test_reload_outside_the_bundle_root_is_refused_naming_no_path(rights, serving, tmp_path):
    running, channel = rights
    admin = recommender_pb2_grpc.AdminStub(channel)
    outside = pipeline.copy_serving(serving, tmp_path / "outside")  # a valid bundle, but not under the root
    before = running.holder.get()
    for target in (
        str(outside),
        "/etc",
        "/no/such/folder",
        "../../..",  # relative to the root
        str(serving / ".." / ".." / ".."),
        str(serving / "manifest.json"),  # under the root, but a file
        str(serving.parent / "missing"),  # under the root, but missing: the same words as outside it
        "nul\x00byte",
    ):
        code, details = _status(admin.Reload, pb.ReloadRequest(artifacts=target), metadata=_auth(ADMIN))
        assert (code, details) == (REFUSED, NOT_A_BUNDLE), (target, code, details)
    assert running.holder.get() is before and running.holder.artifacts == serving


def test_reload_resolves_links_and_dots_before_it_checks_the_root(serving, tmp_path):
    root = tmp_path / "bundles"
    root.mkdir()
    inside = pipeline.copy_serving(serving, root / "v2")
    outside = pipeline.copy_serving(serving, tmp_path / "elsewhere")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(inside, target_is_directory=True)
    with server_and_channel(serving, bundle_root=root, admin_token=ADMIN) as (running, channel):
        admin = recommender_pb2_grpc.AdminStub(channel)
        before = running.holder.get()
        for target in (
            "escape",
            str(root / "escape"),
            str(root / "v2" / ".." / ".." / "elsewhere"),
            "../elsewhere",
        ):
            code, details = _status(admin.Reload, pb.ReloadRequest(artifacts=target), metadata=_auth(ADMIN))
            assert (code, details) == (REFUSED, NOT_A_BUNDLE), (target, code, details)
        assert running.holder.get() is before
        # A link that stays inside is followed: the real folder is loaded and becomes SIGHUP's default.
        admin.Reload(pb.ReloadRequest(artifacts="alias"), metadata=_auth(ADMIN), timeout=120)
        assert running.holder.get().root == inside.resolve()
        assert running.holder.artifacts == inside.resolve()


def test_bundle_root_defaults_to_the_parent_of_artifacts_and_must_be_a_folder(serving, tmp_path):
    with server_and_channel(serving, load=False) as (running, _):
        assert running.config.bundle_root == serving.resolve().parent
    with pytest.raises(ValueError, match="--bundle-root .* is not a folder"):
        create_server(
            ServerConfig(artifacts=serving, port=0, bundle_root=tmp_path / "nope"),
            metrics_registry=CollectorRegistry(),
        )


# -------------------------------------------------------------------------------------- deadline


def test_a_reload_past_its_deadline_swaps_nothing(serving, tmp_path, caplog, monkeypatch):
    """The load outlives the client's deadline (warm-up slowed to make sure): the new engine is built,
    but the check just before the swap refuses it, and the old one keeps serving."""
    caplog.set_level(logging.WARNING, logger="towerserve")
    pipeline.copy_serving(serving, tmp_path / "v2")
    warm_up = Engine.warm_up

    def slow_warm_up(engine):
        time.sleep(1.5)
        return warm_up(engine)

    with server_and_channel(serving, bundle_root=tmp_path) as (running, channel):
        before = running.holder.get()
        monkeypatch.setattr(Engine, "warm_up", slow_warm_up)
        admin = recommender_pb2_grpc.AdminStub(channel)
        code, _ = _status(admin.Reload, pb.ReloadRequest(artifacts="v2"), timeout=0.5)
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        _wait_for(lambda: "reload abandoned before the swap" in caplog.text)
        assert running.holder.get() is before and running.holder.artifacts == serving
        # With time enough, the same folder loads: the deadline refused it, not the folder.
        admin.Reload(pb.ReloadRequest(artifacts="v2"), timeout=120)
        assert running.holder.get().root == (tmp_path / "v2").resolve()


# ------------------------------------------------------------------------------ TLS and metrics


def test_tls_without_client_certificates_or_a_token_is_open(tmp_path):
    tls = {"tls_cert": tmp_path / "server.crt", "tls_key": tmp_path / "server.key"}
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0,.*--tls-client-ca"):
        ServerConfig(host="0.0.0.0", **tls).validate()
    with pytest.raises(ValueError, match="refusing to listen"):
        create_server(ServerConfig(host="[::]", port=0, **tls))  # refused before anything is read or bound
    for enough in ({"insecure": True}, {"tls_client_ca": tmp_path / "ca.crt"}, {"read_token": "r"}):
        ServerConfig(host="0.0.0.0", **tls, **enough).validate()
    ServerConfig(host="127.0.0.1", **tls).validate()  # loopback needs nothing


def test_the_metrics_endpoint_listens_on_loopback_unless_told_otherwise():
    assert is_loopback(ServerConfig().metrics_host)
    assert is_loopback(ServerConfig.from_env({}).metrics_host)
    assert ServerConfig.from_env({"TOWERSERVE_METRICS_HOST": "[::]"}).metrics_host == "[::]"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = CollectorRegistry()
    server = start_metrics(ServerConfig(metrics_port=port), registry)
    try:
        assert server.server_address[0] == "127.0.0.1"
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        server.shutdown()
        server.server_close()
    server = start_metrics(ServerConfig(metrics_port=port, metrics_host="[::]"), registry)
    try:
        assert server.server_address[0] == "::"  # every interface, asked for in --host's own form
    finally:
        server.shutdown()
        server.server_close()
