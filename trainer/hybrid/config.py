"""The hybrid two-tower's recipe: a frozen dataclass with no TensorFlow behind it (cheap to import)."""

from __future__ import annotations

from dataclasses import dataclass

POOLINGS = ("mean", "attention")
LOSSES = ("softmax", "bce")
# Which items a softmax row is normalised over: "full" = the whole catalogue (exact, no sampling bias,
# popularity learnt as it is), "in_batch" = the batch's positives with logQ correction (scales to any
# catalogue), "auto" = full up to FULL_SOFTMAX_MAX_ITEMS. A full step scores rows x items: at 20,000
# items and 256 rows that is 5·10⁶ logits, about the work of the user tower itself.
NEGATIVES = ("auto", "full", "in_batch")
FULL_SOFTMAX_MAX_ITEMS = 20_000
# The most history items one request may carry to the served user tower (the manifest records it).
MAX_HISTORY = 100


@dataclass(frozen=True)
class HybridConfig:
    """One hybrid recipe (the values training chooses among are in hybrid_search.SEARCH).

    Attributes:
        dim: embedding width d (served vectors are d + 2 wide: the bias and popularity columns).
        hidden: hidden widths of both content MLPs.
        loss: "softmax" (over the catalogue or in-batch, see ``negatives``) or "bce" (sampled negatives).
        negatives: what the softmax normalises over: "full" (every item), "in_batch" (the batch's
            positives, logQ-corrected) or "auto" (full up to FULL_SOFTMAX_MAX_ITEMS items).
        temperature: softmax logits are divided by it (ignored by bce).
        id_dropout: probability that a training row's user (id and history) or item id is unknown.
        pooling: "mean" (masked mean) or "attention" over the history embeddings.
        learning_rate: Adam's.
        batch_size: positives per step (softmax) or rows per step (bce).
        epochs: the most epochs; validation NDCG@10 stops sooner.
        patience: epochs without validation improvement before stopping.
        train_history: history items sampled per user per epoch (serving pools all of them).
        user_chunk: a user's training rows are cut into chunks of this many, each chunk passing the
            user tower once (trainer/hybrid_fit.user_batches).
        user_ids: learn user ID rows (False: the user_index input is there but always 0 in training).
        user_id_learning_rate: Adagrad's learning rate for the user ID rows (0: Adam with the rest).
        l2: squared-norm penalty on the ID rows of each batch row, per row.
        history_dropout: share of each history's items hidden from the user tower for an epoch.
        id_init: standard deviation of the ID and history rows at initialisation.
        content_learning_rate: Adam's for the attribute MLPs (0: learning_rate).
        content_init: standard deviation of the content towers' last kernels (None: Glorot).
        content_epochs: epochs of the content paths alone (every id unknown) before the joint ones.
        ease_rank: rank of EASE's item-item weights folded into the served towers, weighed on
            validation (trainer/hybrid/ease.py); 0: none. Catalogues above collab.EASE_MAX_ITEMS get none.
    """

    dim: int = 32
    hidden: tuple[int, ...] = (128,)
    loss: str = "softmax"
    negatives: str = "auto"
    temperature: float = 2.0
    id_dropout: float = 0.2
    pooling: str = "mean"
    learning_rate: float = 5e-3
    batch_size: int = 4096
    epochs: int = 24
    patience: int = 3
    train_history: int = 256
    user_chunk: int = 16
    user_ids: bool = True
    user_id_learning_rate: float = 0.1
    l2: float = 0.0
    history_dropout: float = 0.0
    id_init: float = 0.05
    content_learning_rate: float = 2e-4
    content_init: float | None = 1e-3
    content_epochs: int = 3
    ease_rank: int = 512

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES} (got {self.loss!r})")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES} (got {self.negatives!r})")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (got {self.pooling!r})")
        for name in ("id_dropout", "history_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1) (got {getattr(self, name)})")
        if self.ease_rank < 0:
            raise ValueError(f"ease_rank must be >= 0 (got {self.ease_rank})")
        if self.temperature <= 0 or self.dim < 1 or self.train_history < 1:
            raise ValueError(
                f"temperature, dim and train_history must be positive "
                f"(got {self.temperature}, {self.dim}, {self.train_history})"
            )

    def full_softmax(self, n_items: int) -> bool:
        """Whether the softmax rows of a catalogue of ``n_items`` are normalised over all of it."""
        return self.negatives == "full" or (self.negatives == "auto" and n_items <= FULL_SOFTMAX_MAX_ITEMS)
