"""The client's deadline as a check that long work calls between chunks."""

from __future__ import annotations

from collections.abc import Callable

from .errors import DeadlineExceeded


def check_deadline(time_remaining: Callable[[], float | None], need: float = 0.0) -> Callable[[], None]:
    """A callable that raises DeadlineExceeded once the client's deadline is (about to be) passed.

    Args:
        time_remaining: seconds left, or None for no deadline (``grpc.ServicerContext.time_remaining``).
        need: seconds of work still to do; the check fails once fewer than this are left.
    """

    def check() -> None:
        left = time_remaining()
        if left is not None and left <= need:
            raise DeadlineExceeded(f"deadline exceeded ({max(left, 0.0) * 1000:.0f} ms left)")

    return check
