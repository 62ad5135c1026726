"""Request validation: size limits, text lengths, numeric ranges; each failure an InvalidArgument."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..core.limits import Limits
from ..core.types import Interaction, NewItemData, UserAttrs
from .errors import InvalidArgument

SHORT_TEXT_LIMIT = 200  # ids, profession, personality, category
LONG_TEXT_LIMIT = 5000  # description, features
MAX_AGE = 150.0
MAX_PRICE = 1e9  # beyond this a price is a unit or typing error, and scaling it overflows
MAX_K = 1000
PROTOCOLS = ("full", "notebook")
# Offending values an error message shows before it only counts the rest (a status message travels
# in gRPC metadata, which clients cap at 8 kB by default).
SHOWN_VALUES = 5
# Bytes of a serialized Item besides the UTF-8 of its four texts: the frame (tag, length) in the
# response, each text's tag and length, price (tag + double) and score (tag + float).
ITEM_OVERHEAD = 4 + 4 * 4 + 9 + 5


def show(value: str, width: int = 60) -> str:
    """A bounded repr for error messages: an id of 20,000 characters must not bloat the status."""
    return repr(value) if len(value) <= width else repr(value[:width]) + f"... ({len(value)} characters)"


def some(values: Sequence[object], shown: int = SHOWN_VALUES) -> str:
    """The first few ``values`` and a count of the rest: an error message stays short however many
    values a request gets wrong."""
    head = ", ".join(str(v) for v in values[:shown])
    return head if len(values) <= shown else f"{head} and {len(values) - shown} more"


def check_new_texts(n: int, limits: Limits) -> None:
    """Distinct texts the exported tables lack, per request: each goes through the text encoder."""
    if n > limits.max_new_texts:
        raise InvalidArgument(
            f"the request holds {n} distinct texts the exported tables lack (each needs the text "
            f"encoder); the limit is {limits.max_new_texts} (GetModelInfo.max_new_texts)"
        )


def item_bytes(item: NewItemData) -> int:
    """An upper bound of ``item``'s serialized size in a RecommendResponse (wire.py)."""
    texts = (item.item_id, item.description, item.features, item.category)
    return ITEM_OVERHEAD + sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)


def check_id(name: str, value: str) -> None:
    """An id that matched nothing: too long is the caller's error to fix first (before NOT_FOUND)."""
    if len(value) > SHORT_TEXT_LIMIT:
        raise InvalidArgument(f"{name} is {len(value)} characters; the limit is {SHORT_TEXT_LIMIT}")


def check_ids(name: str, ids: Sequence[str]) -> None:
    """Ids only looked up, where an unknown one matches nothing (exclude_item_ids): each at most 200
    characters all the same. C-level loops first: this runs on the event loop."""
    if ids and max(map(len, ids)) > SHORT_TEXT_LIMIT:
        j = next(j for j, x in enumerate(ids) if len(x) > SHORT_TEXT_LIMIT)
        check_id(f"{name}[{j}]", ids[j])


WRITE_ID_LIMIT = 128


def check_write_id(value: str) -> str:
    """A write id (UpsertItems/DeleteItems.write_id): empty (none) or 1..128 printable ASCII characters,
    so it is stored and compared byte for byte by either journal store."""
    if len(value) > WRITE_ID_LIMIT:
        raise InvalidArgument(f"write_id is {len(value)} characters; the limit is {WRITE_ID_LIMIT}")
    if value and not (value.isascii() and value.isprintable()):
        raise InvalidArgument("write_id must be printable ASCII (a UUID, say)")
    return value


def check_text(name: str, value: str, limit: int, required: bool = True) -> str:
    if required and not value.strip():
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > limit:
        raise InvalidArgument(f"{name} is {len(value)} characters; the limit is {limit}")
    if "\x00" in value:  # PostgreSQL's text cannot hold NUL: refused the same way for either journal
        raise InvalidArgument(f"{name} must not contain NUL characters")
    return value


def validate_attrs(attrs: UserAttrs, needs_personality: bool) -> None:
    if not math.isfinite(attrs.age) or attrs.age <= 0 or attrs.age > MAX_AGE:
        raise InvalidArgument(f"user.age must be in (0, {MAX_AGE:g}] (got {attrs.age})")
    check_text("user.profession", attrs.profession, SHORT_TEXT_LIMIT)
    if needs_personality:
        if not attrs.personality:
            raise InvalidArgument(
                "user.personality is required: the served model reads it (see GetModelInfo.user_fields)"
            )
        check_text("user.personality", attrs.personality, SHORT_TEXT_LIMIT)


def validate_recommend(
    top_n: int,
    price_min: float | None,
    price_max: float | None,
    limits: Limits,
    n_categories: int = 0,
    n_excluded: int = 0,
) -> None:
    if not 1 <= top_n <= limits.max_top_n:
        raise InvalidArgument(f"top_n must be in [1, {limits.max_top_n}] (got {top_n})")
    if n_categories > limits.max_categories:
        raise InvalidArgument(f"categories holds {n_categories} names; the limit is {limits.max_categories}")
    if n_excluded > limits.max_exclude_items:
        raise InvalidArgument(
            f"exclude_item_ids holds {n_excluded} ids; the limit is {limits.max_exclude_items}"
        )
    for name, v in (("price_range.min", price_min), ("price_range.max", price_max)):
        if v is not None and not math.isfinite(v):
            raise InvalidArgument(f"{name} must be a finite number (got {v})")
    if price_min is not None and price_max is not None and price_min > price_max:
        raise InvalidArgument(f"price_range.min {price_min} is above price_range.max {price_max}")


def validate_score(n_pairs: int, limits: Limits) -> None:
    if not 1 <= n_pairs <= limits.max_score_pairs:
        raise InvalidArgument(f"pairs must hold 1..{limits.max_score_pairs} pairs (got {n_pairs})")


def validate_evaluate(ks: Sequence[int], protocol: str, n_inline: int | None, limits: Limits) -> None:
    """``n_inline``: inline interactions given (None: a recorded split)."""
    if len(ks) > limits.max_ks:
        raise InvalidArgument(f"ks holds {len(ks)} values; the limit is {limits.max_ks}")
    bad = [k for k in ks if not 1 <= k <= MAX_K]
    if bad:
        raise InvalidArgument(f"ks must be in [1, {MAX_K}] (got {some(bad)})")
    if protocol not in PROTOCOLS:
        raise InvalidArgument(f"protocol must be 'full' or 'notebook' (got {protocol!r})")
    if n_inline is not None:
        validate_inline(n_inline, limits)


def validate_inline(n_inline: int, limits: Limits) -> None:
    if not 1 <= n_inline <= limits.max_inline_interactions:
        raise InvalidArgument(
            f"interactions must hold 1..{limits.max_inline_interactions} pairs (got {n_inline})"
        )


def validate_items(items: Sequence[NewItemData], limits: Limits) -> None:
    if not 1 <= len(items) <= limits.max_upsert_items:
        raise InvalidArgument(f"items must hold 1..{limits.max_upsert_items} items (got {len(items)})")
    seen_ids = set()
    for j, it in enumerate(items):
        check_text(f"items[{j}].item_id", it.item_id, SHORT_TEXT_LIMIT)
        check_text(f"items[{j}].description", it.description, LONG_TEXT_LIMIT)
        check_text(f"items[{j}].features", it.features, LONG_TEXT_LIMIT)
        check_text(f"items[{j}].category", it.category, SHORT_TEXT_LIMIT)
        if not math.isfinite(it.price) or not 0 <= it.price <= MAX_PRICE:
            raise InvalidArgument(f"items[{j}].price must be in [0, {MAX_PRICE:g}] (got {it.price})")
        size = item_bytes(it)
        if size > limits.max_item_bytes:
            raise InvalidArgument(
                f"items[{j}] ({show(it.item_id)}) is {size} bytes serialized (UTF-8 of item_id, description, "
                f"features, category); the limit is {limits.max_item_bytes}, so that max_top_n "
                f"({limits.max_top_n}) items fit one {limits.max_response_bytes}-byte response"
            )
        if it.item_id in seen_ids:
            raise InvalidArgument(f"items[{j}].item_id {it.item_id!r} appears twice in the request")
        seen_ids.add(it.item_id)


KIND_LIMIT = 64  # characters of an interaction's kind
MAX_WEIGHT = 1000.0
# An interaction more than this far in the future (clock skew between services) is a mistake.
FUTURE_SLACK_S = 24 * 3600.0


def validate_events(events: Sequence[Interaction], limits: Limits, now: float) -> list[Interaction]:
    """RecordInteractions' events checked, with timestamp 0 replaced by ``now`` and weight 0 by 1.

    Raises:
        InvalidArgument: the batch size, an id, the kind, the weight, the timestamp or an event id.
    """
    if not 1 <= len(events) <= limits.max_record_events:
        raise InvalidArgument(f"events must hold 1..{limits.max_record_events} events (got {len(events)})")
    out = []
    for j, e in enumerate(events):
        check_text(f"events[{j}].user_id", e.user_id, SHORT_TEXT_LIMIT)
        check_text(f"events[{j}].item_id", e.item_id, SHORT_TEXT_LIMIT)
        check_text(f"events[{j}].kind", e.kind, KIND_LIMIT, required=False)
        weight = 1.0 if e.weight == 0 else e.weight
        if not math.isfinite(weight) or not 0 < weight <= MAX_WEIGHT:
            raise InvalidArgument(f"events[{j}].weight must be in (0, {MAX_WEIGHT:g}] (got {e.weight})")
        at = now if e.at == 0 else e.at
        if not math.isfinite(at) or at < 0 or at > now + FUTURE_SLACK_S:
            raise InvalidArgument(
                f"events[{j}].timestamp must be seconds since the epoch, at most a day ahead (got {e.at})"
            )
        bad_id = len(e.event_id) > WRITE_ID_LIMIT or not (e.event_id.isascii() and e.event_id.isprintable())
        if e.event_id and bad_id:
            raise InvalidArgument(
                f"events[{j}].event_id must be 1..{WRITE_ID_LIMIT} printable ASCII characters"
            )
        out.append(Interaction(e.user_id, e.item_id, float(at), e.kind, float(weight), e.event_id))
    return out
