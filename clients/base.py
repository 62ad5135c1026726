"""What the sync and asyncio clients share: channel settings, the call table, error translation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from towerserve.server.rpcs import HEALTH_CHECK, RPCS

from .types import TLS, RetryPolicy, TowerserveError

HEALTH = "Health"

# Name -> (path, request serializer, response deserializer): every RPC of the proto, plus the
# standard health Check, whose bytes travel raw both ways (see convert.health_request).
CALLS: dict[str, tuple[str, Callable | None, Callable | None]] = {
    name: (rpc.path, rpc.request.SerializeToString, rpc.response.FromString) for name, rpc in RPCS.items()
}
CALLS[HEALTH] = (HEALTH_CHECK, None, None)


def _credentials(tls: TLS | bool | None) -> grpc.ChannelCredentials | None:
    if not tls:
        return None
    tls = TLS() if tls is True else tls
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    return grpc.ssl_channel_credentials(
        read(tls.root_certificates), read(tls.client_key), read(tls.client_cert)
    )


def _channel_options(tls: TLS | bool | None, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    opts = list(options)
    if isinstance(tls, TLS) and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return opts


class Base:
    """Settings both clients take (see :class:`towerserve.clients.client.RecommenderClient`)."""

    def __init__(
        self,
        target: str,
        *,
        tls: TLS | bool | None = None,
        token: str | None = None,
        timeout: float | None = 10.0,
        retry: RetryPolicy = RetryPolicy(),
        options: Sequence[tuple[str, Any]] = (),
    ):
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._creds = _credentials(tls)
        self._options = _channel_options(tls, options)

    def _bind(self, channel) -> dict[str, Callable]:
        """One multi-callable per entry of CALLS on ``channel`` (sync or asyncio)."""
        return {
            name: channel.unary_unary(path, request_serializer=ser, response_deserializer=de)
            for name, (path, ser, de) in CALLS.items()
        }

    def _error(self, name: str, err: grpc.RpcError) -> TowerserveError:
        # The one place where grpc.RpcError becomes the client's error type.
        code = err.code() if callable(getattr(err, "code", None)) else grpc.StatusCode.UNKNOWN
        details = err.details() if callable(getattr(err, "details", None)) else str(err)
        return TowerserveError(name, code or grpc.StatusCode.UNKNOWN, details or "")
