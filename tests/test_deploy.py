"""deploy/: every Kubernetes document valid against the schema (offline), consistent with the others, and
the Deployment's command accepted by `towerserve serve` itself; then that command run for real.

The schema checks use kubernetes-validate's bundled JSON schemas (the `dev` extra) in strict mode, which
also refuses a misspelt field. No cluster and no docker are needed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from dataclasses import fields
from pathlib import Path, PurePosixPath

import grpc
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from towerserve.clients.cli import build_parser
from towerserve.server.core.config import ENV_PREFIX, ServerConfig, is_loopback

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# The version the manifests are written for (native gRPC probes are GA from 1.27), and the newest the
# installed kubernetes-validate bundles, so an API removed since then shows up too.
KUBERNETES_VERSIONS = ("1.30", latest_version())
# Not a Kubernetes API object: kubectl's kustomize reads it (checked separately below).
KUSTOMIZATION = "kustomize.config.k8s.io/v1beta1"
# Measured server RSS at seed scale (docs/benchmarks.md, bench_server.py: VmRSS = peak), in bytes. A
# Reload holds the old and the new engine at once, so the memory limit must hold two.
SEED_RSS_BYTES = 231e6
_QUANTITY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _documents() -> list[tuple[str, dict]]:
    """(file#index, document) for every YAML document under deploy/ (empty ones skipped)."""
    docs = []
    for path in sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                docs.append((f"{path.relative_to(DEPLOY)}#{i}", doc))
    return docs


DOCUMENTS = _documents()
KUBE_DOCUMENTS = [(name, doc) for name, doc in DOCUMENTS if doc.get("apiVersion") != KUSTOMIZATION]


def _one(kind: str) -> dict:
    found = [doc for _, doc in KUBE_DOCUMENTS if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def deployment() -> dict:
    return _one("Deployment")


@pytest.fixture(scope="module")
def pod(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    (only,) = pod["containers"]
    return only


@pytest.fixture(scope="module")
def args(container):
    """The Deployment's arguments as `towerserve serve`'s own parser reads them (it exits 2 on a flag it
    does not know, which pytest reports as SystemExit)."""
    assert container["command"] == ["towerserve", "serve"]
    return build_parser().parse_args(["serve", *container["args"]])


def _port(container: dict, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def _bytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(quantity)).groups()
    return float(number) * _QUANTITY.get(unit, 1)


def _cpus(quantity) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _prestop_seconds(container: dict) -> float:
    """The preStop hook's delay: an exec `sleep N` or the native `sleep: {seconds: N}`; 0 without one."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep") and len(command) == 2, f"unexpected preStop hook {command}"
    return float(command[1])


def _under(path: Path, mount: str) -> bool:
    return PurePosixPath(path).is_relative_to(PurePosixPath(mount))


# ------------------------------------------------------------------------------------------- the schema


def test_deploy_holds_the_expected_objects():
    kinds = sorted(doc["kind"] for _, doc in KUBE_DOCUMENTS)
    assert kinds == sorted(
        [
            "Deployment",
            "HorizontalPodAutoscaler",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Secret",
            "Service",
        ]
    )
    assert not any("namespace" in doc["metadata"] for _, doc in KUBE_DOCUMENTS), "kubectl -n chooses it"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name, doc", KUBE_DOCUMENTS, ids=[name for name, _ in KUBE_DOCUMENTS])
def test_every_document_is_valid_kubernetes(name, doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        where = ".".join(str(p) for p in err.path)
        pytest.fail(f"{name} is not a valid {doc['kind']} for Kubernetes {version}: {where}: {err.message}")
    except kubernetes_validate.SchemaNotFoundError as err:  # an API version this Kubernetes lacks
        pytest.fail(f"{name}: {err.message}")


def test_the_kustomization_applies_every_manifest_but_the_secret_example():
    (kustomization,) = [doc for _, doc in DOCUMENTS if doc.get("apiVersion") == KUSTOMIZATION]
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The example Secret holds placeholders: applying it would overwrite the real token.
    assert set(resources) == on_disk - {"secret.example.yaml"}


# ------------------------------------------------------------------------------------------- consistency


def test_the_args_are_accepted_by_towerserve_serve(args, container):
    # The same mapping cmd_serve makes (store_true flags pass None when absent), then the config's own
    # checks: a non-loopback host is refused unless a token or TLS is configured.
    given = {f.name: getattr(args, f.name) for f in fields(ServerConfig) if hasattr(args, f.name)}
    cfg = ServerConfig.from_env(
        {}, **{k: (v or None) if isinstance(v, bool) else v for k, v in given.items()}
    )
    assert cfg.host in ("[::]", "0.0.0.0"), "the pod must listen on every interface"
    assert cfg.token_file is not None and cfg.token is None, "the token comes from the Secret, as a file"
    assert cfg.workers == 1, "replicas, not worker processes, are the unit of scale"
    assert cfg.state_dir is None, "the catalogue journal is the shared PostgreSQL one, not a pod-local file"
    assert args.grace is not None and args.threads is not None and args.metrics_port is not None


def test_environment_variables_name_server_options(container):
    """ServerConfig.from_env ignores a TOWERSERVE_ variable that names no option: a typo would pass silently."""
    options = {ENV_PREFIX + f.name.upper() for f in fields(ServerConfig)}
    names = [e["name"] for e in container.get("env", []) if e["name"].startswith(ENV_PREFIX)]
    assert names and [n for n in names if n not in options] == []


def test_the_catalogue_url_comes_from_the_secret(container):
    (env,) = [e for e in container["env"] if e["name"] == "TOWERSERVE_CATALOG_URL"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "towerserve", "key": "catalog-url"}
    assert "catalog-url" in _one("Secret")["stringData"]
    assert "catalog_url" in {f.name for f in fields(ServerConfig)}  # the variable names a real option


def test_probes_the_service_and_the_args_share_the_grpc_port(args, container):
    grpc_port = _port(container, "grpc")
    assert args.port == grpc_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
        # The stock health service's overall status ("" is what the kubelet asks by default).
        assert container[probe]["grpc"].get("service", "") == ""
    service = _one("Service")["spec"]
    (port,) = [p for p in service["ports"] if p["name"] == "grpc"]
    assert port["port"] == grpc_port and port["targetPort"] in ("grpc", grpc_port)


def test_probes_are_ordered_startup_then_gentle_liveness(container):
    startup, ready, live = (container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    # Startup allows a 1M x 1M load (42.5 s measured) several times over before the kubelet restarts.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    # Liveness gives up later than readiness does: a pod leaves the Service long before it is restarted.
    assert (
        live["periodSeconds"] * live["failureThreshold"] > ready["periodSeconds"] * ready["failureThreshold"]
    )


def test_the_pod_outlives_its_drain(args, pod, container):
    """SIGTERM comes after the preStop sleep; then the server drains for --grace. The kubelet's SIGKILL
    must come later than both, with a margin for closing the engine."""
    drain = _prestop_seconds(container) + args.grace
    assert pod["terminationGracePeriodSeconds"] >= drain + 5, (pod["terminationGracePeriodSeconds"], drain)
    assert _prestop_seconds(container) > 0, "a delay lets endpoints and DNS drop the pod before it drains"


def test_the_autoscaler_drives_the_deployment(deployment, container):
    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in container["resources"]["requests"], "CPU utilisation is measured against the request"
    # With an HPA the Deployment must not set replicas: every apply would reset the HPA's count.
    assert "replicas" not in deployment["spec"]


def test_selectors_match_the_pod_labels(deployment, pod):
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert _one("Service")["spec"]["selector"].items() <= labels.items()
    pdb = _one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"] == {"matchLabels": selector}
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1
    for spread in pod.get("topologySpreadConstraints", []):
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_the_service_is_headless_for_client_side_round_robin():
    spec = _one("Service")["spec"]
    assert spec["clusterIP"] == "None"
    assert not spec.get("publishNotReadyAddresses", False), "pods loading or draining must stay out of DNS"


def test_the_bundle_and_the_token_come_from_read_only_volumes(args, pod, container):
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    def mount_of(path: Path) -> dict:
        (mount,) = [m for where, m in mounts.items() if _under(path, where)]
        return mount

    models = mount_of(args.artifacts)
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = _one("PersistentVolumeClaim")
    assert claim["claimName"] == pvc["metadata"]["name"]
    assert set(pvc["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}, (
        "replicas share it across nodes"
    )

    token = mount_of(args.token_file)
    assert token["readOnly"] is True
    secret = volumes[token["name"]]["secret"]
    assert secret["secretName"] == _one("Secret")["metadata"]["name"]
    relative = PurePosixPath(args.token_file).relative_to(token["mountPath"])
    assert {"key": "token", "path": str(relative)} in secret["items"]
    assert secret["defaultMode"] & 0o007 == 0, "not readable by others"
    assert "token" in _one("Secret")["stringData"]


def test_the_container_runs_locked_down(pod, container):
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["enableServiceLinks"] is False, "TOWERSERVE_PORT=tcp://... links would be read as --port"
    assert pod["automountServiceAccountToken"] is False
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]


def test_resources_follow_the_measurements(args, container):
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert args.threads == _cpus(limits["cpu"]), "--threads matches the CPU limit (one per core)"
    assert requests == limits, "Guaranteed QoS: memory is not compressible"
    assert _bytes(limits["memory"]) >= 2 * SEED_RSS_BYTES, "a Reload holds two engines"


def test_prometheus_finds_the_metrics_port(deployment, args, container):
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == args.metrics_port == _port(container, "metrics")
    assert args.workers == 1, "worker i serves metrics on --metrics-port + i"
    assert not is_loopback(args.metrics_host), "Prometheus scrapes the pod's address, not its loopback"


def test_the_dockerfile_runs_the_uid_the_pod_expects(pod):
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf"^USER {pod['securityContext']['runAsUser']}\b", text, re.M)
    # psycopg: the replicas' shared catalogue journal is PostgreSQL.
    assert "'.[server,postgres]'" in text and 'ENTRYPOINT ["towerserve", "serve"]' in text


# ------------------------------------------------------------------------------------------ run for real


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _read_only_copy(serving: Path, dst: Path):
    """The bundle as the pod sees its volume: nothing in it writable."""
    import shutil

    shutil.copytree(serving, dst)
    paths = [dst, *dst.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield dst
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_the_deployment_command_serves_probes_and_drains(serving, users, pod, container, tmp_path):
    """The container's command and args, with only paths and ports mapped onto this machine: it loads a
    read-only bundle, answers the kubelet's probe without a token, wants the token for everything else,
    serves metrics, and exits 0 within the pod's grace period after SIGTERM."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from towerserve.clients.client import RecommenderClient, TowerserveError

    token_file = tmp_path / "token"
    token_file.write_text("k8s-test-token\n")
    token_file.chmod(0o440)  # as the Secret volume mounts it (defaultMode 0440, group = fsGroup)
    port, metrics_port = _free_port(), _free_port()
    args = build_parser().parse_args(["serve", *container["args"]])
    with _read_only_copy(serving, tmp_path / "models" / "serving") as bundle:
        mapped = {
            f"--artifacts={args.artifacts}": f"--artifacts={bundle}",
            f"--token-file={args.token_file}": f"--token-file={token_file}",
            f"--port={args.port}": f"--port={port}",
            f"--metrics-port={args.metrics_port}": f"--metrics-port={metrics_port}",
        }
        argv = [mapped.get(a, a) for a in container["args"]]
        assert sum(a != b for a, b in zip(argv, container["args"])) == len(mapped), "args use --flag=value"
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
        log = tmp_path / "serve.log"
        with open(log, "w") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "towerserve.clients.cli", *container["command"][1:], *argv],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            startup = container["startupProbe"]
            deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
            status = None
            while status != health_pb2.HealthCheckResponse.SERVING:
                assert proc.poll() is None, f"exited early ({proc.returncode}):\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"startup probe would fail:\n{log.read_text()[-3000:]}"
                # A fresh channel per attempt, and no token: what the kubelet's gRPC probe does.
                with (
                    grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
                    contextlib.suppress(grpc.RpcError),
                ):
                    request = health_pb2.HealthCheckRequest(service="")
                    status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status
                time.sleep(0.1)
            user = users[0]["user_id"]
            with RecommenderClient(f"127.0.0.1:{port}", token="k8s-test-token", timeout=10) as client:
                assert len(client.recommend(user, top_n=3).items) == 3
            with RecommenderClient(f"127.0.0.1:{port}", timeout=10) as client:
                with pytest.raises(TowerserveError) as err:
                    client.recommend(user, top_n=3)
                assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
            assert b"towerserve_requests_total" in metrics

            proc.send_signal(signal.SIGTERM)  # what the kubelet sends once the preStop sleep is over
            budget = pod["terminationGracePeriodSeconds"] - _prestop_seconds(container)
            started = time.monotonic()
            try:
                code = proc.wait(timeout=budget)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {budget} s after SIGTERM: SIGKILL\n{log.read_text()[-3000:]}")
            assert code == 0, log.read_text()[-3000:]
            assert time.monotonic() - started < budget
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_the_scaling_diagram_is_generated_from_its_source(tmp_path):
    """deploy/diagram.py draws docs/scaling.md's picture; the committed images are its output."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("diagram", ROOT / "deploy" / "diagram.py")
    diagram = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagram)
    svg, png = diagram.draw(tmp_path / "scaling")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text()
    for *_, label, _colour in diagram.BOXES:  # every box's text is in the picture, as text
        assert all(line.replace("&", "&amp;") in text for line in label.splitlines()), label
    assert (ROOT / "deploy" / "scaling.png").is_file() and (ROOT / "deploy" / "scaling.svg").is_file()
