"""Operating the server: auth, TLS, hot reload, tampered artifacts, the real CLI process, workers, config."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pipeline
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from pipeline import running_server
from prometheus_client import CollectorRegistry

from towerserve.server.api.app import ServerConfig, create_server
from towerserve.server.core.manifest import ArtifactError
from towerserve.server.engine.engine import Engine
from towerserve.v1 import recommender_pb2 as pb
from towerserve.v1 import recommender_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
TOKEN = "s3cret"


@pytest.fixture(scope="module")
def manifest(serving) -> dict:
    return json.loads((serving / "manifest.json").read_text())


@pytest.fixture(scope="module")
def user(users) -> str:
    return users[0]["user_id"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _list_services(channel: grpc.Channel, metadata=None) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=metadata, timeout=10
    )
    return {s.name for r in replies for s in r.list_services_response.service}


# ---------------------------------------------------------------------------------------------- auth


def test_token_is_required_and_never_logged(serving, user, caplog):
    caplog.set_level(logging.DEBUG, logger="towerserve")
    good = (("authorization", f"Bearer {TOKEN}"),)
    with (
        running_server(serving, token=TOKEN) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        request = pb.RecommendRequest(user_id=user, top_n=3)
        for metadata, reason in (
            (None, "missing authorization metadata"),
            ((("authorization", "Bearer guess-123"),), "invalid bearer token"),
            ((("authorization", TOKEN),), "invalid bearer token"),
        ):  # no "Bearer "
            with pytest.raises(grpc.RpcError) as err:
                stub.Recommend(request, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert reason in err.value.details() and "guess-123" not in err.value.details()
            assert TOKEN not in err.value.details()
        assert len(stub.Recommend(request, metadata=good).items) == 3

        # Admin is behind the same token.
        admin = recommender_pb2_grpc.AdminStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            admin.Reload(pb.ReloadRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert admin.Reload(pb.ReloadRequest(), metadata=good).model_version

        # Health is open (load balancers carry no token); reflection is not.
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == SERVING
        with pytest.raises(grpc.RpcError) as err:
            _list_services(channel)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "towerserve.v1.Recommender" in _list_services(channel, metadata=good)

    assert caplog.records, "the server logged nothing: the leak check below would be vacuous"
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(ServerConfig(artifacts=serving, token=TOKEN))


# ----------------------------------------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A test CA, a server certificate for localhost/127.0.0.1 and a client certificate, both CA-signed."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-days",
        "1",
        "-subj",
        "/CN=towerserve test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        cwd=d,
    )
    for name, ext in (
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / f"{name}.ext").write_text(ext)
        _openssl(
            "req",
            *ec,
            "-subj",
            f"/CN={'localhost' if name == 'server' else 'test client'}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.crt",
            cwd=d,
        )
    return d


def _recommend(channel: grpc.Channel, user: str) -> pb.RecommendResponse:
    return recommender_pb2_grpc.RecommenderStub(channel).Recommend(
        pb.RecommendRequest(user_id=user, top_n=3), timeout=10
    )


def test_tls(serving, pki, user):
    with running_server(serving, tls_cert=pki / "server.crt", tls_key=pki / "server.key") as running:
        creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", creds) as channel:
            assert len(_recommend(channel, user).items) == 3
        with (
            grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
            pytest.raises(grpc.RpcError) as err,
        ):
            _recommend(channel, user)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(serving, pki, user):
    with running_server(
        serving, tls_cert=pki / "server.crt", tls_key=pki / "server.key", tls_client_ca=pki / "ca.crt"
    ) as running:
        ca = (pki / "ca.crt").read_bytes()
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
        with (
            grpc.secure_channel(f"localhost:{running.port}", anonymous) as channel,
            pytest.raises(grpc.RpcError) as err,
        ):
            _recommend(channel, user)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

        signed = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(pki / "client.key").read_bytes(),
            certificate_chain=(pki / "client.crt").read_bytes(),
        )
        with grpc.secure_channel(f"localhost:{running.port}", signed) as channel:
            assert len(_recommend(channel, user).items) == 3


def test_tls_options_are_validated(serving, pki):
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        ServerConfig(artifacts=serving, tls_cert=pki / "server.crt").validate()
    with pytest.raises(ValueError, match="--tls-client-ca needs --tls-cert"):
        ServerConfig(artifacts=serving, tls_client_ca=pki / "ca.crt").validate()


# ----------------------------------------------------------------------------------------- hot reload


def test_hot_reload_under_load_then_a_bad_folder_is_refused(serving, tmp_path, user):
    good_copy = pipeline.copy_serving(serving, tmp_path / "copy")
    bad_copy = pipeline.copy_serving(serving, tmp_path / "bad")
    _flip_byte(bad_copy / "models" / "two_tower" / "holdout" / "user_tower.onnx")

    with (
        running_server(serving, bundle_root=tmp_path) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        admin = recommender_pb2_grpc.AdminStub(channel)
        version = stub.GetModelInfo(pb.GetModelInfoRequest()).model_version
        stop = threading.Event()
        versions: set[str] = set()
        failures: list[str] = []
        calls = [0]
        lock = threading.Lock()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    r = stub.Recommend(pb.RecommendRequest(user_id=user, top_n=5), timeout=10)
                    with lock:
                        versions.add(r.model_version)
                        calls[0] += 1
                except grpc.RpcError as err:
                    with lock:
                        failures.append(f"{err.code()}: {err.details()}")

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        try:
            time.sleep(0.3)
            same = admin.Reload(pb.ReloadRequest())
            time.sleep(0.5)
            calls_between = calls[0]
            other = admin.Reload(pb.ReloadRequest(artifacts=str(good_copy)))
            time.sleep(max(0.2, 2.0 - (time.monotonic() - t0)))
        finally:
            stop.set()
            for t in threads:
                t.join()

        assert failures == []
        assert versions == {version}
        assert 0 < calls_between < calls[0]
        assert (same.model_version, same.previous_model_version) == (version, version)
        assert (other.model_version, other.previous_model_version) == (version, version)
        assert same.seconds > 0 and other.seconds > 0
        assert stub.GetModelInfo(pb.GetModelInfoRequest()).artifacts == str(good_copy.resolve())

        with pytest.raises(grpc.RpcError) as err:
            admin.Reload(pb.ReloadRequest(artifacts=str(bad_copy)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "still serving the previous model" in err.value.details()
        assert "user_tower.onnx" in err.value.details() and "sha256" in err.value.details()
        assert stub.Recommend(pb.RecommendRequest(user_id=user, top_n=5)).model_version == version
        assert stub.GetModelInfo(pb.GetModelInfoRequest()).artifacts == str(good_copy.resolve())


def test_reload_of_a_missing_folder_is_failed_precondition(serving, tmp_path, user):
    with (
        running_server(serving, bundle_root=tmp_path) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        with pytest.raises(grpc.RpcError) as err:
            recommender_pb2_grpc.AdminStub(channel).Reload(
                pb.ReloadRequest(artifacts=str(tmp_path / "nowhere"))
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        # The same words as for a folder outside the root: a caller learns nothing of what exists.
        assert "not under the bundle root or is not a valid bundle" in err.value.details()
        assert "nowhere" not in err.value.details()
        assert _recommend(channel, user).items


@pytest.mark.parametrize(
    "content", [{"format": "towerserve-serving", "format_version": 1}, [1, 2]], ids=["no-models", "json-list"]
)
def test_reload_of_a_structurally_broken_manifest_is_failed_precondition(serving, tmp_path, user, content):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps(content))
    with (
        running_server(serving, bundle_root=tmp_path) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        with pytest.raises(grpc.RpcError) as err:
            recommender_pb2_grpc.AdminStub(channel).Reload(pb.ReloadRequest(artifacts=str(broken)))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
        assert "manifest.json" in err.value.details()


def test_a_model_loaded_by_admin_reload_turns_health_serving(serving, user):
    with (
        running_server(serving, load=False) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        recommender_pb2_grpc.AdminStub(channel).Reload(pb.ReloadRequest(artifacts=str(serving)))
        assert len(_recommend(channel, user).items) == 3
        assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status == SERVING


def test_refused_calls_are_counted_in_metrics(serving, user):
    registry = CollectorRegistry()
    running = create_server(
        ServerConfig(artifacts=serving, host="127.0.0.1", port=0, token=TOKEN), metrics_registry=registry
    )
    try:
        running.load()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel, pytest.raises(grpc.RpcError):
            _recommend(channel, user)
    finally:
        running.stop(0)
    labels = {"method": "/towerserve.v1.Recommender/Recommend", "code": "UNAUTHENTICATED"}
    assert registry.get_sample_value("towerserve_requests_total", labels) == 1.0


# ---------------------------------------------------------------------------------- tampered artifacts


def _holdout_entry(manifest: dict) -> dict:
    return manifest["models"][manifest["default_model"]]["splits"]["holdout"]


def test_tampered_item_vectors_are_refused(serving, manifest, tmp_path):
    copy = pipeline.copy_serving(serving, tmp_path / "copy")
    rel = _holdout_entry(manifest)["item_vectors_file"]
    assert rel.endswith("item_vectors.npy")
    _flip_byte(copy / rel)
    with pytest.raises(
        ArtifactError, match=r"item_vectors\.npy: sha256 does not match manifest\.json"
    ) as err:
        Engine(copy)
    assert err.value.path == str(copy.resolve() / rel)


def test_a_missing_file_is_named(serving, tmp_path):
    copy = pipeline.copy_serving(serving, tmp_path / "copy")
    (copy / "catalog" / "users.csv").unlink()
    with pytest.raises(ArtifactError, match=r"users\.csv: listed in manifest\.json but missing"):
        Engine(copy)


def test_a_resized_file_is_named(serving, tmp_path):
    copy = pipeline.copy_serving(serving, tmp_path / "copy")
    with open(copy / "splits" / "holdout.npz", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match=r"holdout\.npz: size \d+ does not match manifest\.json"):
        Engine(copy)


def test_manifest_dims_that_disagree_with_the_graph_are_refused(serving, manifest, tmp_path):
    copy = pipeline.copy_serving(serving, tmp_path / "copy")
    edited = json.loads(json.dumps(manifest))
    tower = _holdout_entry(edited)["item_tower"]
    real = tower["input_dim"]
    tower["input_dim"] = real + 1
    (copy / "manifest.json").write_text(json.dumps(edited))
    expected = rf"item_tower\.onnx: input width is {real}, manifest\.json says {real + 1}"
    with pytest.raises(ArtifactError, match=expected):
        Engine(copy)


def test_an_untampered_copy_loads(serving, manifest, tmp_path):
    engine = Engine(pipeline.copy_serving(serving, tmp_path / "copy"))
    assert engine.model_version == manifest["models"][manifest["default_model"]]["model_version"]


# -------------------------------------------------------------------------------- the real CLI process


def _serve_cmd(serving: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "towerserve.clients.cli",
        "serve",
        "--artifacts",
        str(serving),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--grace",
        "2",
        *extra,
    ]


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict | None = None):
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _wait_serving(
    port: int, proc: subprocess.Popen, log: Path, fresh_checks: int = 1, limit: float = 60.0
) -> None:
    """Polls health on fresh channels until ``fresh_checks`` in a row say SERVING."""
    deadline, streak = time.monotonic() + limit, 0
    while streak < fresh_checks:
        assert proc.poll() is None, f"server exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not SERVING after {limit} s:\n{log.read_text()[-3000:]}"
        with grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        ) as ch:
            try:
                ok = (
                    health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == SERVING
                )
            except grpc.RpcError:
                ok = False
        streak = streak + 1 if ok else 0
        if not ok:
            time.sleep(0.1)


def _sigterm(proc: subprocess.Popen, log: Path, grace: float = 2.0) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=grace + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {grace + 5} s after SIGTERM:\n{log.read_text()[-3000:]}")
    text = log.read_text()
    assert code == 0, text[-3000:]
    return text


def test_cli_serve_metrics_and_sigterm(serving, tmp_path, user):
    port, metrics_port, log = _free_port(), _free_port(), tmp_path / "serve.log"
    env = {**os.environ, "TOWERSERVE_METRICS_PORT": str(metrics_port)}
    with _process(_serve_cmd(serving, port), log, env) as proc:
        _wait_serving(port, proc, log)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert len(_recommend(channel, user).items) == 3
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        ok = [
            line
            for line in text.splitlines()
            if line.startswith("towerserve_requests_total{")
            and 'method="/towerserve.v1.Recommender/Recommend"' in line
            and 'code="OK"' in line
        ]
        assert len(ok) == 1 and float(ok[0].rsplit(" ", 1)[1]) >= 1.0, text
        assert "# TYPE towerserve_request_seconds histogram" in text
        assert re.search(
            r'towerserve_request_seconds_count\{method="/towerserve.v1.Recommender/Recommend"\} [1-9]', text
        )
        # SIGHUP reloads the folder in place and keeps serving.
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "reloaded" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert len(_recommend(channel, user).items) == 3
        out = _sigterm(proc, log)
    assert "draining" in out and "stopped" in out


def test_cli_serve_exits_1_when_the_artifacts_do_not_load(serving, tmp_path):
    bad = pipeline.copy_serving(serving, tmp_path / "bad")
    _flip_byte(bad / "catalog" / "items.csv")
    log = tmp_path / "serve.log"
    with _process(_serve_cmd(bad, _free_port()), log) as proc:
        assert proc.wait(timeout=60) == 1
    text = log.read_text()
    assert "cannot load" in text and "items.csv: sha256 does not match" in text


_IMPORTS = textwrap.dedent("""
    import sys
    from pathlib import Path
    import grpc
    from prometheus_client import CollectorRegistry
    from towerserve.server.api.app import ServerConfig, create_server
    from towerserve.v1 import recommender_pb2 as pb, recommender_pb2_grpc
    running = create_server(ServerConfig(artifacts=Path(sys.argv[1]), host="127.0.0.1", port=0),
                            metrics_registry=CollectorRegistry())
    running.load()
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        recommender_pb2_grpc.RecommenderStub(channel).Recommend(pb.RecommendRequest(user_id=sys.argv[2], top_n=3))
    running.stop(0)
    heavy = ("tensorflow", "torch", "keras", "transformers", "tf2onnx")
    print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
""")


def test_serving_imports_no_training_framework(serving, user):
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS, str(serving), user], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_cli_workers_share_the_port(serving, tmp_path, user):
    port, log = _free_port(), tmp_path / "workers.log"
    with _process(_serve_cmd(serving, port, "--workers", "2"), log) as proc:
        # Fresh connections land on either worker: wait until several in a row find one SERVING.
        _wait_serving(port, proc, log, fresh_checks=8)
        for _ in range(40):
            with grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            ) as ch:
                assert len(_recommend(ch, user).items) == 3
        out = _sigterm(proc, log)
    assert "supervisor" in out
    assert out.count("draining") == 2 and out.count(" stopped") == 2


# ------------------------------------------------------------------------------------------- config


def test_config_from_env():
    env = {
        "TOWERSERVE_PORT": "1234",
        "TOWERSERVE_TOKEN": "x",
        "TOWERSERVE_WORKERS": "2",
        "TOWERSERVE_GRACE": "2.5",
        "TOWERSERVE_ARTIFACTS": "/srv/a",
        "TOWERSERVE_METRICS_PORT": "9100",
        "TOWERSERVE_HOST": "",
    }
    cfg = ServerConfig.from_env(env)
    assert (cfg.port, cfg.token, cfg.workers, cfg.grace) == (1234, "x", 2, 2.5)
    assert (cfg.artifacts, cfg.metrics_port, cfg.host) == (Path("/srv/a"), 9100, ServerConfig.host)
    assert ServerConfig.from_env({}) == ServerConfig()


def test_config_overrides_win_over_env():
    cfg = ServerConfig.from_env(
        {"TOWERSERVE_PORT": "1234", "TOWERSERVE_THREADS": "3"}, port=4321, threads=None
    )
    assert (cfg.port, cfg.threads) == (4321, 3)


def test_config_bad_number_names_the_variable():
    with pytest.raises(ValueError, match=r"TOWERSERVE_PORT='http' is not a valid int"):
        ServerConfig.from_env({"TOWERSERVE_PORT": "http"})
    with pytest.raises(ValueError, match=r"TOWERSERVE_GRACE='soon'"):
        ServerConfig.from_env({"TOWERSERVE_GRACE": "soon"})


def test_config_workers_need_a_fixed_port():
    with pytest.raises(ValueError, match="--workers > 1 needs a fixed --port"):
        ServerConfig.from_env({"TOWERSERVE_WORKERS": "2"}, port=0)
    with pytest.raises(ValueError, match=r"--workers must be >= 1 \(got 0\)"):
        ServerConfig.from_env({"TOWERSERVE_WORKERS": "0"})
