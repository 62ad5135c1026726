"""Replicas behind one client: the channel's load balancing, its retries, keepalive, and how its
retries share the work with the client's own RetryPolicy loop.

**Targets.** The target goes to gRPC unchanged, so any gRPC target works: ``host:port`` and
``dns:///host:port`` (every address the name resolves to, re-resolved when connections fail),
``ipv4:10.0.0.1:50051,10.0.0.2:50051`` and ``ipv6:[::1]:5001,[::1]:5002`` (a fixed list),
``unix:/path/to.sock``. The service config asks for ``round_robin``: the channel connects to every
address and sends each call to the next READY connection; a replica whose connection fails (killed,
restarting, unreachable) leaves the rotation at once and rejoins when it reconnects. Our service
config is the only one: DNS TXT service configs are ignored (``service_config_disable_resolution``),
so a record cannot swap the policy or the retries below.

**Which RPCs are repeated.** Reads (Recommend, Score, Evaluate, GetModelInfo, the health Check)
change nothing. UpsertItems, DeleteItems and RecordInteractions carry a write id (a UUID the client draws once per call,
convert.new_write_id) that every try of the call repeats; the server journals the id with the write
before it answers OK, and answers a repeat of a journaled id from the journal (the first reply, with
``repeated`` set) instead of applying it again. So a retry whose first try committed — its answer
lost — is applied once, and never undoes a newer write another client made meanwhile, whichever
replica each try reaches (they share the journal). Admin.Reload is never repeated by
policy: it is slow (a model load and warm-up, usually under a long deadline), an operator runs it
and can decide what a failure means, and a repeat through a balanced channel could land on another
replica than the first try. (gRPC's transparent retries still cover every RPC, Reload included, when
the request provably never reached the server's handlers: a closed connection before sending, a
draining server's GOAWAY.)

**Two retry layers, one budget.** gRPC retries (the service config's ``retryPolicy``) run inside one
call: the same deadline, no Python involved, each attempt picked afresh by round_robin, so an
UNAVAILABLE from a replica that died or is warming up goes straight to the next one. The client's
RetryPolicy loop (``clients/client.py``) runs around calls: backoff and jitter, as many tries as
configured, each with a fresh timeout, which is what waiting out a restart or a reload needs. Nested
naively they multiply (4 tries x 5 gRPC attempts = 20 requests per call), so they are sized
together: the channel makes at most ``failover`` attempts per try, one per address the target lists
(``RetryPolicy.failover``; at most 5, gRPC's cap), and with a single address, or a DNS name whose
size is unknown, it makes one (no ``retryPolicy`` at all). A call therefore sends at most
``attempts x failover`` requests, about ``attempts`` per replica: no replica sees more than it would
from a client of that replica alone, and with one address the behaviour is exactly the loop's. Retry
throttling bounds the product further under a sustained outage: after about five failed attempts
with few successes in between, the channel stops failing over (until successes refill its tokens)
and each try is one request again.

**Keepalive.** gRPC servers (ours keeps the defaults) count a ping as a strike when it comes less
than 5 minutes after the previous one with no data sent in between — also during a call: a unary
call is silent until its answer — and close the connection with GOAWAY "too_many_pings" at the third
strike, failing the calls on it. Clients that ping every 30 s would break any call silent for about
3 minutes (gRPC 1.85 keeps pinging once a minute after two pings, measured). So the client pings
every 5 minutes, and only while a call is in flight (``keepalive_permit_without_calls`` 0: an idle
ping is a strike against a 2-hour floor), which never strikes. Dead replicas are found sooner by
what comes with keepalive: the ping timeout (20 s) also becomes the socket's TCP_USER_TIMEOUT, so a
request unacknowledged for 20 s (a replica gone without a reset) closes its connection and takes
it out of the rotation; a reset (a killed process) closes it at once.

**Deadlines.** The client's timeout (10 s by default, 30 s in the CLI) bounds each try, channel
failover included; backoff sleeps come between tries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from towerserve.server.core.rpcs import HEALTH_CHECK, RPCS

from .types import MAX_FAILOVER, RetryPolicy

# The RPCs safe to repeat (see above); every RPC of the proto must be in one of the two lists, so a
# new RPC cannot be retried, or left alone, without someone deciding which.
READS = ("Recommend", "Score", "Evaluate", "GetModelInfo")
WRITES = (
    "UpsertItems",
    "DeleteItems",
    "RecordInteractions",
)  # applied once per write id, journaled before OK
NOT_RETRIED = ("Reload",)
if set(RPCS) != {*READS, *WRITES, *NOT_RETRIED}:
    raise RuntimeError(
        f"classify every RPC as retried or not in clients/balancing.py: {sorted(set(RPCS) ^ {*READS, *WRITES, *NOT_RETRIED})}"
    )
# Paths (``/service/method``) the channel and the client loop may repeat: the standard health
# Check is a read too.
RETRIED_PATHS = frozenset({RPCS[name].path for name in (*READS, *WRITES)} | {HEALTH_CHECK})

# The channel's pause between failover attempts: the next attempt goes to another replica, so there
# is nothing to wait for; gRPC requires a positive value (and jitters it by +-20 %).
FAILOVER_BACKOFF_S = 0.01
# Retry throttling (gRPC's token bucket per server name): each failed attempt costs a token, each
# success returns 0.1; at or below half the tokens the channel stops retrying.
THROTTLE_TOKENS, THROTTLE_RATIO = 10, 0.1
# Requests up to the server's message limit stay buffered for a failover attempt (gRPC's default of
# 256 KiB would exclude a large Score or UpsertItems batch from failover).
RETRY_BUFFER_BYTES = 16 * 1024 * 1024
KEEPALIVE_TIME_MS = 300_000  # gRPC servers' default floor between pings: never a strike
KEEPALIVE_TIMEOUT_MS = 20_000  # also the sockets' TCP_USER_TIMEOUT
# gRPC clients take 4 MB responses by default; the server sends up to its --max-message-mb (16 MB by
# default, GetModelInfo.max_response_bytes), which a top_n = 1000 answer over long texts can reach.
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


def listed_addresses(target: str) -> int:
    """How many addresses ``target`` lists: the comma-separated entries of an ``ipv4:``/``ipv6:``
    target, else 1 (one address, a unix socket, or a DNS name: its records are unknown until the
    channel resolves it)."""
    scheme, sep, rest = target.partition(":")
    if sep and scheme.lower() in ("ipv4", "ipv6"):
        return max(1, sum(1 for address in rest.split(",") if address.strip()))
    return 1


def failover_attempts(target: str, policy: RetryPolicy) -> int:
    """The channel's attempts per try: ``policy.failover``, else one per listed address (at most
    gRPC's cap), and 1 when the policy allows a single attempt."""
    if policy.failover is not None:
        return policy.failover
    if policy.attempts == 1:
        return 1
    return min(MAX_FAILOVER, listed_addresses(target))


def service_config(failover: int) -> dict[str, Any]:
    """round_robin over the target's addresses; with ``failover`` > 1, UNAVAILABLE retried by the
    channel for the RPCs in RETRIED_PATHS (``failover`` attempts in all), throttled."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if failover > 1:
        names = [dict(zip(("service", "method"), path[1:].split("/"))) for path in sorted(RETRIED_PATHS)]
        backoff = f"{FAILOVER_BACKOFF_S}s"
        config["methodConfig"] = [
            {
                "name": names,
                "retryPolicy": {
                    "maxAttempts": failover,
                    "initialBackoff": backoff,
                    "maxBackoff": backoff,
                    "backoffMultiplier": 1,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
        config["retryThrottling"] = {"maxTokens": THROTTLE_TOKENS, "tokenRatio": THROTTLE_RATIO}
    return config


def channel_options(
    target: str, policy: RetryPolicy, extra: Sequence[tuple[str, Any]] = ()
) -> list[tuple[str, Any]]:
    """Channel arguments for ``target``: the service config, retry buffering and keepalive above,
    then ``extra`` (the caller's options), which replace ours key by key."""
    options: dict[str, Any] = {
        "grpc.service_config": json.dumps(service_config(failover_attempts(target, policy))),
        "grpc.service_config_disable_resolution": 1,
        "grpc.enable_retries": 1,
        "grpc.per_rpc_retry_buffer_size": RETRY_BUFFER_BYTES,
        "grpc.keepalive_time_ms": KEEPALIVE_TIME_MS,
        "grpc.keepalive_timeout_ms": KEEPALIVE_TIMEOUT_MS,
        "grpc.keepalive_permit_without_calls": 0,
        "grpc.max_receive_message_length": MAX_RECEIVE_BYTES,
    }
    options.update(dict(extra))
    return list(options.items())
