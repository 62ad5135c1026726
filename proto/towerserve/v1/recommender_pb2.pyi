from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Split(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_UNSPECIFIED: _ClassVar[Split]
    SPLIT_HOLDOUT: _ClassVar[Split]
    SPLIT_COLD: _ClassVar[Split]

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_NOTEBOOK: _ClassVar[Protocol]
    PROTOCOL_FULL: _ClassVar[Protocol]
SPLIT_UNSPECIFIED: Split
SPLIT_HOLDOUT: Split
SPLIT_COLD: Split
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_NOTEBOOK: Protocol
PROTOCOL_FULL: Protocol

class UserAttributes(_message.Message):
    __slots__ = ("age", "profession", "personality")
    AGE_FIELD_NUMBER: _ClassVar[int]
    PROFESSION_FIELD_NUMBER: _ClassVar[int]
    PERSONALITY_FIELD_NUMBER: _ClassVar[int]
    age: float
    profession: str
    personality: str
    def __init__(self, age: _Optional[float] = ..., profession: _Optional[str] = ..., personality: _Optional[str] = ...) -> None: ...

class PriceRange(_message.Message):
    __slots__ = ("min", "max")
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    min: float
    max: float
    def __init__(self, min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("item_id", "score", "price", "description", "features", "category")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    price: float
    description: str
    features: str
    category: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., price: _Optional[float] = ..., description: _Optional[str] = ..., features: _Optional[str] = ..., category: _Optional[str] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "user", "top_n", "exclude_seen", "price_range", "categories", "exclude_item_ids", "history")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    PRICE_RANGE_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    user: UserAttributes
    top_n: int
    exclude_seen: bool
    price_range: PriceRange
    categories: _containers.RepeatedScalarFieldContainer[str]
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    history: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., user: _Optional[_Union[UserAttributes, _Mapping]] = ..., top_n: _Optional[int] = ..., exclude_seen: _Optional[bool] = ..., price_range: _Optional[_Union[PriceRange, _Mapping]] = ..., categories: _Optional[_Iterable[str]] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., history: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model_version", "history_used")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_USED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    model_version: str
    history_used: int
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., model_version: _Optional[str] = ..., history_used: _Optional[int] = ...) -> None: ...

class ScorePair(_message.Message):
    __slots__ = ("user_id", "user", "item_id", "history")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    user: UserAttributes
    item_id: str
    history: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., user: _Optional[_Union[UserAttributes, _Mapping]] = ..., item_id: _Optional[str] = ..., history: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("pairs",)
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[ScorePair]
    def __init__(self, pairs: _Optional[_Iterable[_Union[ScorePair, _Mapping]]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "model_version", "history_used")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_USED_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    model_version: str
    history_used: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., model_version: _Optional[str] = ..., history_used: _Optional[_Iterable[int]] = ...) -> None: ...

class Interaction(_message.Message):
    __slots__ = ("user_id", "item_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("split", "ks", "protocol", "interactions")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    KS_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    split: Split
    ks: _containers.RepeatedScalarFieldContainer[int]
    protocol: Protocol
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    def __init__(self, split: _Optional[_Union[Split, str]] = ..., ks: _Optional[_Iterable[int]] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("metrics", "users", "seconds", "model_version", "split", "protocol")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    USERS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.ScalarMap[str, float]
    users: int
    seconds: float
    model_version: str
    split: str
    protocol: str
    def __init__(self, metrics: _Optional[_Mapping[str, float]] = ..., users: _Optional[int] = ..., seconds: _Optional[float] = ..., model_version: _Optional[str] = ..., split: _Optional[str] = ..., protocol: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model_version", "model_kind", "user_independent_ranking", "item_count", "user_count", "providers", "encoder", "encoder_variant", "vector_dim", "user_fields", "item_fields", "training_metrics", "versions", "artifacts", "loaded_at", "max_top_n", "max_score_pairs", "max_upsert_items", "max_inline_interactions", "categories", "max_history", "max_categories", "max_exclude_items", "index_kind", "index_recall_at_10", "max_new_texts", "max_delete_items", "durable_catalog", "journal_entries", "max_ks", "max_item_bytes", "max_response_bytes", "journal_reachable", "journal_behind", "write_id_retention_s", "max_record_events", "recorded_interactions")
    class TrainingMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class VersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    USER_INDEPENDENT_RANKING_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    USER_COUNT_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    ENCODER_VARIANT_FIELD_NUMBER: _ClassVar[int]
    VECTOR_DIM_FIELD_NUMBER: _ClassVar[int]
    USER_FIELDS_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELDS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_METRICS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOP_N_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORE_PAIRS_FIELD_NUMBER: _ClassVar[int]
    MAX_UPSERT_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MAX_INLINE_INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MAX_HISTORY_FIELD_NUMBER: _ClassVar[int]
    MAX_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    MAX_EXCLUDE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    INDEX_KIND_FIELD_NUMBER: _ClassVar[int]
    INDEX_RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TEXTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DELETE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    DURABLE_CATALOG_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    MAX_KS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEM_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_REACHABLE_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_BEHIND_FIELD_NUMBER: _ClassVar[int]
    WRITE_ID_RETENTION_S_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORD_EVENTS_FIELD_NUMBER: _ClassVar[int]
    RECORDED_INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    model_kind: str
    user_independent_ranking: bool
    item_count: int
    user_count: int
    providers: _containers.RepeatedScalarFieldContainer[str]
    encoder: str
    encoder_variant: str
    vector_dim: int
    user_fields: _containers.RepeatedScalarFieldContainer[str]
    item_fields: _containers.RepeatedScalarFieldContainer[str]
    training_metrics: _containers.ScalarMap[str, float]
    versions: _containers.ScalarMap[str, str]
    artifacts: str
    loaded_at: str
    max_top_n: int
    max_score_pairs: int
    max_upsert_items: int
    max_inline_interactions: int
    categories: _containers.RepeatedScalarFieldContainer[str]
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
    journal_reachable: bool
    journal_behind: int
    write_id_retention_s: int
    max_record_events: int
    recorded_interactions: int
    def __init__(self, model_version: _Optional[str] = ..., model_kind: _Optional[str] = ..., user_independent_ranking: _Optional[bool] = ..., item_count: _Optional[int] = ..., user_count: _Optional[int] = ..., providers: _Optional[_Iterable[str]] = ..., encoder: _Optional[str] = ..., encoder_variant: _Optional[str] = ..., vector_dim: _Optional[int] = ..., user_fields: _Optional[_Iterable[str]] = ..., item_fields: _Optional[_Iterable[str]] = ..., training_metrics: _Optional[_Mapping[str, float]] = ..., versions: _Optional[_Mapping[str, str]] = ..., artifacts: _Optional[str] = ..., loaded_at: _Optional[str] = ..., max_top_n: _Optional[int] = ..., max_score_pairs: _Optional[int] = ..., max_upsert_items: _Optional[int] = ..., max_inline_interactions: _Optional[int] = ..., categories: _Optional[_Iterable[str]] = ..., max_history: _Optional[int] = ..., max_categories: _Optional[int] = ..., max_exclude_items: _Optional[int] = ..., index_kind: _Optional[str] = ..., index_recall_at_10: _Optional[float] = ..., max_new_texts: _Optional[int] = ..., max_delete_items: _Optional[int] = ..., durable_catalog: _Optional[bool] = ..., journal_entries: _Optional[int] = ..., max_ks: _Optional[int] = ..., max_item_bytes: _Optional[int] = ..., max_response_bytes: _Optional[int] = ..., journal_reachable: _Optional[bool] = ..., journal_behind: _Optional[int] = ..., write_id_retention_s: _Optional[int] = ..., max_record_events: _Optional[int] = ..., recorded_interactions: _Optional[int] = ...) -> None: ...

class NewItem(_message.Message):
    __slots__ = ("item_id", "description", "features", "price", "category")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    description: str
    features: str
    price: float
    category: str
    def __init__(self, item_id: _Optional[str] = ..., description: _Optional[str] = ..., features: _Optional[str] = ..., price: _Optional[float] = ..., category: _Optional[str] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items", "write_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[NewItem]
    write_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[NewItem, _Mapping]]] = ..., write_id: _Optional[str] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("inserted", "updated", "item_count", "model_version", "sequence", "repeated")
    INSERTED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REPEATED_FIELD_NUMBER: _ClassVar[int]
    inserted: int
    updated: int
    item_count: int
    model_version: str
    sequence: int
    repeated: bool
    def __init__(self, inserted: _Optional[int] = ..., updated: _Optional[int] = ..., item_count: _Optional[int] = ..., model_version: _Optional[str] = ..., sequence: _Optional[int] = ..., repeated: _Optional[bool] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("item_ids", "write_id")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    write_id: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., write_id: _Optional[str] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted", "item_count", "model_version", "sequence", "repeated")
    DELETED_FIELD_NUMBER: _ClassVar[int]
    ITEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REPEATED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    item_count: int
    model_version: str
    sequence: int
    repeated: bool
    def __init__(self, deleted: _Optional[int] = ..., item_count: _Optional[int] = ..., model_version: _Optional[str] = ..., sequence: _Optional[int] = ..., repeated: _Optional[bool] = ...) -> None: ...

class InteractionEvent(_message.Message):
    __slots__ = ("user_id", "item_id", "timestamp", "kind", "weight", "event_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    timestamp: float
    kind: str
    weight: float
    event_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., timestamp: _Optional[float] = ..., kind: _Optional[str] = ..., weight: _Optional[float] = ..., event_id: _Optional[str] = ...) -> None: ...

class RecordInteractionsRequest(_message.Message):
    __slots__ = ("events", "create_users", "write_id")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CREATE_USERS_FIELD_NUMBER: _ClassVar[int]
    WRITE_ID_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[InteractionEvent]
    create_users: bool
    write_id: str
    def __init__(self, events: _Optional[_Iterable[_Union[InteractionEvent, _Mapping]]] = ..., create_users: _Optional[bool] = ..., write_id: _Optional[str] = ...) -> None: ...

class RecordInteractionsResponse(_message.Message):
    __slots__ = ("recorded", "duplicates", "created_users", "sequence", "repeated", "model_version")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    CREATED_USERS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REPEATED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    duplicates: int
    created_users: int
    sequence: int
    repeated: bool
    model_version: str
    def __init__(self, recorded: _Optional[int] = ..., duplicates: _Optional[int] = ..., created_users: _Optional[int] = ..., sequence: _Optional[int] = ..., repeated: _Optional[bool] = ..., model_version: _Optional[str] = ...) -> None: ...

class ReloadRequest(_message.Message):
    __slots__ = ("artifacts",)
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    artifacts: str
    def __init__(self, artifacts: _Optional[str] = ...) -> None: ...

class ReloadResponse(_message.Message):
    __slots__ = ("model_version", "previous_model_version", "seconds")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    previous_model_version: str
    seconds: float
    def __init__(self, model_version: _Optional[str] = ..., previous_model_version: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...
