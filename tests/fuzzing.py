"""Fuzz cases for every RPC, each tagged with the status codes the contract allows, and the verdict.

Shared by tests/test_fuzz.py (the suite's few hundred cases) and benchmarks/fuzz.py (ten thousand and
more). A case is one request as bytes on one method path, so well-formed messages and raw garbage go
through the same code. Every case carries ``expect``, the codes the contract allows, and is tagged by
construction, not by re-deriving the server's checks: each RPC's strategy builds a valid request
from values known to be valid (known users, items no case ever deletes, and odd but valid values:
tests/fuzz_values.py), then, half the time, injects one defect drawn from that RPC's catalogue of
(defect, documented code) pairs (docs/api.md, "Errors"). The property, the same everywhere:

* a valid case answers OK, and its answer keeps the API's promises;
* an invalid case answers its documented code (where the docs allow two readings, either);
* no case is ever answered INTERNAL, UNKNOWN, UNAVAILABLE or DEADLINE_EXCEEDED (a client can act on
  every other code, and a single request must not stall or take down an idle server);
* and health still says SERVING at the end.

Garbage bytes are INVALID_ARGUMENT on a served path when they do not parse (UNIMPLEMENTED on a path
nobody serves); a mangled request that still parses is a request nobody built, so it may get any
code its RPC documents, unless it parsed back into the very request it was mangled from.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from fuzz_values import (
    BAD_FLOATS,
    LONG,
    ODD_FLOATS,
    SHORT,
    bad_int32s,
    bad_texts,
    batches,
    fit,
    floats,
    int32s,
    mostly,
    odd_texts,
    outside,
    sized,
    stretch,
    texts,
)
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from hypothesis import assume
from hypothesis import strategies as st

from towerserve.server.core.rpcs import HEALTH_CHECK, RPCS
from towerserve.v1 import recommender_pb2 as pb

# No request may get these: INTERNAL and UNKNOWN say nothing a client can act on; UNAVAILABLE and
# DEADLINE_EXCEEDED would mean a request, however odd, made a healthy, idle server stall or refuse
# service (each case runs alone, with a 120 s deadline, against a served model).
BAD_CODES = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
OK = frozenset({"OK"})
INVALID = frozenset({"INVALID_ARGUMENT"})
NOT_FOUND = frozenset({"NOT_FOUND"})
HEALTH = "Health.Check"
# The proto's services by path, the health check, and two paths nothing serves.
PATHS = (*(r.path for r in RPCS.values()), HEALTH_CHECK, "/towerserve.v1.Recommender/Nope", "/x.Y/Z")
SERVED_PATHS = frozenset((*(r.path for r in RPCS.values()), HEALTH_CHECK))
# The services health reports on (server/api/app.py); any other name is NOT_FOUND, as the standard
# health protocol has it (grpc.health.v1.Health itself included: nobody registers a status for it).
HEALTH_SERVICES = ("", "towerserve.v1.Recommender", "towerserve.v1.Admin")
# Wire format no message can parse: a truncated varint tag, a tag of wire type 7, a length past the
# end, a truncated field, a length of 2^32.
UNPARSEABLE = (b"\xff\xff\xff", b"\x07", b"\x0a\x05ab", b"\x08", b"\x0a\xff\xff\xff\xff\x0f")
# What a request that parsed but was built by nobody may get: every code its RPC documents.
DOCUMENTED = {
    "Recommend": frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND"}),
    "Score": frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND"}),
    "Evaluate": frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND"}),
    "GetModelInfo": OK,
    "UpsertItems": frozenset({"OK", "INVALID_ARGUMENT"}),
    "DeleteItems": frozenset({"OK", "INVALID_ARGUMENT"}),
    "RecordInteractions": frozenset({"OK", "INVALID_ARGUMENT", "NOT_FOUND"}),
}
# Where the docs allow two readings, a case takes either code; each use says which two.
EITHER_ID = frozenset({"INVALID_ARGUMENT", "NOT_FOUND"})
EITHER_IGNORED = frozenset({"OK", "INVALID_ARGUMENT"})
CREATED = "fz_user:"  # users RecordInteractions creates (create_users): never read as known or unknown
NEW_TEXT = "fz new text"  # professions of the Score over max_new_texts: never encoded, so always new
SPLITS = {"holdout": (pb.SPLIT_UNSPECIFIED, pb.SPLIT_HOLDOUT), "cold": (pb.SPLIT_COLD,)}


@dataclass(frozen=True)
class World:
    """What the server serves (and its limits), so strategies build requests valid by construction.

    The exported items split in two: ``stable`` ones, that read cases (Recommend, Score, Evaluate,
    RecordInteractions) use and no case ever deletes, so a valid read stays valid whatever ran
    before; and ``scratch`` ones, that only UpsertItems and DeleteItems touch, along with the
    fuzzer's own ids (``fz_*``, which unknown ids never start with).
    """

    serving: Path
    missing: Path  # a folder that does not exist: with the served one, the only Reload targets
    users: tuple[str, ...]
    stable: tuple[str, ...]
    scratch: tuple[str, ...]
    known_users: frozenset[str]  # every user and exported item, so that unknown ids are unknown
    known_items: frozenset[str]
    categories: tuple[str, ...]
    professions: tuple[str, ...]
    personalities: tuple[str, ...]
    descriptions: tuple[str, ...]
    user_fields: tuple[str, ...]
    splits: tuple[str, ...]  # the recorded splits Evaluate can use (the bundle's)
    limits: dict[str, int]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _splits(serving: Path, kind: str) -> tuple[str, ...]:
    """The recorded splits the served model has towers for (what Evaluate's split may name)."""
    manifest = json.loads((serving / "manifest.json").read_text(encoding="utf-8"))
    model = manifest["models"].get(kind) or manifest["models"][manifest["default_model"]]
    return tuple(sorted(set(manifest["splits"]) & set(model["splits"])))


def world(channel: grpc.Channel, serving: Path, missing: Path) -> World:
    """The served catalogue's values and GetModelInfo's limits (what a careful client would read)."""
    info = channel.unary_unary(
        RPCS["GetModelInfo"].path,
        request_serializer=pb.GetModelInfoRequest.SerializeToString,
        response_deserializer=pb.GetModelInfoResponse.FromString,
    )(pb.GetModelInfoRequest(), timeout=60)
    users, items = _csv(serving / "catalog" / "users.csv"), _csv(serving / "catalog" / "items.csv")
    names = ("max_top_n", "max_score_pairs", "max_upsert_items", "max_inline_interactions")
    names += ("max_categories", "max_exclude_items", "max_history", "max_delete_items", "max_record_events")
    names += ("max_new_texts", "max_ks", "max_item_bytes", "max_response_bytes")
    ids = [r["item_id"] for r in items[:200]]
    return World(
        serving=Path(serving).resolve(),
        missing=Path(missing),
        users=tuple(r["user_id"] for r in users[:200]),
        stable=tuple(ids[0::2]),
        scratch=tuple(ids[1::2]),
        known_users=frozenset(r["user_id"] for r in users),
        known_items=frozenset(r["item_id"] for r in items),
        categories=tuple(info.categories),
        professions=tuple(sorted({r.get("profession", "") for r in users} - {""}))[:50],
        personalities=tuple(sorted({r.get("personality", "") for r in users} - {""}))[:50],
        descriptions=tuple(r["description"] for r in items[:50]),
        user_fields=tuple(info.user_fields),
        splits=_splits(Path(serving), info.model_kind),
        limits={n: getattr(info, n) for n in names},
    )


# ---------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Case:
    """One call: ``rpc`` names it in the counts; ``request`` is the message (or the raw bytes);
    ``expect`` the codes the contract allows; ``defect`` what was injected ("" for a valid case)."""

    rpc: str
    path: str
    request: object
    expect: frozenset[str] = OK
    defect: str = ""

    @property
    def payload(self) -> bytes:
        return self.request if isinstance(self.request, bytes) else self.request.SerializeToString()

    @property
    def expected(self) -> str:
        """``expect`` as one word for the counts: "OK", "NOT_FOUND", "INVALID_ARGUMENT|NOT_FOUND"."""
        return "|".join(sorted(self.expect))

    def describe(self, width: int = 400) -> str:
        text = repr(self.request) if isinstance(self.request, bytes) else _short(self.request)
        what = f"{self.defect or 'valid'}; expects {self.expected}"
        return f"{self.rpc} [{what}] {self.path} ({len(self.payload)} bytes): {text[:width]}"


def _short(msg) -> str:
    """A message as one line, long strings and repeated fields abridged (a case may weigh 10 MB)."""
    from google.protobuf.json_format import MessageToDict

    def cut(v):
        if isinstance(v, str):
            return v if len(v) <= 40 else f"{v[:40]!r}...({len(v)} chars)"
        if isinstance(v, list):
            return [cut(x) for x in v[:3]] + ([f"...({len(v)} entries)"] if len(v) > 3 else [])
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        return v

    return json.dumps(cut(MessageToDict(msg, preserving_proto_field_name=True)), ensure_ascii=True)


def _case(w: World, name: str, request, expect: frozenset[str] = OK, defect: str = "") -> Case:
    """A case; a message over the server's message limit (GetModelInfo.max_response_bytes, its
    --max-message-mb, which bounds what it receives too) is refused by gRPC before any check:
    RESOURCE_EXHAUSTED (test_a_request_over_the_message_limit_is_resource_exhausted)."""
    if not isinstance(request, bytes) and request.ByteSize() > w.limits["max_response_bytes"]:
        expect, defect = frozenset({"RESOURCE_EXHAUSTED"}), f"{defect or 'valid'}, over the message limit"
    return Case(name, RPCS[name].path, request, expect, defect)


# A defect: mutates a valid request in place; returns the codes the contract allows for it.
Defect = Callable[[Callable, object], frozenset[str]]


def _only(catalogue: dict[str, Defect], prefix: str | None) -> dict[str, Defect]:
    """The defects whose names start with ``prefix`` (all when None); none is a mistake in the test."""
    if prefix is None:
        return catalogue
    chosen = {name: d for name, d in catalogue.items() if name.startswith(prefix)}
    if not chosen:
        raise ValueError(f"no defect starts with {prefix!r}: {sorted(catalogue)}")
    return chosen


def _inject(draw, request, catalogue: dict[str, Defect], always: bool = False) -> tuple[str, frozenset[str]]:
    """Half the time nothing (a valid case), unless ``always``; else one defect of the catalogue,
    applied to ``request``."""
    if not always and draw(st.booleans()):
        return "", OK
    # Not one sampled_from: inside a composite, hypothesis gives each draw its simplest value (the
    # first entry) about a third of the time, and one defect took 40 % of the draws. The sum of four
    # draws, modulo the catalogue, spreads them within 1.5x of even; what bias is left goes to the
    # first defect, so each catalogue starts with one that has a single documented code.
    names = list(catalogue)
    pick = sum(draw(st.integers(0, len(names) - 1)) for _ in range(4)) % len(names)
    return names[pick], catalogue[names[pick]](draw, request)


def _pick(draw, entries):
    """One entry of a non-empty repeated field (a reference: changing it changes the request)."""
    return entries[draw(st.integers(0, len(entries) - 1))]


def _set(name: str, value: st.SearchStrategy, expect: frozenset[str], where=None) -> Defect:
    """A defect that sets field ``name`` of the request, or of ``where(draw, request)``, to a drawn value."""

    def apply(draw, request):
        setattr(where(draw, request) if where else request, name, draw(value))
        return expect

    return apply


def _over(entries, limit: int, entry=None) -> None:
    """Fills a repeated field to ``limit`` + 1 entries (copies of those there, else of ``entry``)."""
    base = [x if isinstance(x, str | int) else _copy(x) for x in entries] or [entry]
    del entries[:]
    entries.extend(sized(base, limit + 1))


def _none(field: str) -> Defect:
    """A defect that empties repeated field ``field`` (a batch that must hold at least one)."""

    def apply(draw, request):
        del getattr(request, field)[:]
        return INVALID

    return apply


def _past(w: World, field: str, limit: str, entry=None) -> Defect:
    """A defect that fills repeated field ``field`` to one past GetModelInfo's ``limit`` (:func:`_over`)."""

    def apply(draw, request):
        _over(getattr(request, field), w.limits[limit], entry)
        return INVALID

    return apply


def _copy(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    return out


# ------------------------------------------------------------------------------------------ values


def unknown_ids(w: World) -> st.SearchStrategy[str]:
    """Odd ids no user or item has: valid texts outside the catalogue and the fuzzer's own fz_* ids
    (which UpsertItems and RecordInteractions may have added)."""
    known = w.known_users | w.known_items
    return odd_texts(SHORT).filter(lambda x: x not in known and not x.startswith("fz"))


def _fresh_ids(w: World) -> st.SearchStrategy[str]:
    """Ids UpsertItems and DeleteItems use: scratch items, fz_0..fz_19 and odd fz: ones."""
    return st.one_of(
        st.sampled_from(w.scratch + tuple(f"fz_{j}" for j in range(20))),
        odd_texts(SHORT - 3).map(lambda t: "fz:" + t),
    )


def _long(limit: int = SHORT) -> st.SearchStrategy[str]:
    """Texts over ``limit`` characters (just over, or four times over)."""
    return st.builds(
        stretch, st.sampled_from(("x", "é", "😍", "tec_0001")), st.sampled_from((limit + 1, 4 * limit + 7))
    )


def _blank_or_nul() -> st.SearchStrategy[str]:
    return st.sampled_from((" ", "\t\n\r", "\x00", "tec_0001\x00", "a\x00b"))


def _write_id(rpc: str) -> st.SearchStrategy[str]:
    """Mostly none; else a fresh printable-ASCII id, up to the 128-character limit. Prefixed by the
    RPC, so a drawn id is never another RPC's: a repeat within one RPC is answered from the journal
    (OK), one of another RPC is INVALID_ARGUMENT (test_consistency.test_a_write_id_names_one_call)."""
    fresh = st.uuids().map(lambda u: f"{rpc}-{u}")
    return mostly(st.just(""), fresh | fresh.map(lambda x: stretch(x + "/", 128)))


def _bad_write_id() -> st.SearchStrategy[str]:
    """INVALID_ARGUMENT: over 128 characters, or not printable ASCII."""
    return st.sampled_from(("w" * 129, "w" * 4000, "é-1234", "写入", "a\nb", "\x7f", "\x00", "\t"))


def users(w: World) -> st.SearchStrategy[pb.UserAttributes]:
    """Valid attributes of an unseen user (personality whenever the model reads it)."""
    reads = "personality" in w.user_fields

    @st.composite
    def build(draw):
        u = pb.UserAttributes(age=draw(floats(5e-324, 150.0)), profession=draw(texts(w.professions)))
        if reads or draw(st.booleans()):
            u.personality = draw(texts(w.personalities))
        return u

    return build()


def _who(draw, w: World, msg) -> None:
    """Sets the oneof user_ref to a known user's id or to valid attributes."""
    if draw(st.booleans()):
        msg.user_id = draw(st.sampled_from(w.users))
    else:
        msg.user.CopyFrom(draw(users(w)))


def _any_ids(w: World) -> st.SearchStrategy[str]:
    """Ids a filter or a history may hold, all valid: items, scratch items (maybe deleted) and unknown ids."""
    return st.one_of(st.sampled_from(w.stable + w.scratch), unknown_ids(w))


def _history(w: World) -> st.SearchStrategy[list[str]]:
    # A model that reads no history ignores one of any length (max_history 0).
    return batches(_any_ids(w), w.limits["max_history"] or 50)


def _user_defects(w: World, target: Callable) -> dict[str, Defect]:
    """Defects of a user_ref (Recommend's, or a Score pair's: ``target(draw, request)`` finds it)."""
    reads = "personality" in w.user_fields

    def attrs(draw, req):
        msg = target(draw, req)
        msg.user.CopyFrom(draw(users(w)))
        return msg.user

    def nobody(draw, req):
        target(draw, req).ClearField("user_ref")
        return INVALID

    bad = bad_texts(SHORT).map(lambda x: x[1])
    out = {
        "user: neither user_id nor attributes": nobody,
        "user_id: empty": _set("user_id", st.just(""), INVALID, target),
        "user_id: unknown": _set("user_id", unknown_ids(w), NOT_FOUND, target),
        "user_id: over 200 characters": _set("user_id", _long(), INVALID, target),
        # Blank or holding NUL: "text empty where required" or holding NUL (INVALID_ARGUMENT), or
        # just an id no user has (NOT_FOUND, what the server answers); the docs allow either reading.
        "user_id: blank or holding NUL": _set("user_id", _blank_or_nul(), EITHER_ID, target),
        "user.age: NaN, infinite, <= 0 or > 150": _set("age", outside(5e-324, 150.0), INVALID, attrs),
        "user.profession: empty, blank, NUL or over 200 characters": _set("profession", bad, INVALID, attrs),
    }
    if reads:  # a model that does not read it ignores it
        out["user.personality: missing, blank, NUL or over 200 characters"] = _set(
            "personality", bad, INVALID, attrs
        )
    return out


def _history_defects(w: World, target: Callable) -> dict[str, Defect]:
    """Defects of a history (Recommend's, or a Score pair's)."""

    def one(value, expect):
        def apply(draw, req):
            msg = target(draw, req)
            if not msg.history:
                msg.history.append(draw(st.sampled_from(w.stable)))
            msg.history[draw(st.integers(0, len(msg.history) - 1))] = draw(value)
            return expect

        return apply

    out = {
        "history: an id over 200 characters": one(_long(), INVALID),
        "history: an empty id": one(st.just(""), INVALID),
        # The docs name no code for NUL in an id that is only looked up and ignored when unknown.
        "history: an id holding NUL": one(st.sampled_from(("\x00", "item_0001\x00")), EITHER_IGNORED),
    }
    if w.limits["max_history"]:  # without one, a history of any length is ignored

        def over(draw, req):
            msg = target(draw, req)
            _over(msg.history, w.limits["max_history"], w.stable[0])
            return INVALID

        out["history: over max_history ids"] = over
    return out


# -------------------------------------------------------------------------------------------- RPCs


def recommend(w: World, only: str | None = None) -> st.SearchStrategy[Case]:
    """Recommend cases; with ``only``, every case carries one of the defects named with that prefix."""

    def me(draw, req):
        return req

    def price(draw, req):
        bound = draw(st.sampled_from(("min", "max")))
        setattr(req.price_range, bound, draw(st.sampled_from(BAD_FLOATS)))
        return INVALID

    def inverted(draw, req):
        low = draw(floats(0.0, 1000.0))
        req.price_range.min, req.price_range.max = low + draw(st.floats(1e-3, 1e6)), low
        return INVALID

    def odd_entry(field_name, value, expect=EITHER_IGNORED):
        def apply(draw, req):
            getattr(req, field_name).append(draw(value))
            return expect

        return apply

    defects = {
        "top_n: outside 1..max_top_n": _set("top_n", bad_int32s(1, w.limits["max_top_n"]), INVALID),
        "price_range: a bound NaN or infinite": price,
        "price_range: min above max": inverted,
        "categories: over max_categories": _past(w, "categories", "max_categories", w.categories[0]),
        "exclude_item_ids: over max_exclude_items": _past(
            w, "exclude_item_ids", "max_exclude_items", w.stable[0]
        ),
        # A filter name or an excluded id is only looked up ("names not in the catalogue match
        # nothing", "unknown ids are ignored"): the docs name no code for one empty, holding NUL or
        # (a category) over 200 characters.
        "categories: a name empty, NUL or over 200 characters": odd_entry(
            "categories", st.sampled_from(("", "\x00", "novel\x00")) | _long()
        ),
        "exclude_item_ids: an id empty or holding NUL": odd_entry(
            "exclude_item_ids", st.sampled_from(("", "\x00", "item_0001\x00"))
        ),
        "exclude_item_ids: an id over 200 characters": odd_entry("exclude_item_ids", _long(), INVALID),
        **_user_defects(w, me),
        **_history_defects(w, me),
    }
    defects = _only(defects, only)

    @st.composite
    def build(draw):
        req = pb.RecommendRequest(top_n=draw(int32s(1, w.limits["max_top_n"])))
        _who(draw, w, req)
        if (seen := draw(st.sampled_from((None, True, False)))) is not None:
            req.exclude_seen = seen
        if draw(st.booleans()):
            req.price_range.SetInParent()
            bound = mostly(st.floats(0.0, 2000.0), st.sampled_from(ODD_FLOATS))  # any finite number
            bounds = {b: draw(bound) for b in ("min", "max") if draw(st.booleans())}
            if len(bounds) == 2:  # min <= max: any finite pair, ordered
                bounds = dict(zip(("min", "max"), sorted(bounds.values())))
            for b, v in bounds.items():
                setattr(req.price_range, b, v)
        req.categories.extend(draw(batches(texts(w.categories), w.limits["max_categories"], empty=True)))
        req.exclude_item_ids.extend(draw(batches(_any_ids(w), w.limits["max_exclude_items"], empty=True)))
        if draw(st.booleans()):
            req.history.extend(draw(_history(w)))
        defect, expect = _inject(draw, req, defects, always=only is not None)
        return _case(w, "Recommend", req, expect, defect)

    return build()


def score(w: World, only: str | None = None) -> st.SearchStrategy[Case]:
    """Score cases; ``only`` as for recommend()."""

    def pair_of(draw, req):
        return _pick(draw, req.pairs)

    def new_texts(draw, req):
        # Professions no table holds, one per pair, never sent before (the salt): each would need
        # the encoder, and one more than max_new_texts is refused before any is encoded.
        salt, user = draw(st.integers(0, 2**64)), draw(users(w))
        pairs = []
        for j in range(w.limits["max_new_texts"] + 1):
            pairs.append(pb.ScorePair(item_id=w.stable[j % len(w.stable)], user=user))
            pairs[-1].user.profession = f"{NEW_TEXT} {salt} {j}"
        del req.pairs[:]
        req.pairs.extend(pairs)
        return INVALID

    defects = {
        "pairs: none": _none("pairs"),
        "pairs: over max_score_pairs": _past(w, "pairs", "max_score_pairs"),
        "pairs: over max_new_texts new texts": new_texts,
        "item_id: empty": _set("item_id", st.just(""), INVALID, pair_of),
        "item_id: unknown": _set("item_id", unknown_ids(w), NOT_FOUND, pair_of),
        "item_id: over 200 characters": _set("item_id", _long(), INVALID, pair_of),
        "item_id: blank or holding NUL": _set("item_id", _blank_or_nul(), EITHER_ID, pair_of),  # as user_id
        **_user_defects(w, pair_of),
        **_history_defects(w, pair_of),
    }
    defects = _only(defects, only)

    @st.composite
    def pair(draw):
        p = pb.ScorePair(item_id=draw(st.sampled_from(w.stable)))
        _who(draw, w, p)
        if draw(st.booleans()):
            p.history.extend(draw(_history(w)))
        return p

    @st.composite
    def build(draw):
        req = pb.ScoreRequest(pairs=draw(batches(pair(), w.limits["max_score_pairs"])))
        defect, expect = _inject(draw, req, defects, always=only is not None)
        return _case(w, "Score", req, expect, defect)

    return build()


def evaluate(w: World) -> st.SearchStrategy[Case]:
    enums = [v for s in w.splits for v in SPLITS.get(s, ())]
    lacking = [v for s, vs in SPLITS.items() if s not in w.splits for v in vs]

    def inline(draw, req):
        if not req.interactions:
            req.interactions.add(user_id=w.users[0], item_id=w.stable[0])
        return _pick(draw, req.interactions)

    def interaction(name, value, expect):
        return _set(name, value, expect, inline)

    def recorded(value):
        def apply(draw, req):  # a recorded split: only without inline interactions (then it is ignored)
            del req.interactions[:]
            req.split = draw(value)
            return INVALID

        return apply

    def k(draw, req):
        if not req.ks:
            req.ks.append(10)
        req.ks[draw(st.integers(0, len(req.ks) - 1))] = draw(bad_int32s(1, 1000))
        return INVALID

    inter = pb.Interaction(user_id=w.users[0], item_id=w.stable[0])
    defects = {
        "ks: over max_ks values": _past(w, "ks", "max_ks", 10),
        "ks: a k outside 1..1000": k,
        "protocol: unknown": _set("protocol", bad_int32s(0, 2), INVALID),
        "split: unknown": recorded(bad_int32s(0, 2)),
        "interactions: over max_inline_interactions": _past(
            w, "interactions", "max_inline_interactions", inter
        ),
        "interactions: user_id unknown": interaction("user_id", unknown_ids(w), NOT_FOUND),
        "interactions: user_id over 200 characters": interaction("user_id", _long(), INVALID),
        "interactions: user_id empty": interaction("user_id", st.just(""), INVALID),
        "interactions: user_id blank or holding NUL": interaction("user_id", _blank_or_nul(), EITHER_ID),
        "interactions: item_id unknown": interaction("item_id", unknown_ids(w), NOT_FOUND),
        "interactions: item_id over 200 characters": interaction("item_id", _long(), INVALID),
        "interactions: item_id empty": interaction("item_id", st.just(""), INVALID),
        "interactions: item_id blank or holding NUL": interaction("item_id", _blank_or_nul(), EITHER_ID),
        # Inline pairs are judged against the exported catalogue (the recorded split's items): an
        # item UpsertItems added, present or deleted, is not one of them (server/engine/evaluation.py;
        # docs/api.md does not say it in as many words).
        "interactions: item_id not exported (fz_*)": interaction(
            "item_id", st.sampled_from(tuple(f"fz_{j}" for j in range(20))), NOT_FOUND
        ),
    }
    if lacking:
        defects["split: one the bundle lacks"] = recorded(st.sampled_from(lacking))

    @st.composite
    def build(draw):
        req = pb.EvaluateRequest(
            split=draw(st.sampled_from(enums)), protocol=draw(st.sampled_from((0, 1, 2)))
        )
        req.ks.extend(draw(batches(int32s(1, 1000), w.limits["max_ks"], empty=True)))
        if draw(st.booleans()):
            pair = st.builds(
                pb.Interaction, user_id=st.sampled_from(w.users), item_id=st.sampled_from(w.stable)
            )
            req.interactions.extend(draw(batches(pair, w.limits["max_inline_interactions"])))
            if draw(st.booleans()):  # the recorded split is ignored, whichever it names
                req.split = draw(st.sampled_from((0, 1, 2)))
        defect, expect = _inject(draw, req, defects)
        return _case(w, "Evaluate", req, expect, defect)

    return build()


def model_info(w: World) -> st.SearchStrategy[Case]:
    # Unknown fields (a newer client's) must be ignored, not refused; bytes that do not parse are.
    unknown = st.sampled_from((b"", b"\x08\x01", b"\xf8\x06\x01", b"\x92\x07\x03abc"))
    valid = st.builds(lambda extra: _case(w, "GetModelInfo", extra), unknown)
    invalid = st.builds(
        lambda data: _case(w, "GetModelInfo", data, INVALID, "bytes that do not parse"),
        st.sampled_from(UNPARSEABLE),
    )
    return valid | invalid


def upsert(w: World) -> st.SearchStrategy[Case]:
    # Each valid item stays well under max_item_bytes (UTF-8 of its four texts + 45 bytes of framing,
    # docs/api.md): its id and category take at most 800 bytes each, description and features the rest.
    budget = (w.limits["max_item_bytes"] - 45 - 2 * 4 * SHORT) // 2 - 64
    item = st.builds(
        pb.NewItem,
        item_id=_fresh_ids(w),
        description=texts(w.descriptions, LONG).map(lambda t: fit(t, budget)),
        features=texts(w.descriptions, LONG).map(lambda t: fit(t, budget)),
        price=floats(0.0, 1e9),
        category=texts(w.categories),
    )

    def one(draw, req):
        return _pick(draw, req.items)

    def text(name, limit):
        return _set(name, bad_texts(limit).map(lambda x: x[1]), INVALID, one)

    def heavy(draw, req):
        # Within the length limits, over max_item_bytes: 4,500 four-byte characters in each long text.
        x = _pick(draw, req.items)
        x.description, x.features = "😍" * 4500, "🏳" * 4500
        return INVALID

    def duplicate(draw, req):
        if len(req.items) < 2:
            copy = req.items.add()
            copy.CopyFrom(req.items[0])
        j, k = draw(st.lists(st.integers(0, len(req.items) - 1), min_size=2, max_size=2, unique=True))
        req.items[k].item_id = req.items[j].item_id
        return INVALID

    defects = {
        "items: none": _none("items"),
        "items: over max_upsert_items": _past(w, "items", "max_upsert_items"),
        "items: a duplicate item_id": duplicate,
        "item_id: empty, blank, NUL or over 200 characters": text("item_id", SHORT),
        "description: empty, blank, NUL or over 5000 characters": text("description", LONG),
        "features: empty, blank, NUL or over 5000 characters": text("features", LONG),
        "category: empty, blank, NUL or over 200 characters": text("category", SHORT),
        "price: NaN, infinite, < 0 or > 1e9": _set("price", outside(0.0, 1e9), INVALID, one),
        "item: over max_item_bytes": heavy,
        "write_id: over 128 characters or not printable ASCII": _set("write_id", _bad_write_id(), INVALID),
    }

    @st.composite
    def build(draw):
        items = draw(batches(item, w.limits["max_upsert_items"], unique_by=lambda x: x.item_id))
        seen = set()
        for j, x in enumerate(items):  # a batch's filler copies take ids of their own
            if x.item_id in seen:
                x = items[j] = _renamed(x, f"fz~{j}~{x.item_id[:150]}")
            seen.add(x.item_id)
        req = pb.UpsertItemsRequest(items=items, write_id=draw(_write_id("upsert")))
        defect, expect = _inject(draw, req, defects)
        return _case(w, "UpsertItems", req, expect, defect)

    return build()


def _renamed(item: pb.NewItem, item_id: str) -> pb.NewItem:
    copy = pb.NewItem()
    copy.CopyFrom(item)
    copy.item_id = item_id
    return copy


def delete(w: World) -> st.SearchStrategy[Case]:
    # Never a stable item; unknown ids are ignored, so any other valid id goes.
    ids = st.one_of(_fresh_ids(w), unknown_ids(w))

    def one(value, expect):
        def apply(draw, req):
            req.item_ids[draw(st.integers(0, len(req.item_ids) - 1))] = draw(value)
            return expect

        return apply

    defects = {
        "item_ids: none": _none("item_ids"),
        "item_ids: over max_delete_items": _past(w, "item_ids", "max_delete_items"),
        "item_ids: an empty id": one(st.just(""), INVALID),
        "item_ids: an id over 200 characters": one(_long(), INVALID),
        "item_ids: an id holding NUL": one(st.sampled_from(("\x00", "fz_1\x00", "a\x00b")), INVALID),
        # Blank is not empty, and unknown ids are ignored; but UpsertItems refuses a blank id as empty.
        "item_ids: a blank id": one(st.sampled_from((" ", "\t\n\r")), EITHER_IGNORED),
        "write_id: over 128 characters or not printable ASCII": _set("write_id", _bad_write_id(), INVALID),
    }

    @st.composite
    def build(draw):
        req = pb.DeleteItemsRequest(
            item_ids=draw(batches(ids, w.limits["max_delete_items"])), write_id=draw(_write_id("delete"))
        )
        defect, expect = _inject(draw, req, defects)
        return _case(w, "DeleteItems", req, expect, defect)

    return build()


def record(w: World) -> st.SearchStrategy[Case]:
    """Events of known users (or, with create_users, new fz_user: ones) on stable items, at odd but
    valid times, kinds, weights and event ids; defects in one event, or in the batch."""
    created = odd_texts(SHORT - len(CREATED)).map(lambda t: CREATED + t)
    valid_kind = st.sampled_from(("", "click", "purchase", " ")) | st.text(max_size=12).filter(
        lambda t: "\x00" not in t
    )
    event = st.builds(
        pb.InteractionEvent,
        user_id=st.sampled_from(w.users),
        item_id=st.sampled_from(w.stable),
        timestamp=mostly(st.just(0.0), floats(0.0, 1.7e9)),  # 0: now; at most a day ahead
        kind=mostly(valid_kind, st.builds(stretch, odd_texts(3), st.just(64))),
        weight=mostly(
            st.just(0.0), st.floats(1 / 1024, 1000.0, width=32) | st.sampled_from((1.0, 1000.0, 5e-324))
        ),
        event_id=mostly(
            st.sampled_from(("", "", "e1", "e2")),  # a repeated event id is a duplicate, not an error
            st.uuids().map(lambda u: stretch(f"ev-{u}/", 128)),
        ),
    )

    def one(draw, req):
        return _pick(draw, req.events)

    def field_of(name, value, expect):
        return _set(name, value, expect, one)

    def text(name, limit):
        return field_of(name, bad_texts(limit).map(lambda x: x[1]), INVALID)

    def stranger(draw, req):
        req.create_users = False
        _pick(draw, req.events).user_id = draw(unknown_ids(w))
        return NOT_FOUND

    defects = {
        "events: none": _none("events"),
        "events: over max_record_events": _past(w, "events", "max_record_events"),
        "user_id: empty, blank, NUL or over 200 characters": text("user_id", SHORT),
        "user_id: unknown, without create_users": stranger,
        "item_id: empty, blank, NUL or over 200 characters": text("item_id", SHORT),
        "item_id: unknown": field_of("item_id", unknown_ids(w), NOT_FOUND),
        "kind: NUL or over 64 characters": field_of(
            "kind", st.sampled_from(("\x00", "click\x00")) | _long(64), INVALID
        ),
        "weight: NaN, infinite, < 0 or > 1000": field_of(
            "weight", st.sampled_from((*BAD_FLOATS, -1.0, -0.5, 1000.5, 1e9, 3.4e38)), INVALID
        ),
        "timestamp: NaN, infinite, < 0 or over a day ahead": field_of(
            "timestamp", st.sampled_from((*BAD_FLOATS, -1.0, -1e10, 1e12, 1.7e308)), INVALID
        ),
        "event_id: over 128 characters or not printable ASCII": field_of(
            "event_id", _bad_write_id(), INVALID
        ),
        "write_id: over 128 characters or not printable ASCII": _set("write_id", _bad_write_id(), INVALID),
    }

    @st.composite
    def build(draw):
        events = draw(batches(event, w.limits["max_record_events"]))
        req = pb.RecordInteractionsRequest(events=events, write_id=draw(_write_id("record")))
        if draw(st.booleans()):
            req.create_users = True
            for e in req.events:
                if draw(st.integers(0, 3)) == 0:
                    e.user_id = draw(created)
        defect, expect = _inject(draw, req, defects)
        return _case(w, "RecordInteractions", req, expect, defect)

    return build()


def _served(w: World) -> tuple[str, ...]:
    """The ways a Reload names the served folder: none, its path (plain, or through ``..``), or its name
    relative to the bundle root (by default the parent of --artifacts, docs/operations.md). Each is
    a full reload (a quarter of a second at the tests' scale), so four, not every spelling."""
    path, name = str(w.serving), w.serving.name
    return ("", path, f"{path}/../{name}", name)


def reload(w: World) -> st.SearchStrategy[Case]:
    """The served folder (by "" or its path): OK. Paths that cannot exist: FAILED_PRECONDITION. A
    fuzzer must never make the server load something else."""
    missing = str(w.missing)
    targets = st.one_of(
        st.sampled_from((missing, missing + "\x00x", missing + "/" + "a" * 300)),
        st.builds(lambda t: f"{missing}/{t}", odd_texts()),
        st.builds(lambda n: stretch(missing + "/", n), st.sampled_from((4096, 70_000))),
    )
    ok = st.builds(lambda a: _case(w, "Reload", pb.ReloadRequest(artifacts=a)), st.sampled_from(_served(w)))
    refused = st.builds(
        lambda a: _case(
            w, "Reload", pb.ReloadRequest(artifacts=a), frozenset({"FAILED_PRECONDITION"}), "missing folder"
        ),
        targets,
    )
    return ok | refused


def _health_expect(service: str) -> frozenset[str]:
    return OK if service in HEALTH_SERVICES else NOT_FOUND


def health() -> st.SearchStrategy[Case]:
    service = st.one_of(
        st.sampled_from(HEALTH_SERVICES),
        st.sampled_from(("grpc.health.v1.Health", "towerserve.v1.Nope")) | odd_texts(),
    )

    def build(s: str) -> Case:
        expect = _health_expect(s)
        return Case(
            HEALTH,
            HEALTH_CHECK,
            health_pb2.HealthCheckRequest(service=s),
            expect,
            "" if expect == OK else "unknown service",
        )

    return st.builds(build, service)


def _bad_utf8(field_number: int) -> bytes:
    """A length-delimited field holding bytes that are not UTF-8 (a string field must refuse them)."""
    return bytes([(field_number << 3) | 2, 3, 0xC3, 0x28, 0xFF])


_REQUESTS = {r.path: (name, r.request) for name, r in RPCS.items()}
_REQUESTS[HEALTH_CHECK] = (HEALTH, health_pb2.HealthCheckRequest)


def _garbage_expect(w: World, path: str, data: bytes, origin: Case | None) -> tuple[frozenset[str], str]:
    """The codes raw bytes may get on ``path``, found by parsing them as the server does."""
    if len(data) > w.limits["max_response_bytes"]:  # gRPC refuses it (on a path nobody serves, maybe not)
        codes = {"RESOURCE_EXHAUSTED"} | ({"UNIMPLEMENTED"} if path not in SERVED_PATHS else set())
        return frozenset(codes), "over the message limit"
    if path not in SERVED_PATHS:
        return frozenset({"UNIMPLEMENTED"}), "unserved path"
    name, cls = _REQUESTS[path]
    try:
        msg = cls.FromString(data)
    except DecodeError:
        return INVALID, "bytes that do not parse"
    if origin is not None and origin.path == path and msg == origin.request:
        return origin.expect, "mangled, parsed back unchanged"
    if name == HEALTH:
        return _health_expect(msg.service), "parsed"
    if name == "Reload":
        ok = msg.artifacts in _served(w)
        return (OK if ok else frozenset({"FAILED_PRECONDITION"})), "parsed"
    # Parsed into a request nobody built (some field changed, or another RPC's bytes): it may be
    # valid or not, so any code its RPC documents (never a BAD one).
    return DOCUMENTED[name], "parsed"


def garbage(w: World, paths: tuple[str, ...] = PATHS) -> st.SearchStrategy[Case]:
    """Raw bytes to every method path: random, truncated or bit-flipped requests (valid or not), bad
    UTF-8."""

    def mangled(case: Case, cut: int, flips: list[int]) -> tuple[bytes, Case]:
        data = bytearray(case.payload[: max(0, len(case.payload) - cut)])
        for f in flips:
            if data:
                data[f % len(data)] ^= 1 << (f % 8)
        return bytes(data), case

    built = st.one_of(recommend(w), score(w), evaluate(w), upsert(w), delete(w), record(w))
    payloads = st.one_of(
        st.binary(max_size=64).map(lambda b: (b, None)),
        st.builds(_bad_utf8, st.integers(1, 8)).map(lambda b: (b, None)),
        st.builds(mangled, built, st.integers(0, 8), st.lists(st.integers(0, 2**20), max_size=4)),
    )
    stable = frozenset(w.stable)

    @st.composite
    def build(draw):
        path, (data, origin) = draw(st.sampled_from(paths)), draw(payloads)
        expect, what = _garbage_expect(w, path, data, origin)
        if "parsed" in what:  # what parses runs: it must not change what other cases rely on
            msg = _REQUESTS[path][1].FromString(data)
            if path == RPCS["Reload"].path:  # the served folder, or one that does not exist
                target = (
                    w.serving.parent / msg.artifacts
                )  # relative to the bundle root, as the server takes it
                assume(msg.artifacts in _served(w) or not os.path.lexists(target))
            elif path == RPCS["DeleteItems"].path:  # stable items stay
                assume(not stable.intersection(msg.item_ids))
            elif path == RPCS["RecordInteractions"].path and msg.create_users:  # no user unknown ids name
                assume(all(e.user_id in w.known_users or e.user_id.startswith(CREATED) for e in msg.events))
            elif path == RPCS["Score"].path:  # a cut copy of max_new_texts + 1 would encode those texts
                assume(not any(p.user.profession.startswith(NEW_TEXT) for p in msg.pairs))
        return Case(f"garbage:{path.rsplit('/', 1)[-1]}", path, data, expect, what)

    return build()


def cases(w: World, garbage_paths: tuple[str, ...] = PATHS) -> st.SearchStrategy[Case]:
    """Every RPC, health, and garbage to every path."""
    return st.one_of(
        recommend(w),
        score(w),
        evaluate(w),
        model_info(w),
        upsert(w),
        delete(w),
        record(w),
        reload(w),
        health(),
        garbage(w, garbage_paths),
    )


# ------------------------------------------------------------------------------------------ calling


# A careful client's channel: it accepts whatever response the server may send (a Recommend of
# max_top_n upserted items of max_item_bytes is up to 16 MB), as docs/api.md tells clients to; the
# default 4 MB would turn a valid Recommend into RESOURCE_EXHAUSTED once upserts grow the items.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", -1),)


class Caller:
    """Sends a case's bytes on its path; returns (status code name, details, response bytes)."""

    def __init__(self, channel: grpc.Channel, timeout: float = 120.0):
        self.channel, self.timeout = channel, timeout
        self._stubs: dict[str, grpc.UnaryUnaryMultiCallable] = {}

    def __call__(self, case: Case) -> tuple[str, str, bytes | None]:
        stub = self._stubs.get(case.path)
        if stub is None:  # no serializers: the bytes go out as they are, and come back undecoded
            stub = self._stubs[case.path] = self.channel.unary_unary(case.path)
        try:
            return "OK", "", stub(case.payload, timeout=self.timeout)
        except grpc.RpcError as err:
            return err.code().name, err.details() or "", None


def wire_size(details: str) -> int:
    """Bytes of a status message on the wire (grpc-message): UTF-8, each byte outside printable ASCII
    (and '%') percent-encoded as three."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in details.encode("utf-8"))


# gRPC clients drop response headers over 8 kB (at random up to the 16 kB hard limit), turning the
# refusal into RESOURCE_EXHAUSTED: a status message must leave room for the other headers.
MAX_DETAILS_BYTES = 8192 - 256


def problem(case: Case, code: str, details: str, response: bytes | None) -> str | None:
    """Why this outcome breaks the contract (None: it does not)."""
    if code in BAD_CODES:
        return f"{code}: {details}"
    if code == "RESOURCE_EXHAUSTED" and "metadata size exceeds" in details:
        return f"the refusal was too large for the client: {details}"
    if wire_size(details) > MAX_DETAILS_BYTES:
        return f"{code} with a {wire_size(details)}-byte message: {details[:200]}"
    if code not in case.expect:
        return f"{code} where the contract says {case.expected}: {details[:300]}"
    if code != "OK" or response is None:
        return None
    if case.rpc == "Recommend":
        r = pb.RecommendResponse.FromString(response)
        if len(r.items) > case.request.top_n or not all(0.0 <= x.score <= 1.0 for x in r.items):
            return f"OK with {len(r.items)} items for top_n {case.request.top_n}, scores {[x.score for x in r.items]}"
    elif case.rpc == "Score":
        r = pb.ScoreResponse.FromString(response)
        if len(r.scores) != len(case.request.pairs) or not all(0.0 <= s <= 1.0 for s in r.scores):
            return f"OK with {len(r.scores)} scores for {len(case.request.pairs)} pairs"
    return None


@dataclass
class Tally:
    """Calls by RPC, expected codes and the code got; by RPC and defect; and every case that broke
    the contract."""

    outcomes: Counter = field(default_factory=Counter)  # (rpc, expected, got) -> calls
    defects: Counter = field(default_factory=Counter)  # (rpc, defect) -> calls ("" for valid cases)
    failures: list[str] = field(default_factory=list)

    def record(self, case: Case, code: str, details: str, response: bytes | None) -> str | None:
        self.outcomes[case.rpc, case.expected, code] += 1
        self.defects[case.rpc, case.defect] += 1
        why = problem(case, code, details, response)
        if why is not None:
            self.failures.append(f"{why}\n    request: {case.describe()}")
        return why

    @property
    def codes(self) -> Counter:
        """(rpc, code got) -> calls."""
        out = Counter()
        for (rpc, _, got), n in self.outcomes.items():
            out[rpc, got] += n
        return out

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())

    def valid_ok(self, rpc: str) -> int:
        """Valid cases of ``rpc`` answered OK."""
        return self.outcomes[rpc, "OK", "OK"]

    def refused_as_documented(self, rpc: str) -> int:
        """Invalid cases of ``rpc`` answered with their documented (non-OK) code."""
        return sum(
            n
            for (r, expected, got), n in self.outcomes.items()
            if r == rpc and got != "OK" and got in expected.split("|")
        )

    def lines(self) -> list[str]:
        """One line per RPC: its calls, then expected -> got counts, most frequent first."""
        per: dict[str, Counter] = {}
        for (rpc, expected, got), n in self.outcomes.items():
            per.setdefault(rpc, Counter())[f"{expected}->{got}"] += n
        return [
            f"{rpc:<18} {sum(c.values()):>6}  " + ", ".join(f"{k} {v}" for k, v in c.most_common())
            for rpc, c in sorted(per.items())
        ]


def health_status(channel: grpc.Channel, timeout: float = 10.0) -> str:
    reply = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )(health_pb2.HealthCheckRequest(), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
