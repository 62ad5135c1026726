"""The asyncio (grpc.aio) client: the twin of client.RecommenderClient, method for method."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from towerserve.v1 import recommender_pb2 as pb

from . import convert
from .base import HEALTH, Base
from .types import (
    DeleteResult,
    Evaluation,
    Interaction,
    ItemData,
    ModelInfo,
    Recommendation,
    RecordResult,
    ReloadResult,
    Scores,
    UpsertResult,
    User,
)


class AsyncRecommenderClient(Base):
    """The asyncio twin of :class:`~towerserve.clients.client.RecommenderClient`; ``async with`` it."""

    def __init__(self, target: str, **kwargs):
        super().__init__(target, **kwargs)
        self._channel = (
            grpc.aio.secure_channel(target, self._creds, self._options, interceptors=self._interceptors)
            if self._creds
            else grpc.aio.insecure_channel(target, self._options, interceptors=self._interceptors)
        )
        self._calls = self._bind(self._channel)

    async def __aenter__(self) -> AsyncRecommenderClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, name: str, request, timeout: float | None):
        timeout = self.timeout if timeout is None else timeout
        delays = self._delays(name)
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
        history: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Recommendation:
        who = convert.who(user_id, user)
        request = convert.recommend_request(
            who, top_n, exclude_seen, price_min, price_max, categories, exclude_item_ids, history
        )
        return convert.recommendation(await self._call("Recommend", request, timeout))

    async def score(self, pairs: Sequence[tuple], timeout: float | None = None) -> Scores:
        return convert.scores(await self._call("Score", convert.score_request(pairs), timeout))

    async def evaluate(
        self,
        split: str = "holdout",
        ks: Sequence[int] = (5, 10, 20),
        protocol: str = "full",
        interactions: Sequence[tuple[str, str]] | None = None,
        timeout: float | None = None,
    ) -> Evaluation:
        request = convert.evaluate_request(split, ks, protocol, interactions)
        return convert.evaluation(await self._call("Evaluate", request, timeout))

    async def model_info(self, timeout: float | None = None) -> ModelInfo:
        return convert.model_info(await self._call("GetModelInfo", pb.GetModelInfoRequest(), timeout))

    async def upsert_items(
        self, items: Sequence[ItemData], timeout: float | None = None, write_id: str = ""
    ) -> UpsertResult:
        # One write id for every try of this call (convert.new_write_id): applied once.
        return convert.upsert_result(
            await self._call("UpsertItems", convert.upsert_request(items, write_id), timeout)
        )

    async def delete_items(
        self, item_ids: Sequence[str], timeout: float | None = None, write_id: str = ""
    ) -> DeleteResult:
        return convert.delete_result(
            await self._call("DeleteItems", convert.delete_request(item_ids, write_id), timeout)
        )

    async def record_interactions(
        self,
        events: Sequence[Interaction],
        create_users: bool = False,
        timeout: float | None = None,
        write_id: str = "",
    ) -> RecordResult:
        request = convert.record_request(events, create_users, write_id)
        return convert.record_result(await self._call("RecordInteractions", request, timeout))

    async def reload(self, artifacts: str = "", timeout: float | None = None) -> ReloadResult:
        self._one_server("Reload")
        r = await self._call("Reload", pb.ReloadRequest(artifacts=artifacts), timeout)
        return ReloadResult(r.model_version, r.previous_model_version, r.seconds)

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        return convert.health_status(await self._call(HEALTH, convert.health_request(service), timeout))
