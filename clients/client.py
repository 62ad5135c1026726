"""Python client for towerserve.v1: typed results, one error type, retries on UNAVAILABLE only.

Needs only grpcio and protobuf (``pip install towerserve``), never numpy, onnxruntime, TensorFlow
or torch. The synchronous :class:`RecommenderClient` (here) and the asyncio
:class:`AsyncRecommenderClient` (aio.py) share the request builders and response parsers of
convert.py and the call table of base.py (read from the proto's descriptors), so they cannot drift.
Everything a caller needs is importable from this module.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc

from towerserve.v1 import recommender_pb2 as pb

from . import convert
from .aio import AsyncRecommenderClient
from .base import HEALTH, Base
from .types import (
    TLS,
    DeleteResult,
    Evaluation,
    Interaction,
    ItemData,
    ModelInfo,
    Recommendation,
    RecommendedItem,
    RecordResult,
    ReloadResult,
    RetryPolicy,
    Scores,
    TowerserveError,
    UpsertResult,
    User,
)

__all__ = [
    "TLS",
    "AsyncRecommenderClient",
    "Evaluation",
    "Interaction",
    "ItemData",
    "ModelInfo",
    "Recommendation",
    "RecommendedItem",
    "RecommenderClient",
    "RecordResult",
    "ReloadResult",
    "RetryPolicy",
    "Scores",
    "TowerserveError",
    "UpsertResult",
    "User",
]


class RecommenderClient(Base):
    """Synchronous client; use as a context manager (``with RecommenderClient("host:50051") as c:``).

    Args:
        target: any gRPC target: "host:port", "dns:///host:port", "ipv4:10.0.0.1:50051,10.0.0.2:50051",
            "unix:/path"; calls are spread round_robin over its addresses (see balancing.py).
        tls: None/False for plaintext, True for TLS with system roots, or a :class:`TLS`.
        token: sent as ``authorization: Bearer <token>`` on every call.
        timeout: default deadline in seconds of each try of a call (None: none).
        retry: backoff and failover on UNAVAILABLE, for every RPC but reload (:class:`RetryPolicy`).
        options: extra gRPC channel options (they replace the client's own, key by key).
        interceptors: ``grpc.UnaryUnaryClientInterceptor``s (tracing, metadata), outermost first; the
            asyncio client takes ``grpc.aio`` interceptors.
    """

    def __init__(self, target: str, **kwargs):
        super().__init__(target, **kwargs)
        self._channel = (
            grpc.secure_channel(target, self._creds, self._options)
            if self._creds
            else grpc.insecure_channel(target, self._options)
        )
        # Interceptors see every try of a call (the retry loop is outside them).
        intercepted = (
            grpc.intercept_channel(self._channel, *self._interceptors) if self._interceptors else None
        )
        self._calls = self._bind(intercepted or self._channel)

    def __enter__(self) -> RecommenderClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, name: str, request, timeout: float | None):
        timeout = self.timeout if timeout is None else timeout
        delays = self._delays(name)
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
        history: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Recommendation:
        """Top-N items for a known user (``user_id``) or an unseen one (``user``).

        ``history``: item ids the user interacted with, most recent first (or give ``User(history=...)``);
        a model that reads histories personalises with them, and ``history_used`` says how many it
        knew.
        """
        who = convert.who(user_id, user)
        request = convert.recommend_request(
            who, top_n, exclude_seen, price_min, price_max, categories, exclude_item_ids, history
        )
        return convert.recommendation(self._call("Recommend", request, timeout))

    def score(self, pairs: Sequence[tuple], timeout: float | None = None) -> Scores:
        """Probabilities for (user id or User, item id) pairs, in order; a pair may carry a third
        element, the user's history (item ids, most recent first)."""
        return convert.scores(self._call("Score", convert.score_request(pairs), timeout))

    def evaluate(
        self,
        split: str = "holdout",
        ks: Sequence[int] = (5, 10, 20),
        protocol: str = "full",
        interactions: Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> Evaluation:
        """Ranking metrics of the served model on a recorded split or inline (user, item) positives."""
        request = convert.evaluate_request(split, ks, protocol, interactions)
        return convert.evaluation(self._call("Evaluate", request, timeout))

    def model_info(self, timeout: float | None = None) -> ModelInfo:
        """What is being served (GetModelInfo)."""
        return convert.model_info(self._call("GetModelInfo", pb.GetModelInfoRequest(), timeout))

    def upsert_items(
        self, items: Sequence[ItemData], timeout: float | None = None, write_id: str = ""
    ) -> UpsertResult:
        """Adds or replaces catalogue items; recommendable as soon as this returns.

        ``write_id`` names the write (default: a fresh UUID). Every retry of this call sends the same
        one, so the server applies it once; pass your own to make a retry of your own (after a crash,
        from another process) just as safe.
        """
        return convert.upsert_result(
            self._call("UpsertItems", convert.upsert_request(items, write_id), timeout)
        )

    def delete_items(
        self, item_ids: Sequence[str], timeout: float | None = None, write_id: str = ""
    ) -> DeleteResult:
        """Removes catalogue items (ids the server lacks are journaled, not counted); gone from results
        once this returns. ``write_id`` as in :meth:`upsert_items`."""
        return convert.delete_result(
            self._call("DeleteItems", convert.delete_request(item_ids, write_id), timeout)
        )

    def record_interactions(
        self,
        events: Sequence[Interaction],
        create_users: bool = False,
        timeout: float | None = None,
        write_id: str = "",
    ) -> RecordResult:
        """Records what users did; their next Recommend (on that replica at once, on others within a
        second) pools it and leaves the items out. Journaled before OK; ``write_id`` as in
        :meth:`upsert_items`, and each event's ``event_id`` makes it count once. ``create_users``: unknown
        user ids become users with an empty profile (else NOT_FOUND)."""
        request = convert.record_request(events, create_users, write_id)
        return convert.record_result(self._call("RecordInteractions", request, timeout))

    def reload(self, artifacts: str = "", timeout: float | None = None) -> ReloadResult:
        """Admin: loads ``artifacts`` ("" : the folder being served) and swaps it in. Never retried
        (see balancing.py), and refused (ValueError) on a target listing several replicas: reload
        each by its own address."""
        self._one_server("Reload")
        r = self._call("Reload", pb.ReloadRequest(artifacts=artifacts), timeout)
        return ReloadResult(r.model_version, r.previous_model_version, r.seconds)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The standard health Check: SERVING or NOT_SERVING ("" is the whole server). A service
        the server does not know raises TowerserveError with NOT_FOUND, as the protocol says."""
        return convert.health_status(self._call(HEALTH, convert.health_request(service), timeout))
