"""Who may call what: the rights a bearer token grants and the right each RPC needs.

Three rights, each including the ones below it: read (answers about the model and catalogue), write
(catalogue changes) and admin (what the model served is). A deployment hands each client the least
of them that does its job; the interceptor (server/api/interceptors.py) checks them. Only the
standard library: the config, which `towerserve --help` imports, names them too.
"""

from __future__ import annotations

import enum

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Reflection describes the API to tools (grpcurl): no more than any reader may learn.
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")


class Right(enum.IntEnum):
    """What a token allows; a higher right includes every lower one (admin >= write >= read)."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


# The right each towerserve.v1 RPC needs, by name. An RPC missing here needs ADMIN (least privilege:
# a new RPC is closed until someone decides otherwise); tests/test_access.py checks every RPC of the
# proto is listed, so that decision is made when the RPC is added.
RIGHTS: dict[str, Right] = {
    "Recommend": Right.READ,
    "Score": Right.READ,
    "Evaluate": Right.READ,
    "GetModelInfo": Right.READ,
    "UpsertItems": Right.WRITE,
    "DeleteItems": Right.WRITE,
    "RecordInteractions": Right.WRITE,
    "Reload": Right.ADMIN,
}


def needed(method: str) -> Right | None:
    """The right a call to ``method`` (its HTTP/2 path, ``/towerserve.v1.Admin/Reload``) needs; None
    for the health service, which load balancers call without a token."""
    if method.startswith(HEALTH_PREFIX):
        return None
    if method.startswith(REFLECTION_PREFIXES):
        return Right.READ
    service, _, name = method.rpartition("/")
    if service.startswith("/towerserve."):
        return RIGHTS.get(name, Right.ADMIN)
    return Right.ADMIN
