"""The client library's types: what calls take and return, its one error, its TLS and retry settings."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

# One record of GetModelInfoResponse for server and client (server/core/types.py is plain stdlib).
from towerserve.server.core.types import ModelInfo  # noqa: F401 - re-exported

# gRPC clients cap a retry policy's maxAttempts at 5 (a larger value is silently read as 5).
MAX_FAILOVER = 5


class TowerserveError(Exception):
    """Any failed call. ``code`` is the grpc.StatusCode, ``details`` the server's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str):
        super().__init__(f"{method} failed: {code.name}: {details}")
        self.method, self.code, self.details = method, code, details


@dataclass(frozen=True)
class User:
    """An unseen user, described by attributes (cold start), and optionally the items of their session
    (``history``, most recent first), which a model with GetModelInfo.max_history > 0 reads."""

    age: float
    profession: str
    personality: str = ""
    history: Sequence[str] = ()


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    score: float
    price: float
    description: str
    features: str
    category: str


@dataclass(frozen=True)
class Recommendation:
    items: list[RecommendedItem]
    model_version: str
    history_used: int = 0  # distinct history items the model read (unknown ids are ignored)


@dataclass(frozen=True)
class Scores:
    scores: list[float]
    model_version: str
    history_used: list[int] = field(default_factory=list)  # per pair; empty when no pair had a history


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    users: int
    seconds: float
    model_version: str
    split: str
    protocol: str


@dataclass(frozen=True)
class ItemData:
    """A catalogue item to add or replace with upsert_items."""

    item_id: str
    description: str
    features: str
    price: float
    category: str


@dataclass(frozen=True)
class UpsertResult:
    """``sequence``: the write's place in the journal (0 without one); ``repeated``: the server had
    already applied this call's write id (a retry whose first try committed), and the counts are
    that first application's."""

    inserted: int
    updated: int
    item_count: int
    model_version: str
    sequence: int = 0
    repeated: bool = False


@dataclass(frozen=True)
class DeleteResult:
    """As :class:`UpsertResult`."""

    deleted: int
    item_count: int
    model_version: str
    sequence: int = 0
    repeated: bool = False


@dataclass(frozen=True)
class Interaction:
    """Something a user did, for :meth:`RecommenderClient.record_interactions`.

    ``timestamp``: seconds since the epoch (0: when the server receives it); ``kind``: a label kept
    for training ("click", "purchase"); ``weight``: how much it counts (0 means 1); ``event_id``: your
    id of the event: one the server has journaled is not recorded again (a retry across calls or
    processes is safe)."""

    user_id: str
    item_id: str
    timestamp: float = 0.0
    kind: str = ""
    weight: float = 0.0
    event_id: str = ""


@dataclass(frozen=True)
class RecordResult:
    """``recorded``: events journaled now; ``duplicates``: events whose event_id was already journaled;
    ``created_users``: users created (create_users); ``sequence`` and ``repeated`` as in UpsertResult."""

    recorded: int
    duplicates: int
    created_users: int
    model_version: str
    sequence: int = 0
    repeated: bool = False


@dataclass(frozen=True)
class ReloadResult:
    model_version: str
    previous_model_version: str
    seconds: float


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE (a server starting, reloading, draining or gone), and only of RPCs that
    are safe to repeat: every RPC but Admin.Reload (see clients/balancing.py for why, and for how the
    two retry layers share the work). Every other code is final: retrying INVALID_ARGUMENT cannot help.

    ``attempts`` tries, each with the call's full timeout, separated by exponential backoff with
    jitter (``delays``). Within one try, the channel fails over: an UNAVAILABLE goes at once to the
    next replica round_robin picks, up to ``failover`` attempts in all, under that try's deadline.
    ``failover`` None means one attempt per address the target lists (``ipv4:a:p,b:p,c:p`` -> 3, at
    most 5, gRPC's cap), and 1 for a single address or a DNS name (give the number of replicas a
    name resolves to). ``RetryPolicy(attempts=1)`` is one attempt, failover included, unless
    ``failover`` says otherwise.
    """

    attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    failover: int | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be at least 1 (got {self.attempts})")
        if self.failover is not None and not 1 <= self.failover <= MAX_FAILOVER:
            raise ValueError(f"RetryPolicy.failover must be 1..{MAX_FAILOVER} (got {self.failover})")

    def delays(self):
        delay = self.initial_backoff
        for _ in range(self.attempts - 1):
            yield delay * (1.0 + random.uniform(-self.jitter, self.jitter))
            delay = min(self.max_backoff, delay * self.multiplier)


@dataclass(frozen=True)
class TLS:
    """TLS settings: the CA that signed the server (None: system roots), and an optional client
    certificate for mutual TLS."""

    root_certificates: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    server_name: str | None = None  # override the name checked against the certificate
