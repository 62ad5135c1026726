"""Server interceptors (grpc.aio): access (bearer tokens and their rights, admission limits) and Prometheus
request metrics.

Everything here runs on the server's one event loop thread, so the slot counters need no lock: nothing
awaits between checking a pool and taking its slot.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from ..core.access import HEALTH_PREFIX, Right, needed

WATCH = HEALTH_PREFIX + "Watch"


def _same_kind(handler: grpc.RpcMethodHandler, behavior) -> grpc.RpcMethodHandler:
    """A handler of ``handler``'s streaming kind and (de)serializers that runs ``behavior``."""
    kw = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(behavior, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(behavior, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(behavior, **kw)
    return grpc.stream_stream_rpc_method_handler(behavior, **kw)


def _behavior(handler: grpc.RpcMethodHandler):
    return handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream


def _guarded(handler: grpc.RpcMethodHandler, guard) -> grpc.RpcMethodHandler:
    """``handler`` whose behaviour runs inside ``async with guard(context)``, for the whole call: a
    stream's too, until it ends or is cancelled.

    The wrapper is of the behaviour's own kind (coroutine function or async generator function):
    grpc.aio inspects the function to decide how to run it.
    """
    behavior = _behavior(handler)
    if inspect.isasyncgenfunction(behavior):

        async def run(request_or_iterator, context):
            async with guard(context):
                async for response in behavior(request_or_iterator, context):
                    yield response

    else:

        async def run(request_or_iterator, context):
            async with guard(context):
                return await behavior(request_or_iterator, context)

    return _same_kind(handler, run)


class _Cache:
    """Wrapped handlers by the handler they wrap and a key: building one costs microseconds, on every
    call, and the server's handlers are registered once and live as long as it does.

    Entries keep the handler itself, so an id is never mistaken for a reused one; past ``size``
    entries (handlers built per call by some future generic handler) nothing more is kept."""

    def __init__(self, size: int = 1024):
        self._entries: dict[tuple[int, object], tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._size = size

    def get(self, handler: grpc.RpcMethodHandler, key, build) -> grpc.RpcMethodHandler:
        hit = self._entries.get((id(handler), key))
        if hit is not None and hit[0] is handler:
            return hit[1]
        wrapped = build()
        if len(self._entries) < self._size:
            self._entries[(id(handler), key)] = (handler, wrapped)
        return wrapped


# ------------------------------------------------------------------------------------------- access


@dataclass
class Pool:
    """Slots for one kind of call; ``refusal`` is the RESOURCE_EXHAUSTED message naming the limit."""

    limit: int
    refusal: str
    in_use: int = 0


class _Admission:
    """Holds one slot of each pool for the duration of a call, or refuses it with RESOURCE_EXHAUSTED."""

    __slots__ = ("_pools", "_context")

    def __init__(self, pools: tuple[Pool, ...], context):
        self._pools, self._context = pools, context

    async def __aenter__(self) -> None:
        for pool in self._pools:
            if pool.in_use >= pool.limit:
                await self._context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, pool.refusal)
        for pool in self._pools:  # no await since the check: no other call ran in between
            pool.in_use += 1

    async def __aexit__(self, *exc) -> None:
        for pool in self._pools:
            pool.in_use -= 1


class AccessInterceptor(grpc.aio.ServerInterceptor):
    """Who may call what, and how many at once.

    With tokens configured, every RPC but the health service needs ``authorization: Bearer <token>``
    for a token whose right covers the RPC (core/access.py: read < write < admin). Tokens are compared
    in constant time, every one on every call, and never logged or echoed. No token, or one that is not
    configured: UNAUTHENTICATED; a configured token whose right is too low: PERMISSION_DENIED.
    Admission replaces gRPC's own maximum_concurrent_rpcs, which counted every call alike, so that
    token-less health streams could take every slot:

    * authenticated calls (every call when there is no token) hold a slot of --max-concurrent-rpcs;
    * health Check, Watch and calls refused for their token (either status) hold one of
      --max-probe-rpcs instead;
    * a Watch stream also holds one of --max-watch-streams, so open streams cannot crowd out Checks.

    Beyond a limit the call gets RESOURCE_EXHAUSTED naming it. A slot is held until the call ends:
    a stream's until it finishes or its client cancels it.
    """

    def __init__(
        self, grants: Sequence[tuple[str, Right]], max_rpcs: int, max_probes: int, max_watches: int
    ) -> None:
        """``grants``: (token, right) for each token configured (ServerConfig.grants); none: open."""
        self._expected = [(f"Bearer {token}".encode(), right) for token, right in grants]
        self.rpcs = Pool(
            max_rpcs, f"Concurrent RPC limit exceeded: {max_rpcs} RPCs in flight (--max-concurrent-rpcs)"
        )
        self.probes = Pool(
            max_probes,
            f"Concurrent probe limit exceeded: {max_probes} health checks and unauthenticated calls in "
            "flight (--max-probe-rpcs)",
        )
        self.watches = Pool(
            max_watches,
            f"Health Watch stream limit exceeded: {max_watches} streams open (--max-watch-streams)",
        )
        self._cache = _Cache()
        # One tuple and one guard per class of call, built once: the per-call cost is the guard object.
        self._classes = {
            name: (lambda context, pools=pools: _Admission(pools, context))
            for name, pools in (
                ("rpc", (self.rpcs,)),
                ("probe", (self.probes,)),
                ("watch", (self.watches, self.probes)),
            )
        }

    def in_use(self) -> dict[str, int]:
        """Slots held now, per pool (tests check that every call gives its slot back)."""
        return {"rpcs": self.rpcs.in_use, "probes": self.probes.in_use, "watches": self.watches.in_use}

    def _refusal(self, handler_call_details, need: Right) -> tuple[grpc.StatusCode, str] | None:
        """Why the call's token is refused (status and message), or None when it may pass."""
        if not self._expected:
            return None
        got = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value if isinstance(value, str) else value.decode("latin-1")
        presented, granted = got.encode("utf-8", "replace"), 0
        for expected, right in self._expected:  # every one: the time taken says nothing of which matched
            if hmac.compare_digest(presented, expected):
                granted = max(granted, right)
        if granted >= need:
            return None
        if not granted:
            why = "missing authorization metadata" if not got else "invalid bearer token"
            return grpc.StatusCode.UNAUTHENTICATED, f"{why}: send 'authorization: Bearer <token>'"
        method = handler_call_details.method.lstrip("/")
        return grpc.StatusCode.PERMISSION_DENIED, (
            f"{method} needs the {need.label} right; this token grants {Right(granted).label} only"
        )

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        need = needed(method)
        if need is None:  # health: load balancers carry no token
            kind = "watch" if method == WATCH else "probe"
            return self._cache.get(handler, kind, lambda: _guarded(handler, self._classes[kind]))
        if (refused := self._refusal(handler_call_details, need)) is None:
            return self._cache.get(handler, "rpc", lambda: _guarded(handler, self._classes["rpc"]))
        code, reason = refused

        async def deny(request_or_iterator, context):
            await context.abort(code, reason)

        return self._cache.get(
            handler, reason, lambda: _guarded(_same_kind(handler, deny), self._classes["probe"])
        )


# ------------------------------------------------------------------------------------------ metrics


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (one per server, so tests and
    several servers in one process never collide); ``registry`` is what the HTTP endpoint exports."""

    def __init__(self, registry=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "towerserve_requests",
            "RPCs by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        # Buckets from 50 us: a Recommend is a fraction of a millisecond, an Evaluate a second.
        self.latency = Histogram(
            "towerserve_request_seconds",
            "RPC latency inside the server",
            ["method"],
            buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1, 2.5, 10),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "towerserve_in_flight_requests", "RPCs being handled now", registry=self.registry
        )
        self.batch_size = Histogram(
            "towerserve_batch_size",
            "Recommends per batch sent to the worker pool (dynamic batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.batch_queue = Histogram(
            "towerserve_batch_queue_seconds",
            "a batched Recommend's wait from arrival to the start of its batch",
            buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 0.1, 1),
            registry=self.registry,
        )

    def observe_batch(self, size: int, queued: list[float]) -> None:
        self.batch_size.observe(size)
        for q in queued:
            self.batch_queue.observe(q)


class _Measured:
    """Counts one call by its final status code; a unary call is also timed and tracked in flight."""

    __slots__ = ("_metrics", "_method", "_context", "_timed", "_t0")

    def __init__(self, metrics: Metrics, method: str, context, timed: bool):
        self._metrics, self._method, self._context, self._timed = metrics, method, context, timed

    async def __aenter__(self) -> None:
        if self._timed:
            self._metrics.in_flight.inc()
        self._t0 = time.perf_counter()

    async def __aexit__(self, kind, err, tb) -> None:
        context = self._context
        if kind is asyncio.CancelledError or kind is GeneratorExit:
            # gRPC cancels the handler when the client's deadline passes or the client goes away.
            left = context.time_remaining()
            code = (
                grpc.StatusCode.DEADLINE_EXCEEDED
                if left is not None and left <= 0
                else grpc.StatusCode.CANCELLED
            )
        else:
            # abort() has set the code when the call failed; an exception that escaped is UNKNOWN to gRPC.
            code = context.code() or (grpc.StatusCode.UNKNOWN if err is not None else grpc.StatusCode.OK)
        m = self._metrics
        m.requests.labels(self._method, getattr(code, "name", str(code))).inc()
        if self._timed:
            m.latency.labels(self._method).observe(time.perf_counter() - self._t0)
            m.in_flight.dec()


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts every call by method and status code; unary calls are also timed and tracked in flight
    (streams such as health Watch live as long as their client wants: their duration says nothing).

    Installed outermost, so calls refused by the access interceptor (UNAUTHENTICATED, PERMISSION_DENIED,
    and RESOURCE_EXHAUSTED beyond a concurrency limit) are counted too.
    """

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._cache = _Cache()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method, timed, m = handler_call_details.method, handler.unary_unary is not None, self.metrics
        return self._cache.get(
            handler, method, lambda: _guarded(handler, lambda context: _Measured(m, method, context, timed))
        )
