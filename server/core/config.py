"""Configuration records: how the server runs (flags > environment > defaults) and how the engine loads."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .access import Right
from .limits import Limits


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
        live_budget_events: recorded interactions held in memory over every user (server/engine/live.py);
            past it the least recently recorded users' are evicted and read back from the journal.
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
    live_budget_events: int = 2_000_000
    limits: Limits = field(default_factory=Limits)


ENV_PREFIX = "TOWERSERVE_"
# The bearer-token options by the right each grants; each has a *_file twin. "token" is the single
# token of old: every right, so a configuration from before rights still means what it meant.
TOKENS = {
    "token": Right.ADMIN,
    "read_token": Right.READ,
    "write_token": Right.WRITE,
    "admin_token": Right.ADMIN,
}


def _read_token(path: Path, flag: str) -> str:
    """The bearer token in the file at ``path`` (``flag`` names it in errors).

    Raises:
        ValueError: the file cannot be read, is empty, or holds more than one word of printable ASCII.
    """
    try:
        token = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{flag} {path}: cannot read it: {err}") from None
    if not token:
        raise ValueError(f"{flag} {path} is empty: it must hold the bearer token")
    if not all("!" <= c <= "~" for c in token):
        # A client sends it as "authorization: Bearer <token>": header values are printable ASCII, and
        # a space or second line inside is more likely the wrong file than a token.
        raise ValueError(f"{flag} {path}: the token must be one word of printable ASCII characters")
    return token


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


# `serve --help` shows the options in these groups, in this order.
GROUPS = {
    "bundle": "what to serve",
    "network": "where to listen",
    "access": "who may call (token, TLS)",
    "capacity": "processes, threads and admission",
    "catalogue": "durable catalogue changes",
    "operations": "metrics, draining and connections",
}


def option(
    default=None, *, group: str, help: str, choices: tuple[str, ...] | None = None, factory=None, **kw
):
    """A ServerConfig field that is also a `towerserve serve` flag: ``--name-with-dashes``, typed from
    the annotation, shown in ``group`` with ``help`` (server/api/cli.py builds the parser from these)."""
    if group not in GROUPS:
        raise ValueError(f"unknown option group {group!r}")
    meta = {"group": group, "help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class ServerConfig:
    """Everything `towerserve serve` takes; flags > TOWERSERVE_* environment > these defaults.

    Each field is written once: its ``option`` metadata is the flag's group and help, and
    server/api/cli.py derives the flag (``--max-concurrent-rpcs`` for ``max_concurrent_rpcs``) and its
    type from the field. The comments say why a default is what it is.
    """

    artifacts: Path | None = option(
        group="bundle",
        help="serving folder written by `towerserve export` (ARTIFACTS/serving); the training folder "
        "ARTIFACTS itself also works",
    )
    model: str | None = option(
        group="bundle", help="model kind to serve, one of the manifest's (default: best holdout NDCG@10)"
    )
    device: str = option(
        "cpu",
        group="bundle",
        choices=("cpu", "cuda"),
        help="ONNX Runtime device (default cpu; cuda falls back to cpu with a warning when unavailable)",
    )
    encoder_variant: str | None = option(
        group="bundle",
        choices=("fp32", "optimized", "int8", "fp16"),
        help="text encoder graph (default: int8 on CPU when it passed its gate, fp16 on CUDA)",
    )
    exact: bool = option(
        False,
        group="bundle",
        help="score every item, ignoring the bundle's approximate index (a reference, or a way out)",
    )
    candidate_budget_mb: float = option(
        1024.0,
        group="bundle",
        help="memory for known users' precomputed top-128 lists (default 1024; beyond it, none are kept)",
    )
    # ~100 bytes an event (an id, a row, their share of a user's sums): 2,000,000 is ~200 MB.
    live_budget_events: int = option(
        2_000_000,
        group="bundle",
        help="recorded interactions kept in memory over every user (default 2,000,000, ~200 MB); past it "
        "the least recently recorded users' are evicted and read back from the journal when served",
    )
    # Admin.Reload may load any folder under it, and nothing else: a token that leaks cannot make the
    # server read what it was never meant to serve. None: the parent of --artifacts as given, where
    # `towerserve export` output sits beside the bundle being served.
    bundle_root: Path | None = option(
        group="bundle",
        help="Admin.Reload loads only folders under this one, symlinks and .. resolved (default: the parent "
        "folder of --artifacts); a relative Reload path is taken from here",
    )
    # Loopback by default: a server is reachable from other machines only when asked (see insecure).
    host: str = option(
        "localhost",
        group="network",
        help="listen address (default localhost: this machine only; [::] or 0.0.0.0 for every interface, "
        "which needs a token, mutual TLS or --insecure)",
    )
    port: int = option(50051, group="network", help="port (default 50051; 0 picks a free one)")
    max_message_mb: int = option(
        16, group="network", help="largest request or response message, MB (default 16)"
    )
    # Rights: read (Recommend, Score, Evaluate, GetModelInfo, reflection) < write (UpsertItems,
    # DeleteItems) < admin (Reload); each token grants its right and every lower one (core/access.py).
    # --token is the one token of old, every right; two rights may share a secret only on purpose.
    token: str | None = option(
        group="access",
        repr=False,  # never logged
        help="require 'authorization: Bearer TOKEN' on every RPC but health; this token may call every RPC "
        "(the admin right). Visible to every local user in ps: prefer --token-file or TOWERSERVE_TOKEN",
    )
    token_file: Path | None = option(
        group="access",
        help="read --token from this file (surrounding whitespace stripped; an empty file is refused); "
        "keep it chmod 600",
    )
    read_token: str | None = option(
        group="access",
        repr=False,
        help="a token for reads only: Recommend, Score, Evaluate, GetModelInfo and reflection (prefer "
        "--read-token-file or TOWERSERVE_READ_TOKEN)",
    )
    read_token_file: Path | None = option(group="access", help="read --read-token from this file")
    write_token: str | None = option(
        group="access",
        repr=False,
        help="a token for reads and catalogue writes (UpsertItems, DeleteItems), not Reload (prefer "
        "--write-token-file or TOWERSERVE_WRITE_TOKEN)",
    )
    write_token_file: Path | None = option(group="access", help="read --write-token from this file")
    admin_token: str | None = option(
        group="access",
        repr=False,
        help="a token for every RPC, Admin.Reload included, like --token (prefer --admin-token-file or "
        "TOWERSERVE_ADMIN_TOKEN)",
    )
    admin_token_file: Path | None = option(group="access", help="read --admin-token from this file")
    insecure: bool = option(
        False,
        group="access",
        help="allow a non-loopback --host with neither a token nor client certificates (--tls-client-ca) "
        "(refused otherwise; logs a warning)",
    )
    tls_cert: Path | None = option(group="access", help="TLS certificate chain (PEM)")
    tls_key: Path | None = option(group="access", help="TLS private key (PEM)")
    tls_client_ca: Path | None = option(
        group="access", help="require client certificates signed by this CA (mutual TLS)"
    )
    # Forked before any server exists; they share the port through SO_REUSEPORT.
    workers: int = option(1, group="capacity", help="processes sharing the port via SO_REUSEPORT (default 1)")
    # Every extra thread is one more contender for the GIL the event loop needs, and ONNX Runtime and
    # FAISS already run a call on a core each: everything that scores the catalogue, runs a tower or
    # the encoder, Evaluate, UpsertItems and reload runs here; only checks and candidate-list walks
    # (microseconds) run on the gRPC event loop itself.
    threads: int = option(
        group="capacity",
        factory=lambda: max(2, os.cpu_count() or 2),
        help="worker pool threads per process for heavy work (default: the CPU count, >= 2)",
    )
    # Dynamic batching (server/api/batcher.py) of the Recommends a candidate list cannot answer; the
    # defaults are measured (docs/benchmarks.md, "Dynamic batching"): a batch of 32 searches or tower
    # rows costs a fraction of the 32 hand-offs it replaces, and 0.5 ms is ~1/4 of one 10⁵-item search
    # with its hand-off, which a request waits for at most, and only while another batch runs.
    batch_size: int = option(
        32,
        group="capacity",
        help="Recommends the worker pool answers in one batch, at most (dynamic batching; 1: each "
        "alone; default 32)",
    )
    batch_delay_us: int = option(
        500,
        group="capacity",
        help="microseconds a Recommend bound for the pool waits for others to join its batch, at most, "
        "and only while another batch is running (default 500)",
    )
    max_concurrent_rpcs: int = option(
        256,
        group="capacity",
        help="authenticated RPCs in flight; beyond this, RESOURCE_EXHAUSTED (default 256; health calls "
        "and calls refused for their token do not count)",
    )
    # 64 probes: a load test's health RPC at concurrency 64 fits; starvation is prevented by the
    # pools being separate, not by their size.
    max_probe_rpcs: int = option(
        64,
        group="capacity",
        help="health Check/Watch calls and calls refused for their token in flight, a separate cap so they "
        "cannot take the slots of authenticated RPCs (default 64)",
    )
    # A Watch stream lives as long as its client wants: without a cap of its own it could crowd out Checks.
    max_watch_streams: int = option(
        16,
        group="capacity",
        help="open health Watch streams, each also holding a probe slot (default 16; gRPC client-side "
        "health checking holds one per client connection)",
    )
    state_dir: Path | None = option(
        group="catalogue",
        help="journal catalogue changes (UpsertItems, DeleteItems) here before acknowledging them, and "
        "replay them at start and on Reload (default: none, changes are lost on restart)",
    )
    catalog_url: str | None = option(
        group="catalogue",
        repr=False,  # may carry a password
        help="journal catalogue changes in PostgreSQL (postgresql://USER@HOST/DB; the 'postgres' extra), "
        "shared by every replica: each applies the others' changes within a second; wins over --state-dir. "
        "Prefer TOWERSERVE_CATALOG_URL: a password in a flag is visible in ps",
    )
    metrics_port: int | None = option(
        group="operations", help="Prometheus metrics over HTTP on this port (+ worker index)"
    )
    # The metrics endpoint has no token: it listens where gRPC does by default, on this machine only.
    # 127.0.0.1 rather than localhost: the HTTP server binds one address, and a scraper on this
    # machine dials 127.0.0.1 whichever way localhost resolves.
    metrics_host: str = option(
        "127.0.0.1",
        group="operations",
        help="listen address of the metrics endpoint (default 127.0.0.1; [::] or 0.0.0.0 so that a "
        "Prometheus on another machine can scrape it: it needs no token)",
    )
    grace: float = option(
        10.0, group="operations", help="seconds to drain in-flight RPCs on SIGTERM (default 10)"
    )
    # GOAWAY, then ``grace`` for calls in flight: clients balancing over DNS find replicas added since.
    max_connection_age: float = option(
        300.0,
        group="operations",
        help="seconds before a client connection is asked to reconnect, so dns:/// clients find new "
        "replicas (default 300; 0: never)",
    )

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
        # --token and --token-file are one setting from two sources (and so for each right's token): a
        # flag for either one replaces the environment's other (flags win), rather than the two
        # colliding in validate().
        for name in TOKENS:
            for given, other in ((name, name + "_file"), (name + "_file", name)):
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
            "batch_size",
            "max_concurrent_rpcs",
            "max_probe_rpcs",
            "max_watch_streams",
            "max_message_mb",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if self.batch_delay_us < 0:
            raise ValueError(f"--batch-delay-us must be >= 0 (got {self.batch_delay_us})")
        if self.live_budget_events < 1:
            raise ValueError(f"--live-budget-events must be >= 1 (got {self.live_budget_events})")
        if self.candidate_budget_mb < 0:
            raise ValueError(f"--candidate-budget-mb must be >= 0 (got {self.candidate_budget_mb})")
        if self.grace < 0:
            raise ValueError(f"--grace must be >= 0 (got {self.grace})")
        if self.max_connection_age < 0:
            raise ValueError(f"--max-connection-age must be >= 0 (got {self.max_connection_age})")
        if self.catalog_url and not self.catalog_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("--catalog-url must be a postgresql:// URL")
        for name in TOKENS:
            if getattr(self, name) and getattr(self, name + "_file"):
                flag, env = name.replace("_", "-"), ENV_PREFIX + name.upper()
                raise ValueError(f"give --{flag} or --{flag}-file ({env} or {env}_FILE), not both")
        if not (is_loopback(self.host) or self.authenticates or self.insecure):
            # Server-only TLS encrypts the connection but does not say who is calling.
            raise ValueError(
                f"refusing to listen on {self.host}, which is not a loopback address, with neither a token "
                "nor client certificates: anyone who can reach the port could call every RPC, Admin.Reload "
                "and UpsertItems included (TLS without --tls-client-ca encrypts, it does not authenticate). "
                "Give a token (TOWERSERVE_TOKEN or --token-file; --read-token, --write-token and "
                "--admin-token for one right each) or mutual TLS (--tls-client-ca), listen on localhost, or "
                "pass --insecure to serve an open port anyway"
            )

    @property
    def authenticates(self) -> bool:
        """Whether callers must prove who they are: a token of any right, or a client certificate."""
        return bool(self.tls_client_ca) or any(
            getattr(self, name) or getattr(self, name + "_file") for name in TOKENS
        )

    def grants(self) -> list[tuple[str, Right]]:
        """(secret, right) for every token configured (after :meth:`with_token_file`)."""
        return [(getattr(self, name), right) for name, right in TOKENS.items() if getattr(self, name)]

    def with_token_file(self) -> ServerConfig:
        """This configuration with each token read from its file (``token`` from ``token_file``,
        ``read_token`` from ``read_token_file``, ...; surrounding whitespace and the final newline
        stripped) and no file left to read; itself when there is none.

        Raises:
            ValueError: a file cannot be read, or holds no token.
        """
        read = {}
        for name in TOKENS:
            if (path := getattr(self, name + "_file")) is not None:
                read[name] = _read_token(path, f"--{name.replace('_', '-')}-file")
                read[name + "_file"] = None
        return replace(self, **read) if read else self

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.model,
            device=self.device,
            encoder_variant=self.encoder_variant,
            # Upserted items are bounded so that max_top_n of them fit one response at this limit.
            limits=Limits(max_response_bytes=self.max_message_mb * 2**20),
            exact=self.exact,
            candidate_budget_mb=self.candidate_budget_mb,
            live_budget_events=self.live_budget_events,
        )
