"""Server interceptors: bearer-token authentication and Prometheus request metrics."""

from __future__ import annotations

import hmac
import time

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as ``handler`` that aborts UNAUTHENTICATED."""

    def abort(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    return grpc.stream_stream_rpc_method_handler(abort, **kw)


class AuthInterceptor(grpc.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` on every RPC but the health service.

    The token is compared in constant time and never logged or echoed.
    """

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        got = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                got = value if isinstance(value, str) else value.decode("latin-1")
        if hmac.compare_digest(got.encode("utf-8", "replace"), self._expected):
            return handler
        reason = "missing authorization metadata" if not got else "invalid bearer token"
        return _deny(handler, f"{reason}: send 'authorization: Bearer <token>'")


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts requests by method and status code, observes latency, tracks requests in flight."""

    def __init__(self, registry=None):
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        registry = registry or REGISTRY
        self.requests = Counter("towerserve_requests", "RPCs by method and status code", ["method", "code"],
                                registry=registry)
        # Buckets from 50 us: a Recommend is a fraction of a millisecond, an Evaluate a second.
        self.latency = Histogram("towerserve_request_seconds", "RPC latency inside the server", ["method"],
                                 buckets=(5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.25, 1, 2.5, 10),
                                 registry=registry)
        self.in_flight = Gauge("towerserve_in_flight_requests", "RPCs being handled now", registry=registry)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming RPCs (reflection, health Watch) are not timed
        method = handler_call_details.method
        behavior = handler.unary_unary
        requests, latency, in_flight = self.requests, self.latency, self.in_flight

        def timed(request, context):
            in_flight.inc()
            t0 = time.perf_counter()
            try:
                return behavior(request, context)
            finally:
                code = context.code() or grpc.StatusCode.OK  # abort() has set it when the call failed
                requests.labels(method, code.name).inc()
                latency.labels(method).observe(time.perf_counter() - t0)
                in_flight.dec()

        return grpc.unary_unary_rpc_method_handler(timed, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)
