"""Stopping and refusing: SIGTERM with slow calls in flight, and Reload of a bundle corrupt inside.

tests/test_server_ops.py covers a quiet SIGTERM (exit 0) and a Reload refused because a file's
sha256 no longer matches the manifest. Here: a real `towerserve serve` process drains Evaluates that
are still running when SIGTERM arrives, while health turns NOT_SERVING and new calls are refused;
and Reload of bundles whose files are broken *and* whose manifest was rehashed to match (a broken
export, or a hand edit), so only loading the file can tell: still FAILED_PRECONDITION naming the
file, and the old model keeps serving.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pipeline
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pipeline import server_and_channel

from towerserve.v1 import recommender_pb2 as pb
from towerserve.v1 import recommender_pb2_grpc

SLOW_CALLS = 4
FRESH = [("grpc.use_local_subchannel_pool", 1)]  # a new connection, as a new client would open


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_flight(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    line = next(x for x in text.splitlines() if x.startswith("towerserve_in_flight_requests "))
    return float(line.split()[1])


def _wait(predicate, what: str, proc: subprocess.Popen, log: Path, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert proc.poll() is None, f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} not within {limit} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _check(port: int, timeout: float = 2.0) -> str:
    """Health Check on a new connection: SERVING, NOT_SERVING, or the status code that refused it."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=FRESH) as ch:
        try:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as err:
            return err.code().name


def _slow_evaluate(users: list[dict], items: dict) -> bytes:
    """Every (user, item) pair of the tiny catalogue, repeated to the inline limit: ~0.5-1 s each.
    Serialized once, so the calls reach the server together (not one serialization apart)."""
    pairs = [pb.Interaction(user_id=u["user_id"], item_id=i) for u in users for i in items]
    request = pb.EvaluateRequest(ks=[5, 10, 20], interactions=[pairs[j % len(pairs)] for j in range(200_000)])
    return request.SerializeToString()


def test_sigterm_drains_slow_calls_while_health_says_not_serving_and_new_calls_are_refused(
    serving, users, items, tmp_path
):
    port, metrics_port, log = _free_port(), _free_port(), tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "towerserve.clients.cli", "serve", "--artifacts", str(serving)]
    # One worker thread: the Evaluates run one after another, so the last ones are surely still
    # running (or queued, which is in flight too) seconds after SIGTERM.
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port)]
    cmd += ["--threads", "1", "--grace", "60"]
    request = _slow_evaluate(users, items)
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        _wait(lambda: _check(port) == "SERVING", "SERVING", proc, log)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        watched: list[tuple[float, str]] = []

        def watch() -> None:  # the stream a load balancer keeps open
            stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            for reply in stream:
                watched.append(
                    (time.monotonic(), health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                )
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    stream.cancel()  # an open stream is in flight too: the drain would wait for it
                    return

        evaluate = channel.unary_unary(
            "/towerserve.v1.Recommender/Evaluate", response_deserializer=pb.EvaluateResponse.FromString
        )
        finished: list[tuple[float, object]] = []

        def slow() -> None:
            try:
                reply = evaluate(request, timeout=120)
                finished.append((time.monotonic(), reply))
            except grpc.RpcError as err:
                finished.append((time.monotonic(), f"{err.code().name}: {err.details()}"))

        threads = [threading.Thread(target=watch)] + [
            threading.Thread(target=slow) for _ in range(SLOW_CALLS)
        ]
        for t in threads:
            t.start()
        _wait(lambda: watched and _in_flight(metrics_port) >= SLOW_CALLS, "Evaluates in flight", proc, log)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)

        # New connections, as a load balancer's probes and new clients would open them.
        probes: list[tuple[float, str]] = []
        while len(finished) < SLOW_CALLS and proc.poll() is None:
            probes.append((time.monotonic(), _check(port)))
            time.sleep(0.02)
        for t in threads:
            t.join(120)
        code = proc.wait(60)
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert text.index("draining") < text.index("stopped"), text[-3000:]

    # Every slow call ran to the end, and at least one ended after SIGTERM: the drain waited for it.
    assert [type(r) for _, r in finished] == [pb.EvaluateResponse] * SLOW_CALLS, finished
    assert all(r.users > 0 and "ndcg@10" in r.metrics for _, r in finished)
    last_done = max(t for t, _ in finished)
    assert last_done > sent + 0.2, (sent, [t for t, _ in finished])

    # Health said NOT_SERVING on the open stream while the calls were still draining.
    assert [s for _, s in watched] == ["SERVING", "NOT_SERVING"], watched
    assert sent < watched[1][0] < last_done, (sent, watched, last_done)

    # New connections: maybe still served for the moment before the server notices the signal
    # (it polls every 0.25 s), then refused, and never served again. A Check that arrives in the
    # instant the server stops accepting is cancelled rather than refused: CANCELLED, never SERVING.
    states = ["UNAVAILABLE" if s == "CANCELLED" else s for _, s in probes]
    assert "UNAVAILABLE" in states, probes
    first_refused = states.index("UNAVAILABLE")
    assert set(states[first_refused:]) == {"UNAVAILABLE"}, probes
    assert set(states[:first_refused]) <= {"SERVING", "NOT_SERVING"}, probes
    assert probes[first_refused][0] < last_done  # refused while the old calls still ran


# ---------------------------------------------------------------------------------- corrupt bundles


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for j in range(len(data) // 3, len(data) // 3 + 64):
        data[j] ^= 0x5A
    path.write_bytes(bytes(data))


def _served(rel: str, serving: Path) -> str:
    """MODEL: the folder of the model the bundle serves by default (its holdout split)."""
    default = json.loads((serving / "manifest.json").read_text())["default_model"]
    return rel.replace("MODEL", f"{default}/holdout")


CORRUPTIONS = [
    ("catalog/embeddings.npz", _truncate),
    ("catalog/embeddings.npz", _garble),
    ("catalog/items.csv", _garble),
    ("catalog/users.csv", _truncate),
    ("splits/holdout.npz", _garble),
    ("encoder/model.int8.onnx", _truncate),
    ("models/MODEL/user_tower.onnx", _truncate),
    ("models/MODEL/item_tower.onnx", _truncate),
    ("encoder/tokenizer.json", _truncate),
    ("models/MODEL/item_vectors.npy", _truncate),
    ("catalog/users.csv", _garble),
]


@pytest.fixture(scope="module")
def reloadable(serving, tmp_path_factory):
    """One server for every corrupt Reload (each must leave it exactly as it was); its bundle root is
    the session's temporary folder, which holds every test's tmp_path."""
    with server_and_channel(serving, bundle_root=tmp_path_factory.getbasetemp()) as (_, channel):
        yield channel


@pytest.mark.parametrize(
    "rel, damage", CORRUPTIONS, ids=lambda v: v.__name__.strip("_") if callable(v) else v.split("/")[-1]
)
def test_reload_of_a_bundle_corrupt_inside_is_refused_naming_the_file(
    reloadable, serving, users, tmp_path, rel, damage
):
    rel = _served(rel, serving)
    copy = pipeline.copy_serving(serving, tmp_path / "corrupt")
    damage(copy / rel)
    pipeline.rehash(copy, rel)
    stub = recommender_pb2_grpc.RecommenderStub(reloadable)
    before = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        recommender_pb2_grpc.AdminStub(reloadable).Reload(pb.ReloadRequest(artifacts=str(copy)), timeout=120)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (err.value.code(), err.value.details())
    assert Path(rel).name in err.value.details(), err.value.details()
    assert "still serving the previous model" in err.value.details()

    after = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
    assert (after.model_version, after.artifacts, after.loaded_at) == (
        before.model_version,
        before.artifacts,
        before.loaded_at,
    )
    reply = stub.Recommend(pb.RecommendRequest(user_id=users[0]["user_id"], top_n=3), timeout=30)
    assert len(reply.items) == 3 and reply.model_version == before.model_version
