"""`towerserve promote`: a candidate model replaces the serving one only when it is not worse on what users
did since it was trained (champion/challenger).

The judge is the recorded interactions (RecordInteractions) the candidate never trained on: those
past the journal sequence number its training manifest records (`train --events`: ``data.events.upto``;
a candidate trained without events saw none). Both models rank the full catalogue for those users
with their own training positives left out, by the same code: the serving model through its
Evaluate RPC (inline interactions), the candidate loaded here with the same engine. The candidate is
promoted (Admin.Reload on the target) when its NDCG@10 is at least ``(1 - margin)`` times the serving
model's; ``force`` promotes it whatever the scores, ``dry_run`` only reports. The decision, both
scores and the reason are returned, printed by the command and logged.

Pairs of users or items the candidate does not know are left out and counted (a model cannot be
judged on ids it has never seen).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

MARGIN = 0.01  # relative NDCG@10 a candidate may lose and still be promoted: evaluation noise
MIN_PAIRS = 20  # fewer held-out interactions than this judge nothing: refused unless forced
KS = (10,)


@dataclass(frozen=True)
class Decision:
    """What `promote` decided and why.

    Attributes:
        promoted: whether the candidate was loaded (Admin.Reload) on the target.
        reason: one sentence.
        candidate, serving: their metrics on the held-out interactions (ndcg@10, recall@10, ...).
        pairs: held-out interactions judged; skipped: those of users or items the candidate lacks.
        after: the journal sequence number the candidate trained up to (its held-out events follow).
        serving_version, candidate_version: the two model versions.
    """

    promoted: bool
    reason: str
    candidate: dict[str, float]
    serving: dict[str, float]
    pairs: int
    skipped: int
    after: int
    serving_version: str
    candidate_version: str

    def to_json(self) -> dict:
        return asdict(self)


def held_out(candidate: Path, events: str) -> tuple[list[tuple[str, str]], int]:
    """The (user, item) pairs recorded after the candidate's training; and the sequence they follow."""
    from towerserve.server.catalog.journal import open_journal
    from towerserve.server.core.manifest import ServingManifest

    manifest = ServingManifest.load(candidate, verify_hashes=False)
    data = manifest.training.data if manifest.training is not None else {}
    after = int((data.get("events") or {}).get("upto", 0))
    store = open_journal(events)
    try:
        pairs = [(e.user_id, e.item_id) for _, e in store.events(after)]
    finally:
        store.close()
    return list(dict.fromkeys(pairs)), after


def decide(candidate: dict, serving: dict, margin: float, pairs: int, force: bool) -> tuple[bool, str]:
    """Whether to promote, and why (NDCG@10 against the serving model's, less ``margin``)."""
    c, s = candidate.get("ndcg@10", 0.0), serving.get("ndcg@10", 0.0)
    if force:
        return True, f"forced (candidate ndcg@10 {c:.4f}, serving {s:.4f})"
    if pairs < MIN_PAIRS:
        return False, f"only {pairs} held-out interactions since the candidate's training (need {MIN_PAIRS})"
    if c >= s * (1.0 - margin):
        return True, f"candidate ndcg@10 {c:.4f} >= serving {s:.4f} x (1 - {margin:g})"
    return False, f"candidate ndcg@10 {c:.4f} < serving {s:.4f} x (1 - {margin:g})"


def promote(
    candidate: Path | str,
    client,
    events: str,
    margin: float = MARGIN,
    force: bool = False,
    dry_run: bool = False,
    reload_path: str | None = None,
) -> Decision:
    """Judges ``candidate`` (a serving folder) against the model ``client`` reaches, on the interactions
    recorded in ``events`` (a --state-dir or postgresql:// URL) since the candidate's training, and
    reloads the target with it when it is not worse (``reload_path``: the path the server should load,
    if it differs from this machine's ``candidate``)."""
    from towerserve.server.engine.engine import Engine
    from towerserve.server.engine.evaluation import evaluate

    candidate = Path(candidate)
    pairs, after = held_out(candidate, events)
    engine = Engine(candidate)
    n_items = engine.splits["holdout"].train.n_cols
    known = [
        (u, i)
        for u, i in pairs
        if u in engine.user_index and (r := engine.catalog.row(i)) is not None and r < n_items
    ]
    cand: dict[str, float] = {}
    serv: dict[str, float] = {}
    serving_version = client.model_info().model_version
    if known:
        cand, _ = evaluate(engine, ks=KS, inline=known)
        serv = dict(client.evaluate(ks=KS, interactions=known).metrics)
    promoted, reason = decide(cand, serv, margin, len(known), force)
    if promoted and not dry_run:
        client.reload(reload_path or str(candidate))
    elif promoted:
        reason += " (dry run: not reloaded)"
        promoted = False
    decision = Decision(
        promoted,
        reason,
        {k: float(v) for k, v in cand.items()},
        {k: float(v) for k, v in serv.items()},
        len(known),
        len(pairs) - len(known),
        after,
        serving_version,
        engine.model_version,
    )
    _LOGGER.info("promote %s: %s", "accepted" if promoted else "refused", reason)
    return decision
