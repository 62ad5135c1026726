"""Hypothesis strategies for the values inside requests: known ones mostly, odd ones otherwise.

Odd means what a careless or hostile client sends: unknown, empty, over-limit and oversized texts;
NaN, infinities, huge and subnormal numbers; right-to-left overrides, combining marks, NUL, emoji
sequences, noncharacters. Protobuf strings cannot hold lone surrogates (category Cs), so those are
the one thing left out. Batches come at 0, 1, a few, the limit and the limit + 1 entries, built by
repeating a few drawn entries, so a 10,000-pair Score costs hypothesis no more than a 3-pair one.
tests/fuzzing.py builds whole requests from these.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

SHORT = 200  # the server's limit for ids, professions, personalities, categories
INT32 = (-(2**31), 2**31 - 1)

ODD_TEXT = (
    "",
    " ",
    "\t\n\r",
    "\x00",
    "tec_0001\x00",
    "\u202etxet lanoitcerid-ib",  # RIGHT-TO-LEFT OVERRIDE
    "مهندس برمجيات",  # Arabic, right to left
    "e\u0301\u0302\u0303\u0304\u0305",  # a base letter under five combining marks
    "Z\u0337\u0321\u031ba\u0338l\u0335g\u0337o",
    "👩‍👩‍👧‍👦",  # one grapheme, seven code points (ZWJ sequence)
    "🏳️‍🌈",
    "\ufeffbom",
    "\u200b\u200c\u200d",  # zero-width space, non-joiner, joiner
    "\uffff\ufffe\U0010ffff",  # noncharacters
    "\U0001f600" * 3,
    "%s%n%x{0}",
    "' OR 1=1; --",
    "../../../etc/passwd",
    "NaN",
)
ODD_FLOATS = (
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    5e-324,
    -1.0,
    1.0,
    150.0,
    150.00000000000003,
    1e9,
    1e9 + 1,
    1.7976931348623157e308,
    -1.7976931348623157e308,
)

_CHARS = st.characters(exclude_categories=("Cs",))


def stretch(seed: str, n: int) -> str:
    """``seed`` repeated to exactly ``n`` characters (hypothesis cannot draw 100,000 of them)."""
    seed = seed or "x"
    return (seed * (n // len(seed) + 1))[:n]


def mostly(usual: st.SearchStrategy, odd: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` four times in five: a request with every field odd stops at its first check, so
    most fields must pass for the code behind the checks to run at all."""
    return st.integers(0, 4).flatmap(lambda k: usual if k < 4 else odd)


def texts(known: tuple[str, ...] = (), limit: int = SHORT) -> st.SearchStrategy[str]:
    """Known values mostly (when there are any); else odd ones, random Unicode, and texts at, just
    over and far over ``limit``."""
    odd = st.one_of(
        st.sampled_from(ODD_TEXT),
        st.text(_CHARS, max_size=12),
        st.builds(
            stretch,
            st.sampled_from(ODD_TEXT[4:]) | st.text(_CHARS, min_size=1, max_size=3),
            st.sampled_from((limit, limit + 1, 4 * limit + 7)),
        ),
    )
    return mostly(st.sampled_from(known), odd) if known else odd


def floats(low: float, high: float) -> st.SearchStrategy[float]:
    return mostly(st.floats(low, high), st.sampled_from(ODD_FLOATS) | st.floats())


def int32s(limit: int) -> st.SearchStrategy[int]:
    edges = (0, 1, -1, limit, limit + 1, *INT32)
    return mostly(st.integers(1, 20), st.sampled_from(edges) | st.integers(*INT32))


def _capped(msg):
    """A copy of ``msg`` whose strings keep 201 characters and repeated fields 3 entries: the filler
    of a batch repeated to its limit (the drawn entries keep their odd sizes), so a 10,000-pair Score
    weighs megabytes, not gigabytes."""
    if not hasattr(msg, "ListFields"):
        return msg
    out = type(msg)()
    out.CopyFrom(msg)
    for fd, value in out.ListFields():
        if fd.is_repeated and fd.type != fd.TYPE_MESSAGE:
            del value[3:]
            if fd.type == fd.TYPE_STRING:
                value[:] = [v[:201] for v in value]
        elif fd.type == fd.TYPE_STRING:
            setattr(out, fd.name, value[:201])
        elif fd.type == fd.TYPE_MESSAGE and not fd.is_repeated:
            getattr(out, fd.name).CopyFrom(_capped(value))
    return out


def batches(entry: st.SearchStrategy, limit: int, empty: bool = False) -> st.SearchStrategy[list]:
    """1, a few, ``limit`` or ``limit + 1`` entries (or 0; mostly 0 with ``empty``, for filters):
    a few drawn ones, then capped copies of them up to the size."""
    limit = max(limit, 1)
    sizes = st.sampled_from((0, 1, 1, 1, 2, 2, 3, 4, limit, limit + 1))
    if empty:
        sizes = mostly(st.just(0), sizes)

    def build(base: list, n: int) -> list:
        filler = [_capped(b) for b in base]  # one copy each, repeated: 200,000 copies would take seconds
        return [base[j] if j < len(base) else filler[j % len(base)] for j in range(n)]

    return st.builds(build, st.lists(entry, min_size=1, max_size=4), sizes)
