"""Configuration records: how the server runs (flags > environment > defaults) and how the engine loads."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .validation import Limits


@dataclass(frozen=True)
class EngineConfig:
    """How an artifacts folder is loaded.

    Attributes:
        model: model kind to serve (None: the manifest's default, the best holdout NDCG@10).
        device: "cpu" or "cuda" (falls back to CPU, visibly, where CUDA is not available).
        encoder_variant: fp32 / optimized / int8 / fp16 (None: int8 on CPU when it passed its gate,
            fp16 on CUDA).
        tower_threads: ORT threads per tower session; 1, because parallelism comes from gRPC's pool.
        encoder_threads: ORT threads for the text encoder.
        verify_hashes: check every file's sha256 against the manifest at load.
        candidates: per known user, the exact top-M unseen items kept with each catalogue snapshot
            (0: off). Requests that M answers never touch numpy; see Engine.recommend.
        candidate_budget_mb: memory the candidate lists may take (12 bytes per entry: 1.5 kB per
            user at M = 128); above it (or above candidates.MAX_CELLS of work) there are none and
            known users take the exact or index path.
        exact: ignore the bundle's approximate index and score every item (a reference, or a fall-back).
        limits: request size limits.
    """

    model: str | None = None
    device: str = "cpu"
    encoder_variant: str | None = None
    tower_threads: int = 1
    encoder_threads: int = 1
    verify_hashes: bool = True
    candidates: int = 128
    candidate_budget_mb: float = 1024
    exact: bool = False
    limits: Limits = field(default_factory=Limits)


ENV_PREFIX = "TOWERSERVE_"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as --host takes it: a name, an IPv4 address or a bracketed IPv6 one) only
    listens on this machine. Any other name counts as reachable: it may resolve to anything."""
    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    """Everything `towerserve serve` takes; flags > TOWERSERVE_* environment > these defaults.

    Attributes:
        artifacts: the serving folder (`towerserve export` output).
        host, port: where to listen; port 0 picks a free port (tests). The default host is loopback
            ("localhost": 127.0.0.1 and ::1), so a server is reachable from other machines only when
            asked; see ``insecure``.
        workers: processes sharing the port through SO_REUSEPORT, forked before any server exists.
        threads: the bounded worker pool per process (default: the CPU count, at least 2; every
            extra thread is one more contender for the GIL the event loop needs, and ONNX Runtime
            and FAISS already run a call on a core each): everything that scores the catalogue, runs a
            tower or the encoder, Evaluate, UpsertItems and reload; only checks and candidate-list
            walks (microseconds) run on the gRPC event loop itself.
        max_concurrent_rpcs: beyond this many authenticated RPCs in flight, new ones get
            RESOURCE_EXHAUSTED instead of queueing (health and refused calls do not count).
        max_probe_rpcs: the separate cap on health calls (Check and Watch) and calls refused for
            their token, so token-less traffic can never take the slots of authenticated RPCs.
        max_watch_streams: open health Watch streams (which also hold a probe slot): a stream lives as
            long as its client wants, so without a cap of their own they could crowd out Checks.
        token: bearer token every RPC but health must carry (never logged).
        token_file: read ``token`` from this file (stripped) instead: unlike --token it is not shown
            to every local user by ``ps``.
        insecure: allow a non-loopback host with neither a token nor TLS (refused otherwise).
        tls_cert, tls_key: serve TLS with this certificate chain and key.
        tls_client_ca: also require client certificates signed by this CA (mutual TLS).
        metrics_port: Prometheus metrics over HTTP (worker i listens on metrics_port + i).
        grace: seconds in-flight RPCs get to finish on SIGTERM.
        max_message_mb: largest request/response message.
        device: "cpu" or "cuda".
        model: model kind to serve (default: the manifest's).
        encoder_variant: fp32 / optimized / int8 / fp16 (default: the manifest's choice for the device).
        exact: score every item, ignoring the bundle's approximate index.
        candidate_budget_mb: memory for known users' precomputed candidate lists.
        state_dir: where the catalogue journal lives (store.py); None: catalogue changes are lost on
            restart (the server says so at start).
        catalog_url: a postgresql:// URL: the journal in PostgreSQL, shared by replicas (store_pg.py);
            wins over state_dir.
        max_connection_age: seconds after which the server asks a client connection to reconnect
            (GOAWAY, then ``grace`` for calls in flight), so clients balancing over DNS find replicas
            added since they connected; 0: never.
    """

    artifacts: Path | None = None
    host: str = "localhost"
    port: int = 50051
    workers: int = 1
    threads: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    max_concurrent_rpcs: int = 256
    # 64 probes: a load test's health RPC at concurrency 64 fits; starvation is prevented by the
    # pools being separate, not by their size.
    max_probe_rpcs: int = 64
    max_watch_streams: int = 16
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    metrics_port: int | None = None
    grace: float = 10.0
    max_message_mb: int = 16
    device: str = "cpu"
    model: str | None = None
    encoder_variant: str | None = None
    exact: bool = False
    candidate_budget_mb: float = 1024.0
    state_dir: Path | None = None
    catalog_url: str | None = field(default=None, repr=False)  # may carry a password
    max_connection_age: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, **overrides) -> ServerConfig:
        """Defaults, then TOWERSERVE_<FIELD> variables, then ``overrides`` that are not None."""
        values = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = str(f.type)
            try:
                if kind == "bool":
                    values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                elif "int" in kind and "Path" not in kind and "str" not in kind:
                    values[f.name] = int(raw)
                elif "float" in kind:
                    values[f.name] = float(raw)
                elif "Path" in kind:
                    values[f.name] = Path(raw)
                else:
                    values[f.name] = raw
            except ValueError:
                raise ValueError(f"{ENV_PREFIX + f.name.upper()}={raw!r} is not a valid {kind}") from None
        overrides = {k: v for k, v in overrides.items() if v is not None}
        # --token and --token-file are one setting from two sources: a flag for either one replaces
        # the environment's other (flags win), rather than the two colliding in validate().
        for given, other in (("token", "token_file"), ("token_file", "token")):
            if given in overrides:
                values.pop(other, None)
        values.update(overrides)
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
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"--device must be cpu or cuda (got {self.device!r})")
        for name in (
            "threads",
            "max_concurrent_rpcs",
            "max_probe_rpcs",
            "max_watch_streams",
            "max_message_mb",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.candidate_budget_mb < 0:
            raise ValueError(f"--candidate-budget-mb must be >= 0 (got {self.candidate_budget_mb})")
        if self.grace < 0:
            raise ValueError(f"--grace must be >= 0 (got {self.grace})")
        if self.max_connection_age < 0:
            raise ValueError(f"--max-connection-age must be >= 0 (got {self.max_connection_age})")
        if self.catalog_url and not self.catalog_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("--catalog-url must be a postgresql:// URL")
        if self.token and self.token_file:
            raise ValueError(
                "give --token or --token-file (TOWERSERVE_TOKEN or TOWERSERVE_TOKEN_FILE), not both"
            )
        if not (is_loopback(self.host) or self.token or self.token_file or self.tls_cert or self.insecure):
            raise ValueError(
                f"refusing to listen on {self.host}, which is not a loopback address, with neither a token "
                "nor TLS: anyone who can reach the port could call every RPC, Admin.Reload and UpsertItems "
                "included. Give a token (TOWERSERVE_TOKEN or --token-file) or TLS (--tls-cert/--tls-key), "
                "listen on localhost, or pass --insecure to serve an open port anyway"
            )

    def with_token_file(self) -> ServerConfig:
        """This configuration with ``token`` read from ``token_file`` (surrounding whitespace and the
        final newline stripped) and no file left to read; itself when there is no file.

        Raises:
            ValueError: the file cannot be read, or holds no token.
        """
        if self.token_file is None:
            return self
        try:
            token = Path(self.token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--token-file {self.token_file}: cannot read it: {err}") from None
        if not token:
            raise ValueError(f"--token-file {self.token_file} is empty: it must hold the bearer token")
        if not all("!" <= c <= "~" for c in token):
            # A client sends it as "authorization: Bearer <token>": header values are printable ASCII, and
            # a space or second line inside is more likely the wrong file than a token.
            raise ValueError(
                f"--token-file {self.token_file}: the token must be one word of printable ASCII characters"
            )
        return replace(self, token=token, token_file=None)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.model,
            device=self.device,
            encoder_variant=self.encoder_variant,
            # Upserted items are bounded so that max_top_n of them fit one response at this limit.
            limits=Limits(max_response_bytes=self.max_message_mb * 2**20),
            exact=self.exact,
            candidate_budget_mb=self.candidate_budget_mb,
        )
