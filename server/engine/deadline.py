"""The client's deadline as a check that long work calls between chunks.

Work that grows with a request (encoder batches, tower passes over chunks of rows, Score's pairs,
Evaluate's user blocks) calls ``check`` between chunks, so a call the client has given up on stops
within one chunk instead of holding a worker thread until it is done. Chunks are sized to take
milliseconds to ~0.1 s each.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import DeadlineExceeded

Check = Callable[[], None]


def never() -> None:
    """A check that never fires (no deadline: load-time work, journal replay, tests)."""


def check_deadline(
    time_remaining: Callable[[], float | None],
    need: float = 0.0,
    cancelled: Callable[[], bool] | None = None,
) -> Check:
    """A callable that raises DeadlineExceeded once the client's deadline is (about to be) passed,
    or the client has cancelled the call.

    Args:
        time_remaining: seconds left, or None for no deadline (``grpc.ServicerContext.time_remaining``).
        need: seconds of work still to do; the check fails once fewer than this are left.
        cancelled: whether the client has gone (``grpc.aio.ServicerContext.cancelled``): its work
            stops too (the status never reaches it; the metrics count the call CANCELLED).
    """

    def check() -> None:
        if cancelled is not None and cancelled():
            raise DeadlineExceeded("the client cancelled the call")
        left = time_remaining()
        if left is not None and left <= need:
            raise DeadlineExceeded(f"deadline exceeded ({max(left, 0.0) * 1000:.0f} ms left)")

    return check
