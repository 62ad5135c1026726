"""GetModelInfo's record: what an engine serves, its limits and its catalogue journal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.manifest import SERVED_SPLIT
from ..core.types import ModelInfo
from ..core.versions import SERVING_VERSIONS

if TYPE_CHECKING:
    from .engine import Engine

# Keys of the training metrics that are bookkeeping, not metrics (left out of GetModelInfo).
_NOT_METRICS = ("epochs", "train_seconds", "users")


def model_info(engine: Engine, durable: bool = False, journal_entries: int = 0) -> ModelInfo:
    """``engine``'s ModelInfo; ``durable``: catalogue changes are journaled, ``journal_entries`` of them."""
    training = engine.manifest.training
    train = training.metrics.get(SERVED_SPLIT, {}).get(engine.kind, {}) if training else {}
    cat = engine.catalog
    return ModelInfo(
        model_version=engine.model_version,
        model_kind=engine.kind,
        user_independent_ranking=engine.user_independent,
        item_count=cat.item_count,
        user_count=len(engine.user_ids),
        providers=list(engine.providers),
        encoder=engine.encoder_name,
        encoder_variant=engine.encoder_variant,
        vector_dim=engine.serving.dim,
        user_fields=list(engine.user_fields),
        item_fields=list(engine.item_fields),
        training_metrics={
            k: float(v) for k, v in train.items() if isinstance(v, (int, float)) and k not in _NOT_METRICS
        },
        versions={
            **{f"export.{k}": str(v) for k, v in engine.manifest.versions.items()},
            **{f"serve.{k}": v for k, v in SERVING_VERSIONS.items()},
        },
        artifacts=str(engine.root),
        loaded_at=engine.loaded_at,
        max_top_n=engine.limits.max_top_n,
        max_score_pairs=engine.limits.max_score_pairs,
        max_upsert_items=engine.limits.max_upsert_items,
        max_inline_interactions=engine.limits.max_inline_interactions,
        categories=sorted(cat.categories),
        max_history=engine.serving.max_history,
        max_categories=engine.limits.max_categories,
        max_exclude_items=engine.limits.max_exclude_items,
        index_kind=cat.index_kind,
        index_recall_at_10=cat.index_recall,
        max_new_texts=engine.limits.max_new_texts,
        max_delete_items=engine.limits.max_delete_items,
        max_record_events=engine.limits.max_record_events,
        durable_catalog=durable,
        journal_entries=journal_entries,
        max_ks=engine.limits.max_ks,
        max_item_bytes=engine.limits.max_item_bytes,
        max_response_bytes=engine.limits.max_response_bytes,
    )
