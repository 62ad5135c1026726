"""Building and running the gRPC server: health, reflection, auth, metrics, TLS, signals, workers."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from towerserve.v1 import recommender_pb2

from .engine import EngineConfig, Limits
from .interceptors import AuthInterceptor, MetricsInterceptor
from .servicer import ADMIN_SERVICE, SERVICE, EngineHolder, generic_handlers

_LOGGER = logging.getLogger(__name__)

ENV_PREFIX = "TOWERSERVE_"


@dataclass(frozen=True)
class ServerConfig:
    """Everything `towerserve serve` takes; flags > TOWERSERVE_* environment > these defaults.

    Attributes:
        artifacts: the serving folder (`towerserve export` output).
        host, port: where to listen; port 0 picks a free port (tests).
        workers: processes sharing the port through SO_REUSEPORT, forked before any server exists.
        threads: gRPC handler threads per process.
        max_concurrent_rpcs: beyond this, new RPCs get RESOURCE_EXHAUSTED instead of queueing.
        token: bearer token every RPC but health must carry (never logged).
        tls_cert, tls_key: serve TLS with this certificate chain and key.
        tls_client_ca: also require client certificates signed by this CA (mutual TLS).
        metrics_port: Prometheus metrics over HTTP (worker i listens on metrics_port + i).
        grace: seconds in-flight RPCs get to finish on SIGTERM.
        max_message_mb: largest request/response message.
        device: "cpu" or "cuda".
        model: model kind to serve (default: the manifest's).
        encoder_variant: fp32 / optimized / int8 / fp16 (default: the manifest's choice for the device).
    """

    artifacts: Path | None = None
    host: str = "[::]"
    port: int = 50051
    workers: int = 1
    threads: int = 16
    max_concurrent_rpcs: int = 256
    token: str | None = field(default=None, repr=False)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    metrics_port: int | None = None
    grace: float = 10.0
    max_message_mb: int = 16
    device: str = "cpu"
    model: str | None = None
    encoder_variant: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides) -> "ServerConfig":
        """Defaults, then TOWERSERVE_<FIELD> variables, then ``overrides`` that are not None."""
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = str(f.type)
            try:
                if "int" in kind and "Path" not in kind and "str" not in kind:
                    values[f.name] = int(raw)
                elif "float" in kind:
                    values[f.name] = float(raw)
                elif "Path" in kind:
                    values[f.name] = Path(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise ValueError(f"{ENV_PREFIX + f.name.upper()}={raw!r} is not a valid {kind}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1 (got {self.workers})")
        if self.workers > 1 and self.port == 0:
            raise ValueError("--workers > 1 needs a fixed --port: the workers share it")

    def engine_config(self) -> EngineConfig:
        return EngineConfig(model=self.model, device=self.device, encoder_variant=self.encoder_variant, limits=Limits())


@dataclass
class RunningServer:
    """A started server and its handles (tests use it directly)."""

    server: grpc.Server
    port: int
    holder: EngineHolder
    health: health.HealthServicer
    config: ServerConfig

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE, ADMIN_SERVICE):
            self.health.set(service, status)

    def load(self, artifacts: Path | str | None = None) -> None:
        """Loads (or reloads) the engine; health turns SERVING once it is warm."""
        self.holder.load(artifacts)
        self.set_serving(True)

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (so load balancers drain), then stop accepting and wait for in-flight RPCs."""
        self.set_serving(False)
        self.server.stop(self.config.grace if grace is None else grace).wait()


def _credentials(cfg: ServerConfig) -> grpc.ServerCredentials | None:
    if not cfg.tls_cert:
        return None
    key, chain = Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes()
    ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=ca is not None)


def create_server(cfg: ServerConfig, metrics_registry=None) -> RunningServer:
    """Builds, binds and starts a server whose health is NOT_SERVING until :meth:`RunningServer.load`.

    Returns:
        The running server; ``port`` is the bound port (useful with port 0).
    """
    interceptors = [MetricsInterceptor(metrics_registry)]
    if cfg.token:
        interceptors.insert(0, AuthInterceptor(cfg.token))
    size = cfg.max_message_mb * 1024 * 1024
    options = [("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size),
               ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.threads, thread_name_prefix="rpc"),
                         interceptors=interceptors, options=options, maximum_concurrent_rpcs=cfg.max_concurrent_rpcs)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    running = RunningServer(server=server, port=0, holder=None, health=health_servicer, config=cfg)  # type: ignore[arg-type]
    running.holder = EngineHolder(cfg.artifacts, cfg.engine_config())
    server.add_generic_rpc_handlers(generic_handlers(running.holder))
    reflection.enable_server_reflection((
        recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name,
        recommender_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    ), server)
    address = f"{cfg.host}:{cfg.port}"
    creds = _credentials(cfg)
    running.port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if running.port == 0:
        raise OSError(f"could not bind {address}")
    running.set_serving(False)
    server.start()
    return running


def _serve_one(cfg: ServerConfig, worker: int = 0) -> int:
    """Runs one server process until SIGTERM/SIGINT; SIGHUP reloads the artifacts folder."""
    if cfg.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(cfg.metrics_port + worker)
    running = create_server(cfg)
    tag = f"worker {worker} (pid {os.getpid()})"
    _LOGGER.info("%s listening on %s:%d (%s%s); loading %s", tag, cfg.host, running.port,
                 "TLS" if cfg.tls_cert else "plaintext", ", token required" if cfg.token else "", cfg.artifacts)
    stop = threading.Event()
    reload_requested = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_requested.set())
    try:
        running.load()
    except Exception as err:
        _LOGGER.error("%s: cannot load %s: %s", tag, cfg.artifacts, err)
        running.stop(0)
        return 1
    engine = running.holder.get()
    _LOGGER.info("%s SERVING %s (%d items, providers %s)", tag, engine.model_version, len(engine.catalog), engine.providers)
    while not stop.wait(0.25):
        if reload_requested.is_set():
            reload_requested.clear()
            try:
                running.load()
                _LOGGER.info("%s reloaded: %s", tag, running.holder.get().model_version)
            except Exception as err:  # keep serving the old model
                _LOGGER.error("%s reload refused, still serving the previous model: %s", tag, err)
    _LOGGER.info("%s draining (grace %.1f s)", tag, cfg.grace)
    running.stop()
    _LOGGER.info("%s stopped", tag)
    return 0


def serve(cfg: ServerConfig) -> int:
    """Serves until SIGTERM; with workers > 1, forks them first and supervises."""
    cfg.validate()
    if cfg.workers == 1:
        return _serve_one(cfg)
    # Fork before any gRPC server, channel or ORT session exists in this process (gRPC's
    # multiprocessing example): each child then builds its own and binds with SO_REUSEPORT.
    children = []
    for w in range(cfg.workers):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _serve_one(cfg, w)
            finally:
                os._exit(code)
        children.append(pid)
    _LOGGER.info("supervisor %d: workers %s on port %d", os.getpid(), children, cfg.port)

    def forward(signum, _frame):
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    worst = 0
    for pid in children:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        worst = max(worst, os.waitstatus_to_exitcode(status))
    return worst
