"""Requests built from the client's arguments and replies parsed into its types; shared by both clients."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from typing import Any

from towerserve.server.core.wire import encode_varint
from towerserve.v1 import recommender_pb2 as pb

from .types import (
    DeleteResult,
    Evaluation,
    Interaction,
    ItemData,
    ModelInfo,
    Recommendation,
    RecommendedItem,
    RecordResult,
    Scores,
    UpsertResult,
    User,
)

HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SPLITS = {"holdout": pb.SPLIT_HOLDOUT, "cold": pb.SPLIT_COLD}
PROTOCOLS = {"full": pb.PROTOCOL_FULL, "notebook": pb.PROTOCOL_NOTEBOOK}


def who(user_id: str | None, user: User | None) -> str | User:
    if (user_id is None) == (user is None):
        raise ValueError("give exactly one of user_id or user")
    return user_id if user_id is not None else user


def _history(user: str | User, history: Sequence[str] | None) -> list[str]:
    """The ids to send: ``history``, or the User's own; a str is one id, never its characters."""
    own = user.history if isinstance(user, User) else ()
    if history is not None and own:
        raise ValueError("give the history once: as history=... or as User(history=...), not both")
    ids = own if history is None else history
    if isinstance(ids, str):
        raise TypeError(f"history must be a sequence of item ids, not a str ({ids!r})")
    return list(ids)


def _user_fields(user: str | User, history: Sequence[str] | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"history": _history(user, history)}
    if isinstance(user, User):
        fields["user"] = pb.UserAttributes(
            age=user.age, profession=user.profession, personality=user.personality
        )
    else:
        fields["user_id"] = user
    return fields


def recommend_request(
    user, top_n, exclude_seen, price_min, price_max, categories, exclude_item_ids, history=None
) -> pb.RecommendRequest:
    req = pb.RecommendRequest(
        top_n=top_n,
        exclude_seen=exclude_seen,
        categories=list(categories),
        exclude_item_ids=list(exclude_item_ids),
        **_user_fields(user, history),
    )
    if price_min is not None:
        req.price_range.min = price_min
    if price_max is not None:
        req.price_range.max = price_max
    return req


def recommendation(r: pb.RecommendResponse) -> Recommendation:
    return Recommendation(
        [
            RecommendedItem(i.item_id, i.score, i.price, i.description, i.features, i.category)
            for i in r.items
        ],
        r.model_version,
        r.history_used,
    )


def score_request(pairs: Sequence[tuple]) -> pb.ScoreRequest:
    """Pairs are (user id or User, item id), or (user id or User, item id, history ids)."""
    out = []
    for j, pair in enumerate(pairs):
        if len(pair) not in (2, 3):
            raise ValueError(f"pairs[{j}] must be (user, item_id) or (user, item_id, history) (got {pair!r})")
        user, item, *history = pair
        out.append(pb.ScorePair(item_id=item, **_user_fields(user, history[0] if history else None)))
    return pb.ScoreRequest(pairs=out)


def scores(r: pb.ScoreResponse) -> Scores:
    return Scores(list(r.scores), r.model_version, list(r.history_used))


def evaluate_request(split, ks, protocol, interactions) -> pb.EvaluateRequest:
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


def evaluation(r: pb.EvaluateResponse) -> Evaluation:
    return Evaluation(dict(r.metrics), r.users, r.seconds, r.model_version, r.split, r.protocol)


def model_info(r: pb.GetModelInfoResponse) -> ModelInfo:
    """ModelInfo from the response: its fields are the response's, repeated ones as lists, maps as dicts."""
    values = {}
    for f in dataclasses.fields(ModelInfo):
        v = getattr(r, f.name)
        values[f.name] = (
            v if isinstance(v, (str, int, float, bool)) else (dict(v) if hasattr(v, "items") else list(v))
        )
    return ModelInfo(**values)


def new_write_id() -> str:
    """A fresh write id for one UpsertItems/DeleteItems call, kept across its retries: the server
    applies a write id once and answers a repeat from its journal (see balancing.py)."""
    return uuid.uuid4().hex


def upsert_request(items: Sequence[ItemData], write_id: str = "") -> pb.UpsertItemsRequest:
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
        ],
        write_id=write_id or new_write_id(),
    )


def record_request(
    events: Sequence[Interaction], create_users: bool = False, write_id: str = ""
) -> pb.RecordInteractionsRequest:
    return pb.RecordInteractionsRequest(
        events=[
            pb.InteractionEvent(
                user_id=e.user_id,
                item_id=e.item_id,
                timestamp=e.timestamp,
                kind=e.kind,
                weight=e.weight,
                event_id=e.event_id,
            )
            for e in events
        ],
        create_users=create_users,
        write_id=write_id or new_write_id(),
    )


def record_result(r: pb.RecordInteractionsResponse) -> RecordResult:
    return RecordResult(r.recorded, r.duplicates, r.created_users, r.model_version, r.sequence, r.repeated)


def delete_request(item_ids: Sequence[str], write_id: str = "") -> pb.DeleteItemsRequest:
    return pb.DeleteItemsRequest(item_ids=list(item_ids), write_id=write_id or new_write_id())


def upsert_result(r: pb.UpsertItemsResponse) -> UpsertResult:
    return UpsertResult(r.inserted, r.updated, r.item_count, r.model_version, r.sequence, r.repeated)


def delete_result(r: pb.DeleteItemsResponse) -> DeleteResult:
    return DeleteResult(r.deleted, r.item_count, r.model_version, r.sequence, r.repeated)


def health_request(service: str) -> bytes:
    # grpc.health.v1.HealthCheckRequest{service = 1}; encoded by hand so the client needs no
    # grpcio-health-checking.
    data = service.encode()
    return (b"\x0a" + encode_varint(len(data)) + data) if data else b""


def health_status(data: bytes) -> str:
    # HealthCheckResponse{status = 1 (enum)}: absent means 0 (UNKNOWN).
    return HEALTH_STATUS.get(data[1], "UNKNOWN") if len(data) >= 2 and data[0] == 0x08 else "UNKNOWN"
