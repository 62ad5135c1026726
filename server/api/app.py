"""Building and running the gRPC server: health, reflection, auth, metrics, TLS, signals, workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from ..catalog.journal import open_store
from ..catalog.store import JournalError
from ..core.access import Right
from ..core.config import TOKENS, ServerConfig, is_loopback
from ..core.manifest import MANIFEST_FILE, TRAIN_FORMAT, ArtifactError
from .holder import EngineHolder
from .interceptors import AccessInterceptor, Metrics, MetricsInterceptor
from .servicer import ADMIN_SERVICE, SERVICE, generic_handlers, recommend_batcher
from .stock import SERVICE_NAMES, health_handler, reflection_handler

_LOGGER = logging.getLogger(__name__)

# Worker threads run this much nicer than the event loop thread (Linux schedules threads one by one),
# so a saturated pool delays health checks and candidate-list answers as little as possible.
WORKER_NICE = 5


def _worker_priority() -> None:
    """The worker pool's thread initializer: lower this thread's CPU priority (no-op where unsupported)."""
    with contextlib.suppress(OSError, AttributeError):
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + WORKER_NICE)


class RunningServer:
    """A started grpc.aio server driven from ordinary threads (tests and the CLI use it directly).

    The server lives on an asyncio loop in a background thread; these methods are thread-safe,
    synchronous wrappers around it.
    """

    def __init__(self, cfg: ServerConfig, metrics_registry=None):
        self.config = cfg
        self.metrics = Metrics(metrics_registry)
        self.executor = futures.ThreadPoolExecutor(
            max_workers=cfg.threads, thread_name_prefix="work", initializer=_worker_priority
        )
        try:
            self.store = open_store(cfg.state_dir, cfg.catalog_url)
        except JournalError as err:  # read-only or unopenable: said at start, not at the first write
            raise ValueError(f"cannot open the catalogue journal: {err}") from None
        self.holder = EngineHolder(cfg.artifacts, cfg.engine_config(), self.set_serving, self.store)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()
        self.port = 0
        self.server: grpc.aio.Server | None = None
        self.health = health_aio.HealthServicer()
        self.access = AccessInterceptor(
            cfg.grants(), cfg.max_concurrent_rpcs, cfg.max_probe_rpcs, cfg.max_watch_streams
        )

    def _run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _build(self) -> None:
        cfg = self.config
        interceptors = [MetricsInterceptor(self.metrics), self.access]  # outermost: refusals counted too
        size = cfg.max_message_mb * 1024 * 1024
        options = [
            ("grpc.max_receive_message_length", size),
            ("grpc.max_send_message_length", size),
            ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0),
        ]
        if cfg.max_connection_age:
            # Clients resolve dns:/// targets when they connect: closing connections now and then
            # lets them find replicas added since (calls in flight get --grace to finish).
            options += [
                ("grpc.max_connection_age_ms", int(cfg.max_connection_age * 1000)),
                ("grpc.max_connection_age_grace_ms", int(cfg.grace * 1000)),
            ]
        # No maximum_concurrent_rpcs: gRPC's limit counts health streams and refused calls alike, so
        # token-less Watch streams could take every slot; AccessInterceptor keeps separate pools.
        server = grpc.aio.server(interceptors=interceptors, options=options)
        server.add_generic_rpc_handlers([health_handler(self.health)])
        batcher = recommend_batcher(
            self.executor, cfg.batch_size, cfg.batch_delay_us, cfg.threads, self.metrics.observe_batch
        )
        server.add_generic_rpc_handlers(
            generic_handlers(self.holder, self.executor, cfg.bundle_root, batcher)
        )
        server.add_generic_rpc_handlers([reflection_handler(SERVICE_NAMES)])
        address = f"{cfg.host}:{cfg.port}"
        creds = _credentials(cfg)
        self.port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await self._set(False)
        await server.start()
        self.server = server

    async def _set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE, ADMIN_SERVICE):
            await self.health.set(service, status)

    def set_serving(self, serving: bool) -> None:
        self._run(self._set(serving))

    def load(self, artifacts: Path | str | None = None) -> None:
        """Loads (or reloads) the engine in the calling thread; health turns SERVING once it is warm."""
        self.holder.load(artifacts)

    def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first (so load balancers drain), then stop accepting and wait for in-flight RPCs."""
        if self.server is not None:
            self.set_serving(False)
            self._run(self.server.stop(self.config.grace if grace is None else grace))
            self.server = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.holder.close()
        if self.store is not None:
            self.store.close()


def _credentials(cfg: ServerConfig) -> grpc.ServerCredentials | None:
    if not cfg.tls_cert:
        return None
    key, chain = Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes()
    ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
    )


def resolve_artifacts(path: Path | str) -> Path:
    """The serving folder for ``path``: ``path`` itself, or ``path/serving`` when ``path`` is the
    training folder (`towerserve export --artifacts A` writes A/serving, so A is an easy slip).

    Raises:
        ArtifactError: ``path`` is a training folder that has not been exported yet.
    """
    path = Path(path)
    try:
        fmt = json.loads((path / MANIFEST_FILE).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        return path  # not a training folder; loading it says what is wrong
    if fmt != TRAIN_FORMAT:
        return path
    serving = path / "serving"
    if not (serving / MANIFEST_FILE).is_file():
        raise ArtifactError(
            path,
            f"a training folder with no serving/ inside: run `towerserve export --artifacts {path}` first",
        )
    _LOGGER.info("%s is a training folder: serving %s, which `towerserve export` wrote", path, serving)
    return serving


def _prepared(cfg: ServerConfig) -> ServerConfig:
    """``cfg`` validated (a non-loopback bind with neither a token nor client certificates is refused
    here), with the tokens read from their files, the bundle root set (default: the parent of
    --artifacts as given, before a training folder becomes its serving/) and the artifacts folder
    resolved.

    Raises:
        ValueError: the configuration is refused, a token file is bad, or --bundle-root is no folder.
    """
    cfg.validate()
    cfg = cfg.with_token_file()
    if cfg.bundle_root is None and cfg.artifacts is not None:
        cfg = replace(cfg, bundle_root=Path(cfg.artifacts).resolve().parent)
    elif cfg.bundle_root is not None:
        if not Path(cfg.bundle_root).is_dir():
            raise ValueError(f"--bundle-root {cfg.bundle_root} is not a folder")
        cfg = replace(cfg, bundle_root=Path(cfg.bundle_root).resolve())
    if cfg.artifacts is not None:
        cfg = replace(cfg, artifacts=resolve_artifacts(cfg.artifacts))
    return cfg


def _warn_about_access(cfg: ServerConfig, prepared: ServerConfig) -> None:
    """Says at start who can call this server when that is more than its owner may expect (``cfg`` as
    given, naming its token files; ``prepared`` with the tokens read)."""
    if not cfg.authenticates:  # a token of any right, or client certificates (mutual TLS)
        if cfg.insecure and not is_loopback(cfg.host):
            _LOGGER.warning(
                "INSECURE (--insecure): listening on %s with neither a token nor client certificates%s: "
                "anyone who can reach this port can call every RPC, Admin.Reload and UpsertItems included",
                cfg.host,
                " (TLS encrypts, it does not authenticate)" if cfg.tls_cert else "",
            )
        else:
            _LOGGER.warning(
                "no token configured: every RPC is open to whoever can reach %s:%d (set TOWERSERVE_TOKEN "
                "or --token-file)",
                cfg.host,
                cfg.port,
            )
    for name in TOKENS:
        if (path := getattr(cfg, name + "_file")) is None:
            continue
        with contextlib.suppress(OSError):
            if (mode := Path(path).stat().st_mode) & 0o077:
                _LOGGER.warning(
                    "--%s-file %s (mode %o) is open to other users than its owner: chmod 600 it",
                    name.replace("_", "-"),
                    path,
                    mode & 0o777,
                )
    # Two rights sharing one secret is allowed (configured on purpose), but then the lower right is only a
    # name: whoever holds the secret has the higher one. Said once at start, so it is never a surprise.
    by_secret: dict[str, set[Right]] = {}
    for secret, right in prepared.grants():
        by_secret.setdefault(secret, set()).add(right)
    for rights in (r for r in by_secret.values() if len(r) > 1):
        _LOGGER.warning(
            "the %s tokens are one secret: whoever holds it has the %s right",
            " and ".join(r.label for r in sorted(rights)),
            max(rights).label,
        )


def create_server(cfg: ServerConfig, metrics_registry=None) -> RunningServer:
    """Builds, binds and starts a server whose health is NOT_SERVING until :meth:`RunningServer.load`.

    Args:
        cfg: the configuration (validated here: a non-loopback host needs a token, TLS or ``insecure``).
        metrics_registry: a prometheus_client CollectorRegistry (default: a new one per server).

    Returns:
        The running server; ``port`` is the bound port (useful with port 0).
    """
    cfg = _prepared(cfg)
    running = RunningServer(cfg, metrics_registry)
    try:
        running._run(running._build())
    except BaseException:
        running.stop(0)
        raise
    return running


def start_metrics(cfg: ServerConfig, registry, worker: int = 0):
    """Serves ``registry`` as Prometheus text over HTTP on --metrics-host, port --metrics-port + worker.

    Returns:
        The HTTP server (its ``server_address`` is where it listens; ``shutdown()`` stops it).
    """
    from prometheus_client import start_http_server

    host = cfg.metrics_host.strip().removeprefix("[").removesuffix("]")  # [::] as --host takes it
    server, _ = start_http_server(cfg.metrics_port + worker, addr=host, registry=registry)
    return server


def _serve_one(cfg: ServerConfig, worker: int = 0) -> int:
    """Runs one server process until SIGTERM/SIGINT; SIGHUP reloads the artifacts folder."""
    running = create_server(cfg)
    if cfg.metrics_port is not None:
        start_metrics(cfg, running.metrics.registry, worker)
    tag = f"worker {worker} (pid {os.getpid()})"
    rights = [right.label for right in sorted({right for _, right in cfg.grants()})]
    _LOGGER.info(
        "%s listening on %s:%d (%s%s); loading %s (Admin.Reload may load folders under %s)",
        tag,
        cfg.host,
        running.port,
        "TLS" if cfg.tls_cert else "plaintext",
        f", token required (rights: {', '.join(rights)})" if rights else "",
        cfg.artifacts,
        cfg.bundle_root,
    )
    if running.store is None:
        _LOGGER.warning(
            "%s: no --state-dir: items changed by UpsertItems/DeleteItems will NOT survive a restart or Reload",
            tag,
        )
    else:
        _LOGGER.info("%s: catalogue journal %s", tag, running.store.url)
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
    _LOGGER.info(
        "%s SERVING %s (%d items, providers %s)",
        tag,
        engine.model_version,
        engine.catalog.item_count,
        engine.providers,
    )
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
    """Serves until SIGTERM; with workers > 1, forks them first and supervises (restarting crashes)."""
    # Once, before any fork: a refusal before any worker exists, and one log line each.
    prepared = _prepared(cfg)
    _warn_about_access(cfg, prepared)
    cfg = prepared
    if cfg.workers == 1:
        return _serve_one(cfg)
    children: dict[int, int] = {}  # pid -> worker index
    stopping = threading.Event()

    def forward(signum, _frame):
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping.set()
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    # Handlers first: a SIGTERM arriving while workers are being forked must still reach them.
    for s_ in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s_, forward)

    def spawn(w: int) -> None:
        # Fork before any gRPC server, channel or ORT session exists in this process (gRPC's
        # multiprocessing example): each child builds its own and binds with SO_REUSEPORT.
        pid = os.fork()
        if pid == 0:
            for s_ in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(s_, signal.SIG_DFL)
            code = 1
            try:
                code = _serve_one(cfg, w)
            finally:
                os._exit(code)
        children[pid] = w

    for w in range(cfg.workers):
        spawn(w)
    _LOGGER.info("supervisor %d: workers %s on port %d", os.getpid(), sorted(children), cfg.port)
    worst = 0
    restarts: list[float] = []
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        w = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        if w is None:
            continue
        if stopping.is_set():
            worst = max(worst, code)
            continue
        # A worker died on its own: restart it, unless workers keep dying (then give up loudly).
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 60] + [now]
        if len(restarts) > 3 * cfg.workers:
            _LOGGER.error("workers keep exiting (last: worker %d, code %d); shutting down", w, code)
            stopping.set()
            forward(signal.SIGTERM, None)
            worst = max(worst, code or 1)
            continue
        _LOGGER.warning("worker %d (pid %d) exited with code %d; restarting it", w, pid, code)
        spawn(w)
    return worst
