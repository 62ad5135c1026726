"""Fuzz cases for every RPC, the caller that sends them raw to a real server, and the verdict.

Shared by tests/test_fuzz.py (the suite's few hundred cases) and benchmarks/fuzz.py (ten thousand and
more). A case is one request as bytes on one method path, so well-formed messages built from odd
values (tests/fuzz_values.py: mostly what the server knows, otherwise what it cannot) and raw
garbage go through the same code. The property is the same everywhere: no status is ever INTERNAL,
UNKNOWN, UNAVAILABLE or DEADLINE_EXCEEDED (a client can act on every other code, and a single
request must not stall or take down an idle server), an OK answer keeps the API's promises, and
health still says SERVING at the end.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from fuzz_values import INT32, batches, floats, int32s, mostly, stretch, texts
from grpc_health.v1 import health_pb2
from hypothesis import assume
from hypothesis import strategies as st

from towerserve.server.core.rpcs import HEALTH_CHECK, RPCS
from towerserve.v1 import recommender_pb2 as pb

# No request may get these: INTERNAL and UNKNOWN say nothing a client can act on; UNAVAILABLE and
# DEADLINE_EXCEEDED would mean a request, however odd, made a healthy, idle server stall or refuse
# service (each case runs alone, with a 120 s deadline, against a served model).
BAD_CODES = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
HEALTH = "Health.Check"
LONG = 5000  # the server's limit for descriptions and features
# The proto's services by path, the health check, and two paths nothing serves.
PATHS = (*(r.path for r in RPCS.values()), HEALTH_CHECK, "/towerserve.v1.Recommender/Nope", "/x.Y/Z")
SERVICES = ("", "towerserve.v1.Recommender", "towerserve.v1.Admin", "grpc.health.v1.Health")


@dataclass(frozen=True)
class World:
    """What the server serves (and its limits), so strategies mix known values with unknown ones."""

    serving: Path
    missing: Path  # a folder that does not exist: with the served one, the only Reload targets
    users: tuple[str, ...]
    items: tuple[str, ...]
    categories: tuple[str, ...]
    professions: tuple[str, ...]
    personalities: tuple[str, ...]
    descriptions: tuple[str, ...]
    limits: dict[str, int]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


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
    return World(
        serving=Path(serving).resolve(),
        missing=Path(missing),
        users=tuple(r["user_id"] for r in users[:200]),
        items=tuple(r["item_id"] for r in items[:200]),
        categories=tuple(info.categories),
        professions=tuple(sorted({r.get("profession", "") for r in users} - {""}))[:50],
        personalities=tuple(sorted({r.get("personality", "") for r in users} - {""}))[:50],
        descriptions=tuple(r["description"] for r in items[:50]),
        limits={n: getattr(info, n) for n in names},
    )


# ------------------------------------------------------------------------------------------ values


# ---------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Case:
    """One call: ``rpc`` names it in the counts; ``request`` is the message (or the raw bytes)."""

    rpc: str
    path: str
    request: object

    @property
    def payload(self) -> bytes:
        return self.request if isinstance(self.request, bytes) else self.request.SerializeToString()

    def describe(self, width: int = 400) -> str:
        text = repr(self.request) if isinstance(self.request, bytes) else _short(self.request)
        return f"{self.rpc} {self.path} ({len(self.payload)} bytes): {text[:width]}"


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


def _case(name: str, request) -> Case:
    return Case(name, RPCS[name].path, request)


def users(w: World) -> st.SearchStrategy[pb.UserAttributes]:
    @st.composite
    def build(draw):
        u = pb.UserAttributes(age=draw(floats(1.0, 149.0)), profession=draw(texts(w.professions)))
        if draw(st.booleans()):
            u.personality = draw(texts(w.personalities))
        return u

    return build()


def _who(draw, w: World, msg) -> None:
    """Sets the oneof user_ref to a known or odd id, to attributes, or leaves it unset."""
    kind = draw(st.sampled_from(("id", "id", "attrs", "attrs", "none")))
    if kind == "id":
        msg.user_id = draw(texts(w.users))
    elif kind == "attrs":
        msg.user.CopyFrom(draw(users(w)))


def _history(w: World) -> st.SearchStrategy[list[str]]:
    return batches(texts(w.items), w.limits["max_history"] or 50)


@st.composite
def recommend(draw, w: World) -> Case:
    req = pb.RecommendRequest(top_n=draw(int32s(w.limits["max_top_n"])))
    _who(draw, w, req)
    if (seen := draw(st.sampled_from((None, True, False)))) is not None:
        req.exclude_seen = seen
    if draw(st.booleans()):
        req.price_range.SetInParent()
        for bound in ("min", "max"):
            if draw(st.booleans()):
                setattr(req.price_range, bound, draw(floats(0.0, 2000.0)))
    req.categories.extend(draw(batches(texts(w.categories), w.limits["max_categories"], empty=True)))
    req.exclude_item_ids.extend(draw(batches(texts(w.items), w.limits["max_exclude_items"], empty=True)))
    if draw(st.booleans()):
        req.history.extend(draw(_history(w)))
    return _case("Recommend", req)


@st.composite
def score(draw, w: World) -> Case:
    @st.composite
    def pair(draw2):
        p = pb.ScorePair(item_id=draw2(texts(w.items)))
        _who(draw2, w, p)
        if draw2(st.booleans()):
            p.history.extend(draw2(_history(w)))
        return p

    return _case("Score", pb.ScoreRequest(pairs=draw(batches(pair(), w.limits["max_score_pairs"]))))


@st.composite
def evaluate(draw, w: World) -> Case:
    enum = mostly(st.sampled_from((0, 1, 2)), st.integers(*INT32))  # proto3 enums are open
    req = pb.EvaluateRequest(split=draw(enum), protocol=draw(enum))
    req.ks.extend(draw(batches(int32s(1000), 100)))
    if draw(st.booleans()):
        inter = st.builds(pb.Interaction, user_id=texts(w.users), item_id=texts(w.items))
        req.interactions.extend(draw(batches(inter, w.limits["max_inline_interactions"])))
    return _case("Evaluate", req)


def model_info() -> st.SearchStrategy[Case]:
    # Unknown fields (a newer client's) must be ignored, not refused.
    unknown = st.sampled_from((b"", b"\x08\x01", b"\xf8\x06\x01", b"\x92\x07\x03abc"))
    return st.builds(lambda extra: _case("GetModelInfo", extra), unknown)


@st.composite
def upsert(draw, w: World) -> Case:
    ids = texts(w.items + tuple(f"fz_{j}" for j in range(20)))
    item = st.builds(
        pb.NewItem,
        item_id=ids,
        description=texts(w.descriptions, LONG),
        features=texts(w.descriptions, LONG),
        price=floats(0.0, 2000.0),
        category=texts(w.categories),
    )
    items = draw(batches(item, w.limits["max_upsert_items"]))
    if len(items) > 4:  # a repeated batch: ids made unique beyond the drawn few (dupes stay possible)
        items = [x if j < 4 else _renamed(x, j) for j, x in enumerate(items)]
    return _case("UpsertItems", pb.UpsertItemsRequest(items=items))


def _renamed(item: pb.NewItem, j: int) -> pb.NewItem:
    copy = pb.NewItem()
    copy.CopyFrom(item)
    copy.item_id = f"{item.item_id[:150]}~{j}"
    return copy


@st.composite
def delete(draw, w: World) -> Case:
    ids = texts(w.items + tuple(f"fz_{j}" for j in range(20)))
    return _case(
        "DeleteItems", pb.DeleteItemsRequest(item_ids=draw(batches(ids, w.limits["max_delete_items"])))
    )


@st.composite
def record(draw, w: World) -> Case:
    """Events of known and unknown users and items, odd timestamps, kinds, weights and event ids."""
    event = st.builds(
        pb.InteractionEvent,
        user_id=mostly(st.sampled_from(w.users), texts(w.users + ("fz_user",))),
        item_id=mostly(st.sampled_from(w.items), texts(w.items + tuple(f"fz_{j}" for j in range(20)))),
        timestamp=mostly(st.one_of(st.just(0.0), floats(0.0, 1.7e9)), floats(-1e10, 1e12)),
        kind=mostly(st.sampled_from(("", "click", "purchase")), texts()),
        weight=mostly(st.one_of(st.just(0.0), floats(0.001, 1000.0)), floats(-10.0, 2000.0)),
        event_id=mostly(st.sampled_from(("", "", "e1", "e2")), texts()),
    )
    events = draw(batches(event, w.limits["max_record_events"]))
    return _case(
        "RecordInteractions", pb.RecordInteractionsRequest(events=events, create_users=draw(st.booleans()))
    )


def reload(w: World) -> st.SearchStrategy[Case]:
    """Only the served folder (by "" or its path) or paths that cannot exist: a fuzzer must never make
    the server load something else."""
    missing = str(w.missing)
    targets = st.one_of(
        st.sampled_from(("", str(w.serving), missing, missing + "\x00x", missing + "/" + "a" * 300)),
        st.builds(lambda t: f"{missing}/{t}", texts()),
        st.builds(lambda n: stretch(missing + "/", n), st.sampled_from((4096, 70_000))),
    )
    return st.builds(lambda a: Case("Reload", RPCS["Reload"].path, pb.ReloadRequest(artifacts=a)), targets)


def health() -> st.SearchStrategy[Case]:
    service = st.one_of(st.sampled_from(SERVICES), texts())
    return st.builds(lambda s: Case(HEALTH, HEALTH_CHECK, health_pb2.HealthCheckRequest(service=s)), service)


def _bad_utf8(field_number: int) -> bytes:
    """A length-delimited field holding bytes that are not UTF-8 (a string field must refuse them)."""
    return bytes([(field_number << 3) | 2, 3, 0xC3, 0x28, 0xFF])


def garbage(w: World, paths: tuple[str, ...] = PATHS) -> st.SearchStrategy[Case]:
    """Raw bytes to every method path: random, truncated or bit-flipped valid requests, bad UTF-8."""

    def mangled(case: Case, cut: int, flips: list[int]) -> bytes:
        data = bytearray(case.payload[: max(0, len(case.payload) - cut)])
        for f in flips:
            if data:
                data[f % len(data)] ^= 1 << (f % 8)
        return bytes(data)

    valid = st.one_of(recommend(w), score(w), evaluate(w), upsert(w), delete(w), record(w))
    payloads = st.one_of(
        st.binary(max_size=64),
        st.builds(_bad_utf8, st.integers(1, 8)),
        st.builds(mangled, valid, st.integers(0, 8), st.lists(st.integers(0, 2**20), max_size=4)),
    )

    @st.composite
    def build(draw):
        path, data = draw(st.sampled_from(paths)), draw(payloads)
        if path == RPCS["Reload"].path:  # whatever parses must name the served folder or none
            try:
                target = pb.ReloadRequest.FromString(data).artifacts
            except Exception:
                target = None
            assume(target is None or target in ("", str(w.serving)) or not os.path.lexists(target))
        return Case(f"garbage:{path.rsplit('/', 1)[-1]}", path, data)

    return build()


def cases(w: World, garbage_paths: tuple[str, ...] = PATHS) -> st.SearchStrategy[Case]:
    """Every RPC, health, and garbage to every path."""
    return st.one_of(
        recommend(w),
        score(w),
        evaluate(w),
        model_info(),
        upsert(w),
        delete(w),
        record(w),
        reload(w),
        health(),
        garbage(w, garbage_paths),
    )


# ------------------------------------------------------------------------------------------ calling


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
    """Counts by RPC and status code, and every case that broke the contract."""

    codes: Counter = field(default_factory=Counter)  # (rpc, code) -> calls
    failures: list[str] = field(default_factory=list)

    def record(self, case: Case, code: str, details: str, response: bytes | None) -> str | None:
        self.codes[case.rpc, code] += 1
        why = problem(case, code, details, response)
        if why is not None:
            self.failures.append(f"{why}\n    request: {case.describe()}")
        return why

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def lines(self) -> list[str]:
        """One line per RPC: its calls and their codes, most frequent first."""
        per: dict[str, Counter] = {}
        for (rpc, code), n in self.codes.items():
            per.setdefault(rpc, Counter())[code] += n
        return [
            f"{rpc:<13} {sum(c.values()):>6}  " + ", ".join(f"{k} {v}" for k, v in c.most_common())
            for rpc, c in sorted(per.items())
        ]


def health_status(channel: grpc.Channel, timeout: float = 10.0) -> str:
    reply = channel.unary_unary(
        HEALTH_CHECK,
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )(health_pb2.HealthCheckRequest(), timeout=timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
