"""gRPC servicers: proto <-> engine conversion, validation and the one place errors become status codes."""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from towerserve.v1 import recommender_pb2 as pb

from ..core.config import ServerConfig
from ..core.limits import Limits
from ..core.manifest import ArtifactError
from ..core.rpcs import ADMIN, RECOMMENDER, Rpc
from ..core.types import Interaction, NewItemData, UserAttrs
from ..core.wire import recommend_wire
from ..engine import evaluation, scoring
from ..engine.deadline import Check, check_deadline
from ..engine.engine import Engine
from ..engine.errors import (
    GENERIC_INTERNAL,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServingError,
    bounded,
)
from ..engine.history import NO_HISTORY, History
from ..engine.validation import validate_inline, validate_score
from .batcher import Batcher
from .holder import EngineHolder

_LOGGER = logging.getLogger(__name__)
# Seconds the current RPC waited for a worker thread (None: it never left the event loop).
_QUEUED: contextvars.ContextVar[float | None] = contextvars.ContextVar("towerserve_queued", default=None)
# Requests in the current RPC's batch (None: it was not batched).
_BATCH: contextvars.ContextVar[int | None] = contextvars.ContextVar("towerserve_batch", default=None)

SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"].full_name
ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["Admin"].full_name
# Score pairs read (each history resolved: up to max_history dict lookups) between deadline checks;
# the engine's own pass over the pairs is dict lookups only (~10 ms for 10,000 pairs).
PAIRS_PER_CHECK = 256
SPLITS = {pb.SPLIT_UNSPECIFIED: "holdout", pb.SPLIT_HOLDOUT: "holdout", pb.SPLIT_COLD: "cold"}
PROTOCOLS = {pb.PROTOCOL_UNSPECIFIED: "full", pb.PROTOCOL_FULL: "full", pb.PROTOCOL_NOTEBOOK: "notebook"}


@dataclass(frozen=True)
class _Undecodable:
    """Stands in for a request whose bytes did not parse, so the handler can answer INVALID_ARGUMENT."""

    type_name: str
    error: str


def lenient(message_cls) -> Callable[[bytes], object]:
    """A request deserializer that reports parse errors to the handler instead of failing the RPC
    with INTERNAL ("Exception deserializing request") inside gRPC."""

    def deserialize(data: bytes):
        try:
            return message_cls.FromString(data)
        except DecodeError as err:
            return _Undecodable(message_cls.DESCRIPTOR.full_name, str(err))

    return deserialize


def rpc(method):
    """Maps ServingError to its status code and anything else to INTERNAL (traceback logged).

    ``context.abort`` raises, so it is awaited outside the ``try``. Every status message is cut to
    errors.MAX_DETAILS characters (clients drop oversized metadata, turning the error into
    RESOURCE_EXHAUSTED). A response over the engine's ``max_response_bytes`` (gRPC would fail it
    after the handler returned, uncounted) is refused here with RESOURCE_EXHAUSTED; the limits keep
    valid requests under it, so this is a safety net. A successful call gets a ``server-timing``
    trailer with the server-side time in milliseconds (``compute``), and, when it went through the
    worker pool, the time it waited there for a thread or its batch (``queue``), and for a batched
    Recommend its batch's size (``batch``), e.g. ``compute;dur=1.2345, queue;dur=0.0210, batch;desc=4``.
    """

    @functools.wraps(method)
    async def wrapper(self, request, context):
        t0 = time.perf_counter()
        _QUEUED.set(None)  # each RPC runs in its own task, so its own copy of the context
        _BATCH.set(None)
        try:
            if isinstance(request, _Undecodable):
                raise InvalidArgument(f"request is not a valid {request.type_name}: {request.error}")
            response = await method(self, request, context)
            _check_size(response, _max_response_bytes(self), method.__name__)
        except ServingError as err:
            code, message = err.code, err.message
        except Exception:
            _LOGGER.exception("unexpected error in %s", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, GENERIC_INTERNAL
        else:
            timing = f"compute;dur={(time.perf_counter() - t0) * 1e3:.4f}"
            if (queued := _QUEUED.get()) is not None:
                timing += f", queue;dur={queued * 1e3:.4f}"
            if (size := _BATCH.get()) is not None:
                timing += f", batch;desc={size}"
            context.set_trailing_metadata((("server-timing", timing),))
            return response
        await context.abort(code, bounded(message))

    return wrapper


def _max_response_bytes(servicer) -> int:
    """The serving engine's response limit (the default for a servicer without one)."""
    holder = getattr(servicer, "holder", None)
    try:
        return holder.get().limits.max_response_bytes if holder is not None else Limits().max_response_bytes
    except ServingError:  # no engine (yet): the default, as the server's gRPC limit
        return Limits().max_response_bytes


def _check_size(response, limit: int, name: str) -> None:
    """ResourceExhausted when ``response`` (a message, or bytes from recommend_wire) exceeds ``limit``."""
    size = len(response) if isinstance(response, bytes) else response.ByteSize()
    if size > limit:
        _LOGGER.warning("%s response of %d bytes refused: over max_response_bytes %d", name, size, limit)
        raise ResourceExhausted(
            f"the {name} response would be {size} bytes, over the server's {limit}-byte message limit; "
            "ask for fewer items (top_n) or pairs"
        )


def _serialize(message) -> bytes:
    """Responses are messages, or bytes already serialized by recommend_wire."""
    return message if isinstance(message, bytes) else message.SerializeToString()


def _user(msg) -> str | UserAttrs:
    which = msg.WhichOneof("user_ref")
    if which == "user_id":
        if not msg.user_id:
            raise InvalidArgument("user_id must not be empty")
        return msg.user_id
    if which == "user":
        a = msg.user
        return UserAttrs(age=a.age, profession=a.profession, personality=a.personality or None)
    raise InvalidArgument("give either user_id or user attributes (age, profession[, personality])")


def _tower_pass(engine: Engine, histories) -> bool:
    """Whether known users' histories need a user-tower pass (a history the model reads, its own or
    recorded, and no mean-pooling shortcut: mean_history.py); the shortcut is a small numpy sum,
    fine on the loop."""
    if engine.serving.mean_history is not None:
        return False
    return any(h.used for h in histories) or (
        engine.serving.history_input is not None and len(engine.live) > 0
    )


def _pairs(engine: Engine, msgs, check: Check) -> tuple[list, list[History]]:
    """ScorePair messages as (user, item id) pairs and their resolved histories."""
    pairs, histories = [], []
    for j, p in enumerate(msgs):
        if j % PAIRS_PER_CHECK == 0:
            check()
        if not p.item_id:
            raise InvalidArgument(f"pairs[{j}].item_id must not be empty")
        pairs.append((_user(p), p.item_id))
        histories.append(engine.history(p.history, f"pairs[{j}].history") if p.history else NO_HISTORY)
    return pairs, histories


def _score(engine: Engine, msgs, check: Check):
    """A big Score in the worker pool, reading its pairs included: (scores, histories)."""
    pairs, histories = _pairs(engine, msgs, check)
    return scoring.score(engine, pairs, histories, check), histories


def _evaluate(engine: Engine, request: pb.EvaluateRequest, split: str, protocol: str, check: Check):
    """Evaluate in the worker pool; inline interactions (up to 200,000) are read there too."""
    inline = [(x.user_id, x.item_id) for x in request.interactions] or None
    return evaluation.evaluate(engine, split, request.ks, protocol, inline, check)


class RecommenderServicer:
    """towerserve.v1.Recommender over an EngineHolder.

    Handlers run on the event loop only for work measured in microseconds: request checks and a
    known user's walk down their precomputed candidate list (~50 us, cheaper inline than a thread
    hand-off). Anything that scores the catalogue (exact or index search), runs a tower or the text
    encoder, big Score batches and Evaluate go to ``executor``, a bounded pool (``--threads``),
    so health checks and cheap calls never wait behind them. Recommends go there in batches
    (``batcher``: server/api/batcher.py; default, its default sizes).
    """

    INLINE_SCORE_PAIRS = 64

    def __init__(
        self, holder: EngineHolder, executor: Executor | None = None, batcher: Batcher | None = None
    ):
        self.holder = holder
        self.executor = executor
        self.batcher = batcher or recommend_batcher(executor)

    async def _offload(self, fn, *args):
        return await offload(self.executor, fn, *args)

    @rpc
    async def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendResponse:
        engine = self.holder.get()
        pr = request.price_range if request.HasField("price_range") else None
        user = _user(request)
        planned = engine.plan(  # counts are checked before any per-entry work: no list() copies
            user,
            request.top_n,
            request.exclude_seen if request.HasField("exclude_seen") else True,
            pr.min if pr is not None and pr.HasField("min") else None,
            pr.max if pr is not None and pr.HasField("max") else None,
            request.categories,
            request.exclude_item_ids,
            engine.history(request.history),
            request.history,
        )
        hit = engine.answer_inline(planned)  # a candidate-list walk: microseconds, no catalogue scan
        if hit is None:
            check = check_deadline(context.time_remaining, cancelled=context.cancelled)
            hit, queued, size = await self.batcher.submit(engine, planned, check)
            _QUEUED.set(queued)
            _BATCH.set(size)
        top, scores = hit
        cat, history = planned.query.cat, planned.history
        return recommend_wire(cat.wire, top, scores, engine.model_version, history.used)

    @rpc
    async def Score(self, request: pb.ScoreRequest, context) -> pb.ScoreResponse:
        engine = self.holder.get()
        validate_score(len(request.pairs), engine.limits)  # before any per-pair work
        check = check_deadline(context.time_remaining, cancelled=context.cancelled)
        if len(request.pairs) > self.INLINE_SCORE_PAIRS:  # even reading the pairs goes to the pool
            scores, histories = await self._offload(_score, engine, request.pairs, check)
        else:
            pairs, histories = _pairs(engine, request.pairs, check)
            known = all(isinstance(u, str) for u, _ in pairs)
            if known and not _tower_pass(engine, histories):
                scores = scoring.score(engine, pairs, histories, check)
            else:
                scores = await self._offload(scoring.score, engine, pairs, histories, check)
        used = [h.used for h in histories] if any(h.sent for h in histories) else []
        return pb.ScoreResponse(scores=scores.tolist(), model_version=engine.model_version, history_used=used)

    @rpc
    async def Evaluate(self, request: pb.EvaluateRequest, context) -> pb.EvaluateResponse:
        engine = self.holder.get()
        t0 = time.perf_counter()
        if request.split not in SPLITS:
            raise InvalidArgument(f"unknown split {request.split}")
        if request.protocol not in PROTOCOLS:
            raise InvalidArgument(f"unknown protocol {request.protocol}")
        if request.interactions:
            validate_inline(len(request.interactions), engine.limits)  # before they are copied
        check = check_deadline(context.time_remaining, cancelled=context.cancelled)
        metrics, users = await self._offload(
            _evaluate, engine, request, SPLITS[request.split], PROTOCOLS[request.protocol], check
        )
        return pb.EvaluateResponse(
            metrics=metrics,
            users=users,
            seconds=time.perf_counter() - t0,
            model_version=engine.model_version,
            split="inline" if request.interactions else SPLITS[request.split],
            protocol=PROTOCOLS[request.protocol],
        )

    @rpc
    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context) -> pb.GetModelInfoResponse:
        # ModelInfo holds exactly the response's fields (a test checks they match). In the pool: it
        # counts the journal's entries, a scan in SQLite and a round trip to PostgreSQL.
        self.holder.get()  # UNAVAILABLE before the thread hand-off while the model loads
        info = await self._offload(self.holder.info)
        return pb.GetModelInfoResponse(**dataclasses.asdict(info))

    @rpc
    async def UpsertItems(self, request: pb.UpsertItemsRequest, context) -> pb.UpsertItemsResponse:
        self.holder.get()  # UNAVAILABLE before the thread hand-off while the model loads
        items = [
            NewItemData(x.item_id, x.description, x.features, x.price, x.category) for x in request.items
        ]
        check = check_deadline(context.time_remaining, cancelled=context.cancelled)
        engine, reply, done = await self._offload(self.holder.upsert, items, check, request.write_id)
        return pb.UpsertItemsResponse(
            **reply, model_version=engine.model_version, sequence=done.seq, repeated=done.reply is not None
        )

    @rpc
    async def DeleteItems(self, request: pb.DeleteItemsRequest, context) -> pb.DeleteItemsResponse:
        self.holder.get()
        check = check_deadline(context.time_remaining, cancelled=context.cancelled)
        engine, reply, done = await self._offload(
            self.holder.delete, list(request.item_ids), check, request.write_id
        )
        return pb.DeleteItemsResponse(
            **reply, model_version=engine.model_version, sequence=done.seq, repeated=done.reply is not None
        )

    @rpc
    async def RecordInteractions(
        self, request: pb.RecordInteractionsRequest, context
    ) -> pb.RecordInteractionsResponse:
        self.holder.get()
        events = [
            Interaction(e.user_id, e.item_id, e.timestamp, e.kind, e.weight, e.event_id)
            for e in request.events
        ]
        check = check_deadline(context.time_remaining, cancelled=context.cancelled)
        engine, reply, done = await self._offload(
            self.holder.record, events, request.create_users, check, request.write_id
        )
        return pb.RecordInteractionsResponse(
            recorded=reply.get("recorded", 0),
            duplicates=reply.get("duplicates", 0),
            created_users=reply.get("created_users", 0),
            sequence=done.seq,
            repeated=done.reply is not None,
            model_version=engine.model_version,
        )


def recommend_batcher(
    executor: Executor | None,
    size: int = ServerConfig.batch_size,
    delay_us: int = ServerConfig.batch_delay_us,
    workers: int = 2,
    observe=None,
) -> Batcher:
    """The Recommends' batcher: a batch is planned requests on one engine snapshot, answered by
    Engine.answer_batch in ``executor`` (``workers`` threads); ``observe``: batch size and queue
    times, for the metrics."""
    return Batcher(
        executor, lambda engine, batch: engine.answer_batch(batch), size, delay_us, workers, observe
    )


async def offload(executor: Executor | None, fn, *args):
    """``fn(*args)`` in the worker pool; the wait for a free thread is added to the RPC's ``queue``."""
    submitted = time.perf_counter()

    def timed():
        waited = time.perf_counter() - submitted
        return waited, fn(*args)

    waited, result = await asyncio.get_running_loop().run_in_executor(executor, timed)
    _QUEUED.set((_QUEUED.get() or 0.0) + waited)
    return result


# The one answer for every folder a Reload names that the server will not load, whatever the reason:
# telling "missing" from "not a folder" from "outside the root" would tell a caller which paths exist.
NOT_A_BUNDLE = (
    "reload refused, still serving the previous model: the requested bundle is not under the bundle "
    "root or is not a valid bundle"
)


def _bundle_under(root: Path | None, requested: str) -> Path | None:
    """The folder ``requested`` names (taken from ``root`` unless absolute), symlinks and ``..``
    resolved, when it is an existing directory inside ``root``; None otherwise, and always without a root.

    The resolved path is what gets loaded: the links it went through were followed here, once. (Whoever
    can write inside the root can still swap a folder for a link after this check: the root is for
    operators only, like the bundles in it.)
    """
    if root is None:
        return None
    try:
        base = root.resolve(strict=True)
        path = (base / requested).resolve(strict=True)
    except (OSError, ValueError, RuntimeError):  # missing, a NUL byte, a name too long, a symlink loop
        return None
    return path if path.is_relative_to(base) and path.is_dir() else None


class AdminServicer:
    """towerserve.v1.Admin: hot reload (loading runs in the executor; requests keep flowing).

    Args:
        holder: the engine holder.
        executor: the worker pool loading runs in.
        bundle_root: a Reload naming a folder loads it only when it lies under this one (None: a
            Reload may only reload the folder being served).
    """

    def __init__(
        self, holder: EngineHolder, executor: Executor | None = None, bundle_root: Path | None = None
    ):
        self.holder = holder
        self.executor = executor
        self.bundle_root = bundle_root

    @rpc
    async def Reload(self, request: pb.ReloadRequest, context) -> pb.ReloadResponse:
        path = None  # the folder being served, which its operator chose
        if request.artifacts and (path := _bundle_under(self.bundle_root, request.artifacts)) is None:
            _LOGGER.warning(
                "reload of %.300r refused: not a folder under the bundle root %s",
                request.artifacts,
                self.bundle_root,
            )
            raise FailedPrecondition(NOT_A_BUNDLE)
        # Checked again just before the swap: a client that gave up must not find the model changed anyway.
        check = check_deadline(context.time_remaining, cancelled=context.cancelled)

        def load():
            # Logged here, in the worker thread: once the deadline passes, gRPC has cancelled the handler
            # and nobody awaits what this raises.
            try:
                check()
                return self.holder.load(path, check)
            except DeadlineExceeded as err:
                _LOGGER.warning("reload abandoned before the swap, still serving the previous model: %s", err)
                raise

        try:
            engine, previous, seconds = await offload(self.executor, load)
        except (ArtifactError, OSError, ValueError) as err:
            _LOGGER.error("reload refused, still serving the previous model: %s", err)
            raise FailedPrecondition(f"reload refused, still serving the previous model: {err}") from err
        _LOGGER.info(
            "reloaded %s -> %s in %.2f s",
            previous.model_version if previous else None,
            engine.model_version,
            seconds,
        )
        return pb.ReloadResponse(
            model_version=engine.model_version,
            previous_model_version=previous.model_version if previous else "",
            seconds=seconds,
        )


def generic_handlers(
    holder: EngineHolder,
    executor: Executor | None = None,
    bundle_root: Path | None = None,
    batcher: Batcher | None = None,
) -> list[grpc.GenericRpcHandler]:
    """Method handlers for both services, one per RPC of the proto, with lenient request parsing;
    ``bundle_root`` bounds what Admin.Reload may load; ``batcher`` groups Recommends for the pool.

    Raises:
        AttributeError: an RPC of the proto has no handler method on its servicer.
    """

    def build(rpcs: dict[str, Rpc], servicer) -> grpc.GenericRpcHandler:
        (service,) = {r.service for r in rpcs.values()}
        return grpc.method_handlers_generic_handler(
            service,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    getattr(servicer, name),
                    request_deserializer=lenient(rpc.request),
                    response_serializer=_serialize,
                )
                for name, rpc in rpcs.items()
            },
        )

    return [
        build(RECOMMENDER, RecommenderServicer(holder, executor, batcher)),
        build(ADMIN, AdminServicer(holder, executor, bundle_root)),
    ]
