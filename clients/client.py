"""Python client for towerserve.v1: typed results, one error type, retries on UNAVAILABLE only.

Needs only grpcio and protobuf (``pip install towerserve``), never numpy, onnxruntime, TensorFlow
or torch. The synchronous :class:`RecommenderClient` and the asyncio :class:`AsyncRecommenderClient`
share the request builders and response parsers below, so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from towerserve.v1 import recommender_pb2 as pb

RECOMMENDER = "/towerserve.v1.Recommender/"
ADMIN = "/towerserve.v1.Admin/"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SPLITS = {"holdout": pb.SPLIT_HOLDOUT, "cold": pb.SPLIT_COLD}
PROTOCOLS = {"full": pb.PROTOCOL_FULL, "notebook": pb.PROTOCOL_NOTEBOOK}


# --------------------------------------------------------------------------------------------- types


class TowerserveError(Exception):
    """Any failed call. ``code`` is the grpc.StatusCode, ``details`` the server's message."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str):
        super().__init__(f"{method} failed: {code.name}: {details}")
        self.method, self.code, self.details = method, code, details


@dataclass(frozen=True)
class User:
    """An unseen user, described by attributes (cold start)."""

    age: float
    profession: str
    personality: str = ""


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


@dataclass(frozen=True)
class Scores:
    scores: list[float]
    model_version: str


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    users: int
    seconds: float
    model_version: str
    split: str
    protocol: str


@dataclass(frozen=True)
class ModelInfo:
    model_version: str
    model_kind: str
    user_independent_ranking: bool
    item_count: int
    user_count: int
    providers: list[str]
    encoder: str
    encoder_variant: str
    vector_dim: int
    user_fields: list[str]
    item_fields: list[str]
    training_metrics: dict[str, float]
    versions: dict[str, str]
    artifacts: str
    loaded_at: str
    max_top_n: int
    max_score_pairs: int
    max_upsert_items: int
    max_inline_interactions: int
    categories: list[str]


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


# ----------------------------------------------------------------------------- requests and replies


def _user_fields(user: str | User) -> dict[str, Any]:
    if isinstance(user, User):
        return {
            "user": pb.UserAttributes(age=user.age, profession=user.profession, personality=user.personality)
        }
    return {"user_id": user}


def _recommend_request(
    user, top_n, exclude_seen, price_min, price_max, categories, exclude_item_ids
) -> pb.RecommendRequest:
    req = pb.RecommendRequest(
        top_n=top_n,
        exclude_seen=exclude_seen,
        categories=list(categories),
        exclude_item_ids=list(exclude_item_ids),
        **_user_fields(user),
    )
    if price_min is not None:
        req.price_range.min = price_min
    if price_max is not None:
        req.price_range.max = price_max
    return req


def _recommendation(r: pb.RecommendResponse) -> Recommendation:
    return Recommendation(
        [
            RecommendedItem(i.item_id, i.score, i.price, i.description, i.features, i.category)
            for i in r.items
        ],
        r.model_version,
    )


def _score_request(pairs: Sequence[tuple[str | User, str]]) -> pb.ScoreRequest:
    return pb.ScoreRequest(pairs=[pb.ScorePair(item_id=item, **_user_fields(user)) for user, item in pairs])


def _evaluate_request(split, ks, protocol, interactions) -> pb.EvaluateRequest:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)} (got {split!r})")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {sorted(PROTOCOLS)} (got {protocol!r})")
    return pb.EvaluateRequest(
        split=SPLITS[split],
        ks=list(ks),
        protocol=PROTOCOLS[protocol],
        interactions=[pb.Interaction(user_id=u, item_id=i) for u, i in interactions or ()],
    )


def _evaluation(r: pb.EvaluateResponse) -> Evaluation:
    return Evaluation(dict(r.metrics), r.users, r.seconds, r.model_version, r.split, r.protocol)


def _model_info(r: pb.GetModelInfoResponse) -> ModelInfo:
    return ModelInfo(
        r.model_version,
        r.model_kind,
        r.user_independent_ranking,
        r.item_count,
        r.user_count,
        list(r.providers),
        r.encoder,
        r.encoder_variant,
        r.vector_dim,
        list(r.user_fields),
        list(r.item_fields),
        dict(r.training_metrics),
        dict(r.versions),
        r.artifacts,
        r.loaded_at,
        r.max_top_n,
        r.max_score_pairs,
        r.max_upsert_items,
        r.max_inline_interactions,
        list(r.categories),
    )


def _upsert_request(items: Sequence[ItemData]) -> pb.UpsertItemsRequest:
    return pb.UpsertItemsRequest(
        items=[
            pb.NewItem(
                item_id=i.item_id,
                description=i.description,
                features=i.features,
                price=i.price,
                category=i.category,
            )
            for i in items
        ]
    )


def _health_request(service: str) -> bytes:
    # grpc.health.v1.HealthCheckRequest{service = 1}; encoded by hand so the client needs no
    # grpcio-health-checking.
    data = service.encode()
    return (b"\x0a" + encode_varint(len(data)) + data) if data else b""


def encode_varint(n: int) -> bytes:
    """Protobuf base-128 varint (used for hand-spliced messages here and in the server)."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _health_status(data: bytes) -> str:
    # HealthCheckResponse{status = 1 (enum)}: absent means 0 (UNKNOWN).
    return HEALTH_STATUS.get(data[1], "UNKNOWN") if len(data) >= 2 and data[0] == 0x08 else "UNKNOWN"


_METHODS: dict[str, tuple[str, Callable, Callable]] = {
    "Recommend": (
        RECOMMENDER + "Recommend",
        pb.RecommendRequest.SerializeToString,
        pb.RecommendResponse.FromString,
    ),
    "Score": (RECOMMENDER + "Score", pb.ScoreRequest.SerializeToString, pb.ScoreResponse.FromString),
    "Evaluate": (
        RECOMMENDER + "Evaluate",
        pb.EvaluateRequest.SerializeToString,
        pb.EvaluateResponse.FromString,
    ),
    "GetModelInfo": (
        RECOMMENDER + "GetModelInfo",
        pb.GetModelInfoRequest.SerializeToString,
        pb.GetModelInfoResponse.FromString,
    ),
    "UpsertItems": (
        RECOMMENDER + "UpsertItems",
        pb.UpsertItemsRequest.SerializeToString,
        pb.UpsertItemsResponse.FromString,
    ),
    "Reload": (ADMIN + "Reload", pb.ReloadRequest.SerializeToString, pb.ReloadResponse.FromString),
    "Health": (HEALTH_CHECK, None, None),  # raw bytes both ways
}


def _credentials(tls: TLS | bool | None) -> grpc.ChannelCredentials | None:
    if not tls:
        return None
    tls = TLS() if tls is True else tls
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    return grpc.ssl_channel_credentials(
        read(tls.root_certificates), read(tls.client_key), read(tls.client_cert)
    )


def _channel_options(tls: TLS | bool | None, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    opts = list(options)
    if isinstance(tls, TLS) and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return opts


class _Base:
    def __init__(
        self,
        target: str,
        *,
        tls: TLS | bool | None = None,
        token: str | None = None,
        timeout: float | None = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        options: Sequence[tuple[str, Any]] = (),
    ):
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._creds = _credentials(tls)
        self._options = _channel_options(tls, options)

    def _error(self, name: str, err: grpc.RpcError) -> TowerserveError:
        # The one place where grpc.RpcError becomes the client's error type.
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        details = err.details() if callable(getattr(err, "details", None)) else str(err)
        return TowerserveError(name, code or grpc.StatusCode.UNKNOWN, details or "")


class RecommenderClient(_Base):
    """Synchronous client; use as a context manager (``with RecommenderClient("host:50051") as c:``).

    Args:
        target: "host:port".
        tls: None/False for plaintext, True for TLS with system roots, or a :class:`TLS`.
        token: sent as ``authorization: Bearer <token>`` on every call.
        timeout: default per-call deadline in seconds (None: none).
        retry: backoff on UNAVAILABLE.
        options: extra gRPC channel options.
    """

    def __init__(self, target: str, **kwargs):
        super().__init__(target, **kwargs)
        self._channel = (
            grpc.secure_channel(target, self._creds, self._options)
            if self._creds
            else grpc.insecure_channel(target, self._options)
        )
        self._calls = {
            name: self._channel.unary_unary(path, request_serializer=ser, response_deserializer=de)
            for name, (path, ser, de) in _METHODS.items()
        }

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, name: str, request, timeout: float | None):
        timeout = self.timeout if timeout is None else timeout
        delays = self.retry.delays()
        while True:
            try:
                return self._calls[name](request, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    delay = next(delays, None)
                    if delay is not None:
                        time.sleep(delay)
                        continue
                raise self._error(name, err) from None

    def recommend(
        self,
        user_id: str | None = None,
        *,
        user: User | None = None,
        top_n: int = 10,
        exclude_seen: bool = True,
        price_min: float | None = None,
        price_max: float | None = None,
        categories: Sequence[str] = (),
        exclude_item_ids: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Recommendation:
        """Top-N items for a known user (``user_id``) or an unseen one (``user``)."""
        who = _who(user_id, user)
        return _recommendation(
            self._call(
                "Recommend",
                _recommend_request(
                    who, top_n, exclude_seen, price_min, price_max, categories, exclude_item_ids
                ),
                timeout,
            )
        )

    def score(self, pairs: Sequence[tuple[str | User, str]], timeout: float | None = None) -> Scores:
        """Probabilities for (user id or User, item id) pairs, in order."""
        r = self._call("Score", _score_request(pairs), timeout)
        return Scores(list(r.scores), r.model_version)

    def evaluate(
        self,
        split: str = "holdout",
        ks: Sequence[int] = (5, 10, 20),
        protocol: str = "full",
        interactions: Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> Evaluation:
        """Ranking metrics of the served model on a recorded split or inline (user, item) positives."""
        return _evaluation(
            self._call("Evaluate", _evaluate_request(split, ks, protocol, interactions), timeout)
        )

    def model_info(self, timeout: float | None = None) -> ModelInfo:
        return _model_info(self._call("GetModelInfo", pb.GetModelInfoRequest(), timeout))

    def upsert_items(self, items: Sequence[ItemData], timeout: float | None = None) -> UpsertResult:
        r = self._call("UpsertItems", _upsert_request(items), timeout)
        return UpsertResult(r.inserted, r.updated, r.item_count, r.model_version)

    def reload(self, artifacts: str = "", timeout: float | None = None) -> ReloadResult:
        r = self._call("Reload", pb.ReloadRequest(artifacts=artifacts), timeout)
        return ReloadResult(r.model_version, r.previous_model_version, r.seconds)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The standard health Check: SERVING or NOT_SERVING ("" is the whole server). A service
        the server does not know raises TowerserveError with NOT_FOUND, as the protocol says."""
        return _health_status(self._call("Health", _health_request(service), timeout))


class AsyncRecommenderClient(_Base):
    """The asyncio (grpc.aio) twin of :class:`RecommenderClient`; ``async with`` it."""

    def __init__(self, target: str, **kwargs):
        super().__init__(target, **kwargs)
        self._channel = (
            grpc.aio.secure_channel(target, self._creds, self._options)
            if self._creds
            else grpc.aio.insecure_channel(target, self._options)
        )
        self._calls = {
            name: self._channel.unary_unary(path, request_serializer=ser, response_deserializer=de)
            for name, (path, ser, de) in _METHODS.items()
        }

    async def __aenter__(self) -> AsyncRecommenderClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, name: str, request, timeout: float | None):
        timeout = self.timeout if timeout is None else timeout
        delays = self.retry.delays()
        while True:
            try:
                return await self._calls[name](request, timeout=timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    delay = next(delays, None)
                    if delay is not None:
                        await asyncio.sleep(delay)
                        continue
                raise self._error(name, err) from None

    async def recommend(
        self,
        user_id: str | None = None,
        *,
        user: User | None = None,
        top_n: int = 10,
        exclude_seen: bool = True,
        price_min: float | None = None,
        price_max: float | None = None,
        categories: Sequence[str] = (),
        exclude_item_ids: Sequence[str] = (),
        timeout: float | None = None,
    ) -> Recommendation:
        who = _who(user_id, user)
        return _recommendation(
            await self._call(
                "Recommend",
                _recommend_request(
                    who, top_n, exclude_seen, price_min, price_max, categories, exclude_item_ids
                ),
                timeout,
            )
        )

    async def score(self, pairs: Sequence[tuple[str | User, str]], timeout: float | None = None) -> Scores:
        r = await self._call("Score", _score_request(pairs), timeout)
        return Scores(list(r.scores), r.model_version)

    async def evaluate(
        self,
        split: str = "holdout",
        ks: Sequence[int] = (5, 10, 20),
        protocol: str = "full",
        interactions: Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> Evaluation:
        return _evaluation(
            await self._call("Evaluate", _evaluate_request(split, ks, protocol, interactions), timeout)
        )

    async def model_info(self, timeout: float | None = None) -> ModelInfo:
        return _model_info(await self._call("GetModelInfo", pb.GetModelInfoRequest(), timeout))

    async def upsert_items(self, items: Sequence[ItemData], timeout: float | None = None) -> UpsertResult:
        r = await self._call("UpsertItems", _upsert_request(items), timeout)
        return UpsertResult(r.inserted, r.updated, r.item_count, r.model_version)

    async def reload(self, artifacts: str = "", timeout: float | None = None) -> ReloadResult:
        r = await self._call("Reload", pb.ReloadRequest(artifacts=artifacts), timeout)
        return ReloadResult(r.model_version, r.previous_model_version, r.seconds)

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        return _health_status(await self._call("Health", _health_request(service), timeout))


def _who(user_id: str | None, user: User | None) -> str | User:
    if (user_id is None) == (user is None):
        raise ValueError("give exactly one of user_id or user")
    return user_id if user_id is not None else user
