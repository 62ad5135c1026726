"""`towerserve train`'s settings: which attributes each model reads, the fit recipes, TrainConfig."""

from __future__ import annotations

from dataclasses import dataclass, field

from towerserve.server.core.ranking_metrics import DEFAULT_KS

from .hybrid.config import HybridConfig
from .text import EncoderConfig

# Which attributes each model reads. `seed` keeps the notebook's inputs exactly; `two_tower` also
# reads personality and category, which the data set has and the notebook ignored; `hybrid` reads
# two_tower's attributes (plus ids and histories, which are not features).
FEATURE_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "seed": {"user": ("profession", "age"), "item": ("description", "features", "price")},
    "two_tower": {
        "user": ("profession", "personality", "age"),
        "item": ("description", "features", "category", "price"),
    },
}
FEATURE_SETS["hybrid"] = FEATURE_SETS["two_tower"]
# Kinds whose user tower takes ids and histories: the server cannot feed them yet, so they are served
# by default only when nothing else was trained.
ID_KINDS = ("hybrid",)
NUMERIC_FIELDS = ("age", "price")
SPLITS = ("holdout", "cold")


@dataclass(frozen=True)
class FitConfig:
    """One training recipe.

    Attributes:
        epochs: the most epochs; early stopping may end sooner.
        batch_size: rows per step. 4096 keeps a step's fixed cost small next to its work on 2 cores.
        learning_rate: Adam's.
        validation: share of rows held out to watch val_loss.
        random_validation: draw the validation rows at random (default) or take the last ones, as
            Keras' ``validation_split`` did in the notebook.
        patience: epochs without val_loss improvement before stopping (0: no early stopping).
        sample: train on the first ``sample`` rows of the notebook's shuffle (None: all rows).
    """

    epochs: int = 8
    batch_size: int = 4096
    learning_rate: float = 1e-3
    validation: float = 0.05
    random_validation: bool = True
    patience: int = 1
    sample: int | None = None


# The notebook's recipe: 200,000 shuffled rows, 10 epochs, batch 32, last 10 % for validation.
NOTEBOOK_FIT = FitConfig(
    epochs=10, batch_size=32, validation=0.1, random_validation=False, patience=0, sample=200_000
)
PRESETS = {"default": FitConfig(), "notebook": NOTEBOOK_FIT}


@dataclass(frozen=True)
class TrainConfig:
    """Everything `towerserve train` decides.

    Attributes:
        models: kinds to train ("seed", "two_tower", "hybrid").
        preset: "default" or "notebook" (see PRESETS); ``fit`` overrides it when given.
        encoder: text encoder settings.
        seed: seeds splits, sampling, initialisation and shuffling.
        embedding_dim: two_tower embedding width (the served vectors are one wider: the bias column).
        hidden: two_tower hidden layer widths.
        ks: metric cut-offs.
        cold: also train and evaluate on the cold split.
        progress: tqdm bars (for a terminal); False logs one line per epoch and per embedded field.
        hybrid: the hybrid's base recipe; the search overrides some of its fields.
        hybrid_search: candidate overrides chosen among on validation (None: hybrid_search.SEARCH).
        events: a server's journal (--state-dir folder or postgresql:// URL) whose recorded
            interactions join the positives (trainer/events.py; None: none).
        eval_users: judge every model and baseline on this fixed, seeded sample of users per split
            (0: every user; None: evalsample.default_eval_users, every user up to 10⁹ user x item cells).
    """

    models: tuple[str, ...] = ("seed", "two_tower")
    preset: str = "default"
    fit: FitConfig | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    seed: int = 42
    embedding_dim: int = 32
    hidden: tuple[int, ...] = (128,)
    ks: tuple[int, ...] = DEFAULT_KS
    cold: bool = True
    progress: bool = True
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    hybrid_search: tuple[dict, ...] | None = None
    eval_users: int | None = None
    events: str | None = None

    def __post_init__(self):
        bad = [k for k in self.models if k not in FEATURE_SETS] or ([] if self.models else [""])
        if bad:
            raise ValueError(f"model must be one of {sorted(FEATURE_SETS)} (got {bad[0]!r})")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)} (got {self.preset!r})")
        if self.embedding_dim < 1 or any(h < 1 for h in self.hidden):
            raise ValueError(
                f"embedding_dim and hidden widths must be >= 1 (got {self.embedding_dim}, {self.hidden})"
            )

    def recipe(self) -> FitConfig:
        return self.fit or PRESETS[self.preset]
