"""The stock health and reflection services, registered with lenient request parsing: bytes that do
not parse are INVALID_ARGUMENT, as on the project's own services (the stock registrations fail them
as UNKNOWN). Everything else is the stock servicers' own logic."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from towerserve.v1 import recommender_pb2

from .servicer import lenient

# What reflection lists: both towerserve services, health, and reflection itself.
SERVICE_NAMES = (
    recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name,
    recommender_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


async def _refuse(request_cls, request, context) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request is not a valid {request_cls.DESCRIPTOR.full_name}: {getattr(request, 'error', '')}",
    )


def health_handler(servicer: health_aio.HealthServicer) -> grpc.GenericRpcHandler:
    """The stock health service's Check and Watch, with lenient request parsing: bytes that do not
    parse are INVALID_ARGUMENT, as on our own services (the stock registration fails them as UNKNOWN).
    Everything else is the stock servicer's own logic."""
    request_cls = health_pb2.HealthCheckRequest

    async def check(request, context):
        if not isinstance(request, request_cls):
            await _refuse(request_cls, request, context)
        return await servicer.Check(request, context)

    async def watch(request, context) -> None:
        if not isinstance(request, request_cls):
            await _refuse(request_cls, request, context)
        await servicer.Watch(request, context)

    kw = {"request_deserializer": lenient(request_cls), "response_serializer": _serialize_health}
    return grpc.method_handlers_generic_handler(
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        {
            "Check": grpc.unary_unary_rpc_method_handler(check, **kw),
            "Watch": grpc.unary_stream_rpc_method_handler(watch, **kw),
        },
    )


def _serialize_health(response: health_pb2.HealthCheckResponse) -> bytes:
    return response.SerializeToString()


def reflection_handler(service_names: tuple[str, ...]) -> grpc.GenericRpcHandler:
    """The stock (asyncio) reflection service over ``service_names``; a message in its request
    stream that does not parse ends the stream with INVALID_ARGUMENT."""
    servicer = reflection.aio.ReflectionServicer(service_names)
    request_cls = reflection_pb2.ServerReflectionRequest

    async def info(request_iterator, context):
        async def parsed():
            async for request in request_iterator:
                if not isinstance(request, request_cls):
                    await _refuse(request_cls, request, context)
                yield request

        async for response in servicer.ServerReflectionInfo(parsed(), context):
            yield response

    return grpc.method_handlers_generic_handler(
        reflection.SERVICE_NAME,
        {
            "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                info,
                request_deserializer=lenient(request_cls),
                response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
            )
        },
    )
