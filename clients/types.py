"""The client library's types: what calls take and return, its one error, its TLS and retry settings."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

# One record of GetModelInfoResponse for server and client (server/types.py is plain stdlib).
from towerserve.server.types import ModelInfo  # noqa: F401 - re-exported


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
    inserted: int
    updated: int
    item_count: int
    model_version: str


@dataclass(frozen=True)
class DeleteResult:
    deleted: int
    item_count: int
    model_version: str


@dataclass(frozen=True)
class ReloadResult:
    model_version: str
    previous_model_version: str
    seconds: float


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, applied to UNAVAILABLE only (the server is starting, reloading
    or briefly unreachable). Every other code is final: retrying INVALID_ARGUMENT cannot help."""

    attempts: int = 4
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2

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
