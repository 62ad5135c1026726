"""Hypothesis strategies for the values inside requests: valid ones, odd but valid ones, and defects.

Odd means what a careless or hostile client sends: right-to-left overrides, combining marks, emoji
sequences, noncharacters, zero-width characters, texts at their length limit, subnormal and huge
numbers. Odd is not wrong: a non-blank text within its limit and without NUL is a valid description,
feature, profession or personality, however it looks, and must be served. The defects are kept
apart (``bad_texts``, ``BAD_FLOATS``...), so tests/fuzzing.py can build each request valid first and
then inject one defect whose documented status code it knows. Protobuf strings cannot hold lone
surrogates (category Cs), so those are the one thing left out. Batches come at 1, a few or the
limit (``batches``) and at the limit + 1 (``sized``), built by repeating a few drawn entries, so a
10,000-pair Score costs hypothesis no more than a 3-pair one.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

SHORT = 200  # the server's limit for ids, professions, personalities, categories
LONG = 5000  # its limit for descriptions and features
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
    "\u200b\u200c\u200d",  # zero-width space, non-joiner, joiner: format characters, not blank
    "\uffff\ufffe\U0010ffff",  # noncharacters
    "\U0001f600" * 3,
    "%s%n%x{0}",
    "' OR 1=1; --",
    "../../../etc/passwd",
    "NaN",
)
BLANK = (" ", "\t\n\r", "\u3000\u2003", "\u00a0")  # whitespace only: str.strip() leaves nothing
NUL_TEXT = ("\x00", "tec_0001\x00", "a\x00b")
# Finite numbers that are odd but may well be in range: each use keeps those inside its own range.
ODD_FLOATS = (
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
BAD_FLOATS = (math.nan, -math.nan, math.inf, -math.inf)  # never a valid number anywhere

_CHARS = st.characters(exclude_categories=("Cs",))


def stretch(seed: str, n: int) -> str:
    """``seed`` repeated to exactly ``n`` characters (hypothesis cannot draw 100,000 of them)."""
    seed = seed or "x"
    return (seed * (n // len(seed) + 1))[:n]


def fine(text: str, limit: int) -> bool:
    """A valid required text: 1..``limit`` characters, no NUL, and not blank in its first SHORT + 1
    characters (so the capped copies ``batches`` repeats are valid too)."""
    return 0 < len(text) <= limit and "\x00" not in text and bool(text[: SHORT + 1].strip())


def fit(text: str, n_bytes: int) -> str:
    """``text`` cut to at most ``n_bytes`` of UTF-8, at a character boundary."""
    return text.encode("utf-8")[:n_bytes].decode("utf-8", "ignore")


def mostly(usual: st.SearchStrategy, odd: st.SearchStrategy) -> st.SearchStrategy:
    """``usual`` four times in five: odd values are the point, but usual ones keep the request
    realistic (known users, catalogue items) and cheap."""
    return st.integers(0, 4).flatmap(lambda k: usual if k < 4 else odd)


def odd_texts(limit: int = SHORT) -> st.SearchStrategy[str]:
    """Odd but valid texts: the odd list's valid entries, random Unicode, and texts at the limit."""
    seeds = st.sampled_from([t for t in ODD_TEXT if fine(t, limit)]) | st.text(_CHARS, min_size=1, max_size=3)
    return st.one_of(
        st.sampled_from([t for t in ODD_TEXT if fine(t, limit)]),
        st.text(_CHARS, min_size=1, max_size=12),
        st.builds(stretch, seeds, st.sampled_from((limit, limit - 1))),
    ).filter(lambda t: fine(t, limit))


def texts(known: tuple[str, ...] = (), limit: int = SHORT) -> st.SearchStrategy[str]:
    """Valid texts: known values mostly (when there are any), else odd but valid ones."""
    return mostly(st.sampled_from(known), odd_texts(limit)) if known else odd_texts(limit)


def bad_texts(limit: int = SHORT) -> st.SearchStrategy[tuple[str, str]]:
    """(what is wrong, text) for a required text: empty, blank, holding NUL, or over ``limit``
    (just over, or four times over); each is INVALID_ARGUMENT wherever a text is required."""
    seed = st.sampled_from(("x", "é", "\U0001f600", "👩‍👩‍👧‍👦", "tec_0001"))
    return st.one_of(
        st.just(("empty", "")),
        st.builds(
            lambda t: ("blank", t), st.sampled_from(BLANK) | st.builds(stretch, st.just(" "), st.just(limit))
        ),
        st.builds(
            lambda t: ("holding NUL", t),
            st.sampled_from(NUL_TEXT) | odd_texts(limit - 1).map(lambda t: t + "\x00"),
        ),
        st.builds(
            lambda s, n: (f"over {limit} characters", stretch(s, n)),
            seed,
            st.sampled_from((limit + 1, 4 * limit + 7)),
        ),
    )


def floats(low: float, high: float) -> st.SearchStrategy[float]:
    """Valid numbers in [low, high]: mostly ordinary ones, else the odd finite ones in range."""
    edges = sorted({x for x in (low, high, *ODD_FLOATS) if low <= x <= high}, key=repr)
    return mostly(st.floats(low, high), st.sampled_from(edges))


def outside(low: float, high: float) -> st.SearchStrategy[float]:
    """Numbers a field limited to [low, high] must refuse: NaN, infinities, and finite ones outside."""
    beyond = [x for x in ODD_FLOATS if not low <= x <= high]
    return st.one_of(
        st.sampled_from(BAD_FLOATS + tuple(beyond)),
        st.floats(max_value=low, exclude_max=True, allow_nan=False, allow_infinity=False),
        st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False),
    ).filter(lambda x: not low <= x <= high)


def int32s(low: int, high: int) -> st.SearchStrategy[int]:
    """Valid ints in [low, high]: small ones mostly, else the edges."""
    return mostly(st.integers(low, min(high, max(low, 20))), st.sampled_from((low, high)))


def bad_int32s(low: int, high: int) -> st.SearchStrategy[int]:
    """int32 values outside [low, high]: the edges just beyond, the type's extremes, anything else."""
    edges = [
        x for x in (low - 1, high + 1, 0, -1, *INT32) if not low <= x <= high and INT32[0] <= x <= INT32[1]
    ]
    return st.sampled_from(edges) | st.integers(*INT32).filter(lambda x: not low <= x <= high)


def _capped(msg):
    """A copy of ``msg`` whose strings keep 201 characters and repeated fields 3 entries: the filler
    of a batch repeated to its limit (the drawn entries keep their odd sizes), so a 10,000-pair Score
    weighs megabytes, not gigabytes. A valid entry's copy stays valid (``fine`` looks at the first 201
    characters)."""
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


def sized(base: list, n: int) -> list:
    """``n`` entries: ``base`` first, then capped copies of it (one copy each, repeated: 200,000
    copies would take seconds)."""
    filler = [_capped(b) for b in base]
    return [base[j] if j < len(base) else filler[j % len(base)] for j in range(n)]


def batches(
    entry: st.SearchStrategy, limit: int, empty: bool = False, unique_by=None
) -> st.SearchStrategy[list]:
    """A valid batch: 1, a few or ``limit`` entries (or 0, mostly, with ``empty``: for filters),
    a few drawn ones then capped copies of them. Over the limit is a defect: ``sized``."""
    limit = max(limit, 1)
    sizes = st.sampled_from((1, 1, 1, 2, 2, 3, 4, limit)).map(lambda n: min(n, limit))
    if empty:
        sizes = mostly(st.just(0), sizes)
    base = st.lists(entry, min_size=1, max_size=4, unique_by=unique_by)
    return st.builds(sized, base, sizes)
