"""What the engine takes and gives, in plain Python: an unseen user, a new item, the model's description."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UserAttrs:
    """An unseen user's attributes (None: not given)."""

    age: float
    profession: str
    personality: str | None = None


@dataclass(frozen=True)
class NewItemData:
    """A catalogue item to add or replace (UpsertItems)."""

    item_id: str
    description: str
    features: str
    price: float
    category: str


@dataclass(frozen=True)
class Interaction:
    """One thing a user did (RecordInteractions): ``at`` in seconds since the epoch; ``event_id`` is the
    client's id of the event ("" for none), under which it is recorded at most once."""

    user_id: str
    item_id: str
    at: float
    kind: str = ""
    weight: float = 1.0
    event_id: str = ""


@dataclass(frozen=True)
class ModelInfo:
    """What is being served; the fields of GetModelInfoResponse (documented in the proto)."""

    model_version: str
    model_kind: str
    user_independent_ranking: bool
    item_count: int
    user_count: int
    providers: list[str]
    encoder: str
    encoder_variant: str
    vector_dim: int
    user_fields: list[str]
    item_fields: list[str]
    training_metrics: dict[str, float]
    versions: dict[str, str]
    artifacts: str
    loaded_at: str
    max_top_n: int
    max_score_pairs: int
    max_upsert_items: int
    max_inline_interactions: int
    categories: list[str]
    max_history: int
    max_categories: int
    max_exclude_items: int
    index_kind: str
    index_recall_at_10: float
    max_new_texts: int
    max_delete_items: int
    durable_catalog: bool
    journal_entries: int
    max_ks: int
    max_item_bytes: int
    max_response_bytes: int
    journal_reachable: bool = True
    journal_behind: int = 0
    write_id_retention_s: int = 0
    max_record_events: int = 0
    recorded_interactions: int = 0
