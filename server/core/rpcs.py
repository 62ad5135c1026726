"""The RPCs of towerserve.v1, read from the generated descriptors: path, request and response types.

The one table the servicer, the client library and the load test all use, so an RPC added to the
proto cannot be served without a handler or shipped without a client method (tests/test_rpc_tables.py).
Pure Python over the generated module: client-only installs import it too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from google.protobuf import message_factory
from google.protobuf.message import Message

from towerserve.v1 import recommender_pb2 as pb

HEALTH_CHECK = "/grpc.health.v1.Health/Check"  # the standard health service (grpcio-health-checking)


@dataclass(frozen=True)
class Rpc:
    """One unary RPC of a towerserve.v1 service."""

    service: str  # full service name, e.g. "towerserve.v1.Recommender"
    name: str  # e.g. "GetModelInfo"
    request: type[Message]
    response: type[Message]

    @property
    def path(self) -> str:
        """The HTTP/2 path gRPC calls, e.g. "/towerserve.v1.Recommender/GetModelInfo"."""
        return f"/{self.service}/{self.name}"

    @property
    def python_name(self) -> str:
        """The Python clients' method: snake case, without a leading get (GetModelInfo -> model_info)."""
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", self.name).lower()
        return snake.removeprefix("get_")


def service_rpcs(service: str) -> dict[str, Rpc]:
    """RPC name -> Rpc for one service of recommender.proto, e.g. "Recommender" or "Admin"."""
    desc = pb.DESCRIPTOR.services_by_name[service]
    return {
        m.name: Rpc(
            desc.full_name,
            m.name,
            message_factory.GetMessageClass(m.input_type),
            message_factory.GetMessageClass(m.output_type),
        )
        for m in desc.methods
    }


SERVICES = {name: service_rpcs(name) for name in pb.DESCRIPTOR.services_by_name}
RECOMMENDER = SERVICES["Recommender"]
ADMIN = SERVICES["Admin"]
# Every RPC by name; names are unique across the services (the clients key their calls by them).
RPCS = {name: rpc for rpcs in SERVICES.values() for name, rpc in rpcs.items()}
if len(RPCS) != sum(map(len, SERVICES.values())):
    raise RuntimeError(f"an RPC name appears in two services of recommender.proto: {SERVICES}")
