"""Request size limits: what the server accepts, reported by GetModelInfo so clients can plan batches."""

from __future__ import annotations

from dataclasses import dataclass

# Bytes of a RecommendResponse besides its items (model_version, history_used), with room to spare.
RESPONSE_RESERVE = 4096


@dataclass(frozen=True)
class Limits:
    """Request size limits (reported by GetModelInfo so clients can plan batches)."""

    max_top_n: int = 1000
    max_score_pairs: int = 10_000
    max_upsert_items: int = 1000
    max_inline_interactions: int = 200_000
    # Filters are sets the server looks up per request; bounded so one request cannot carry megabytes.
    max_categories: int = 1000
    max_exclude_items: int = 1000
    # Distinct texts the exported tables lack, per request: each is one encoder pass (~1 ms).
    max_new_texts: int = 1000
    max_delete_items: int = 1000
    # Events per RecordInteractions: each is a journal row and an O(d) update of a user's vector.
    max_record_events: int = 1000
    # Evaluate's cut-offs: each costs a pass over every evaluated user's top k.
    max_ks: int = 100
    # The largest response the server may send (gRPC's send limit: 16 MB, `serve --max-message-mb`).
    max_response_bytes: int = 16 * 1024 * 1024

    @property
    def max_item_bytes(self) -> int:
        """The largest serialized item UpsertItems accepts: max_top_n of them, and the rest of a
        RecommendResponse, fit max_response_bytes, so a valid Recommend never fails for size."""
        return (self.max_response_bytes - RESPONSE_RESERVE) // self.max_top_n
