"""Domain errors, each carrying its gRPC status code; ERROR_TABLE is the one documented mapping."""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """Base of every error a client is meant to see; ``code`` is its gRPC status."""

    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


GENERIC_INTERNAL = "internal error; the server logged the details"
# Longest status message sent. Messages travel in gRPC metadata, which clients cap (8 kB by default;
# past it the client sees RESOURCE_EXHAUSTED instead of the error): validation keeps its messages
# short (a few offending values and a count), and servicer.rpc cuts any longer one as a safety net.
MAX_DETAILS = 1000
# ...and at most this many bytes as sent: grpc-message percent-encodes every byte outside printable
# ASCII (and '%') as three, so 1,000 characters of non-ASCII text would be ~9 kB on the wire.
MAX_DETAILS_WIRE = 3000


def wire_length(message: str) -> int:
    """Bytes of ``message`` as the grpc-message header carries it (percent-encoded UTF-8)."""
    raw = message.encode("utf-8", "replace")
    return len(raw) + 2 * sum(1 for b in raw if b < 0x20 or b > 0x7E or b == 0x25)


def bounded(message: str, limit: int = MAX_DETAILS, wire: int = MAX_DETAILS_WIRE) -> str:
    """``message``, cut to at most ``limit`` characters and ``wire`` bytes as sent, with a note of
    its full length."""
    if len(message) <= limit and wire_length(message) <= wire:
        return message
    note = f" ... (cut from {len(message)} characters)"
    cut = min(len(message), limit - len(note))
    while cut > 0 and wire_length(message[:cut]) + len(note) > wire:
        cut = cut * 3 // 4  # a few steps at most: a character is at most 12 bytes on the wire
    return message[:cut] + note


# (condition, status code): docs/api.md's "Errors" table and tests/test_server_errors.py are built
# from this list, so code, documentation and tests cannot drift apart.
ERROR_TABLE: list[tuple[str, grpc.StatusCode]] = [
    ("unknown user_id or item_id", grpc.StatusCode.NOT_FOUND),
    ("top_n <= 0 or > max_top_n", grpc.StatusCode.INVALID_ARGUMENT),
    (
        "empty or oversized batch (Score pairs, UpsertItems items, inline Evaluate interactions); "
        "a history over max_history items; more than max_categories categories or max_exclude_items "
        "exclude_item_ids; more than max_new_texts distinct texts the exported tables lack in one "
        "request (each needs the text encoder)",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ("neither user_id nor user attributes", grpc.StatusCode.INVALID_ARGUMENT),
    (
        "age NaN, <= 0 or > 150; price NaN, < 0 or > 1e9; a price_range bound NaN or infinite; "
        "inverted price range",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "text empty where required, over its length limit, or holding a NUL character (neither journal "
        "can store one); an UpsertItems item over max_item_bytes "
        "serialized (max_response_bytes / max_top_n, so max_top_n items fit one response)",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "a required attribute missing (e.g. personality for a model that reads it)",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "ks outside 1..1000, or more than max_ks (100) of them; unknown split/protocol value; duplicate "
        "ids in one UpsertItems; an id over 200 characters (history ids included); a write_id over 128 "
        "characters or not printable ASCII, or one the journal holds for another kind of write (an "
        "UpsertItems' id sent with DeleteItems): nothing written",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    (
        "request bytes that do not parse (e.g. invalid UTF-8 in a string), health Check/Watch included",
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    ("model not loaded or warming up (health NOT_SERVING)", grpc.StatusCode.UNAVAILABLE),
    (
        "UpsertItems or DeleteItems while the catalogue journal is unreachable (PostgreSQL down, "
        "restarting or frozen; its lock or statement timeout passed): nothing written, reads keep being "
        "served, retry; a Reload then too (the served model keeps its journal's changes)",
        grpc.StatusCode.UNAVAILABLE,
    ),
    (
        "UpsertItems or DeleteItems when the journal has no room (disk or file size limit full): nothing "
        "written",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    (
        "UpsertItems or DeleteItems when the journal file or folder became read-only (its file system "
        "remounted read-only): nothing written; a journal read-only at start stops the server, naming it",
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    (
        "more concurrent RPCs than --max-concurrent-rpcs (authenticated calls), --max-probe-rpcs (health "
        "calls and calls refused for their token) or --max-watch-streams (open health Watch streams); a "
        "response over max_response_bytes (checked before sending; a safety net, since the limits above "
        "keep every valid request under it)",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    ("missing or wrong bearer token (with a token configured)", grpc.StatusCode.UNAUTHENTICATED),
    (
        "a bearer token whose right is too low for the RPC (read < write < admin: a read token calling "
        "UpsertItems, DeleteItems or Reload; a write token calling Reload)",
        grpc.StatusCode.PERMISSION_DENIED,
    ),
    (
        "deadline too short for the work (checked before and during every loop over a request's "
        "items: encoder batches, tower passes, Score pairs, Evaluate's user blocks); a Reload's, checked "
        "again just before the swap (past it, nothing is swapped)",
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ),
    (
        "Reload of a bad artifacts folder, or of one not under --bundle-root (the old model keeps serving; "
        "a folder outside the root, missing or not a folder gets one fixed message naming no path)",
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    ("anything unexpected (generic message, traceback logged)", grpc.StatusCode.INTERNAL),
]


def error_table_markdown() -> str:
    """ERROR_TABLE as the Markdown table in docs/api.md (a test keeps the two identical)."""
    rows = ["| condition | gRPC status |", "|---|---|"]
    rows += [f"| {condition} | `{code.name}` |" for condition, code in ERROR_TABLE]
    return "\n".join(rows)
