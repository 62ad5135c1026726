"""What the sync and asyncio clients share: channel settings, the call table, which calls the retry
loop repeats, error translation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from towerserve.server.core.rpcs import HEALTH_CHECK, RPCS

from .balancing import RETRIED_PATHS, channel_options, listed_addresses
from .types import TLS, RetryPolicy, TowerserveError

HEALTH = "Health"

# Name -> (path, request serializer, response deserializer): every RPC of the proto, plus the
# standard health Check, whose bytes travel raw both ways (see convert.health_request).
CALLS: dict[str, tuple[str, Callable | None, Callable | None]] = {
    name: (rpc.path, rpc.request.SerializeToString, rpc.response.FromString) for name, rpc in RPCS.items()
}
CALLS[HEALTH] = (HEALTH_CHECK, None, None)
# The calls the retry loop repeats: those the channel may repeat too (balancing.py), all but Reload.
RETRIED_CALLS = frozenset(name for name, (path, _, _) in CALLS.items() if path in RETRIED_PATHS)


def _credentials(tls: TLS | bool | None) -> grpc.ChannelCredentials | None:
    if not tls:
        return None
    tls = TLS() if tls is True else tls
    read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
    return grpc.ssl_channel_credentials(
        read(tls.root_certificates), read(tls.client_key), read(tls.client_cert)
    )


def _channel_options(
    target: str, retry: RetryPolicy, tls: TLS | bool | None, options: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    opts = list(options)
    if isinstance(tls, TLS) and tls.server_name:
        opts.append(("grpc.ssl_target_name_override", tls.server_name))
    return channel_options(target, retry, opts)


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
        interceptors: Sequence[Any] = (),
    ):
        self.target = target
        self._interceptors = list(interceptors)
        self.timeout = timeout
        self.retry = retry
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._creds = _credentials(tls)
        self._options = _channel_options(target, retry, tls, options)

    def _delays(self, name: str) -> Iterator[float]:
        """The retry loop's sleeps before each further try of call ``name``: none for Reload."""
        return self.retry.delays() if name in RETRIED_CALLS else iter(())

    def _one_server(self, name: str) -> None:
        """Refuses a call that acts on one server when the target lists several: round_robin would
        pick one of them, not the caller."""
        n = listed_addresses(self.target)
        if n > 1:
            raise ValueError(
                f"{name} acts on one server, and {self.target!r} lists {n} addresses (calls go to "
                "whichever round_robin picks): give each replica's own address"
            )

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
