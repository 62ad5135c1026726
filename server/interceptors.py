"""Server interceptors (grpc.aio): bearer-token authentication and Prometheus request metrics."""

from __future__ import annotations

import asyncio
import hmac
import time

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


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


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC but the health service.

    The token is compared in constant time and never logged or echoed.
    """

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        got = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value if isinstance(value, str) else value.decode("latin-1")
        if hmac.compare_digest(got.encode("utf-8", "replace"), self._expected):
            return handler
        message = (
            "missing authorization metadata" if not got else "invalid bearer token"
        ) + ": send 'authorization: Bearer <token>'"

        async def deny(request_or_iterator, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return _same_kind(handler, deny)


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


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts unary requests by method and status code, observes latency, tracks requests in flight.

    Installed outermost, so calls refused by authentication are counted too. (Calls refused by
    --max-concurrent-rpcs never reach any interceptor: gRPC rejects them first.)
    """

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming RPCs (reflection, health Watch) are not timed
        method = handler_call_details.method
        behavior = handler.unary_unary
        m = self.metrics

        async def timed(request, context):
            m.in_flight.inc()
            t0 = time.perf_counter()
            code = None
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                # gRPC cancels the handler when the client's deadline passes or the client goes away.
                left = context.time_remaining()
                code = (
                    grpc.StatusCode.DEADLINE_EXCEEDED
                    if left is not None and left <= 0
                    else grpc.StatusCode.CANCELLED
                )
                raise
            finally:
                code = code or context.code() or grpc.StatusCode.OK  # abort() has set it when the call failed
                m.requests.labels(method, getattr(code, "name", str(code))).inc()
                m.latency.labels(method).observe(time.perf_counter() - t0)
                m.in_flight.dec()

        return _same_kind(handler, timed)
