"""What the batch jobs compute, batch by batch: item vectors and every known user's top-N, on the serving code.

Each job is a callable class: its constructor loads the serving bundle once (an :class:`Engine`, ORT
threads 1), its ``__call__`` maps one pyarrow batch to one pyarrow batch. Ray Data runs them over
an actor pool (batch.py); a plain loop over the same classes is the no-Ray baseline
(:func:`apply_local`, benchmarks/bench_batch.py). Nothing here imports Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..catalog.snapshot import ITEM_COLUMNS, read_csv
from ..core.config import EngineConfig
from ..core.limits import Limits
from ..core.types import NewItemData
from ..engine.engine import Engine
from ..engine.errors import InvalidArgument
from ..engine.validation import validate_items

_LOGGER = logging.getLogger(__name__)

ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("description", pa.string()),
        ("features", pa.string()),
        ("price", pa.float64()),
        ("category", pa.string()),
    ]
)
VECTORS_SCHEMA = pa.schema(
    [("item_id", pa.string()), ("vector", pa.list_(pa.float32())), ("model_version", pa.string())]
)
RECS_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_ids", pa.list_(pa.string())),
        ("scores", pa.list_(pa.float32())),
        ("model_version", pa.string()),
    ]
)
USERS_COLUMN = "row"  # the recommendation job's input: a known user's row in users.csv


@dataclass(frozen=True)
class Bundle:
    """Which serving bundle each actor loads, and how (the `serve` options that change answers).

    Attributes:
        root: the serving folder as an absolute path every node reads (shared storage on a cluster).
        model: model kind (None: the manifest's default, as `serve`).
        encoder_variant: encoder graph for new texts (None: the server's default for the device).
        exact: score every item, ignoring the bundle's approximate index (`serve --exact`).
    """

    root: str
    model: str | None = None
    encoder_variant: str | None = None
    exact: bool = False

    def engine(self, candidates: bool = True) -> Engine:
        # One ORT thread per session: the parallelism is the actors, one per CPU. Candidate lists
        # only speed up Recommend; the embedding job skips building them.
        cfg = EngineConfig(
            model=self.model,
            encoder_variant=self.encoder_variant,
            exact=self.exact,
            tower_threads=1,
            encoder_threads=1,
            candidates=128 if candidates else 0,
        )
        return Engine(self.root, cfg)


def read_items(path: Path | str) -> pa.Table:
    """An items CSV (the columns of items.csv; others ignored) as a table, every row checked as
    UpsertItems checks an item, duplicates included.

    Raises:
        ValueError: naming the file, the line and the problem.
    """
    rows = read_csv(Path(path), ITEM_COLUMNS, numeric=("price",))
    if not rows:
        raise ValueError(f"{path}: no items")
    limits, first = Limits(), {}
    for j, r in enumerate(rows):
        item = NewItemData(r["item_id"], r["description"], r["features"], float(r["price"]), r["category"])
        line = j + 2  # the header is line 1
        try:
            validate_items([item], limits)
        except InvalidArgument as err:
            raise ValueError(f"{path}: line {line}: {str(err).replace('items[0]', 'item')}") from None
        if item.item_id in first:
            raise ValueError(
                f"{path}: line {line}: item_id {item.item_id!r} repeats line {first[item.item_id]}"
            )
        first[item.item_id] = line
    columns = {c: [r[c] for r in rows] for c in ITEMS_SCHEMA.names}
    columns["price"] = [float(p) for p in columns["price"]]
    return pa.table(columns, schema=ITEMS_SCHEMA)


def _lists(values: np.ndarray | list, lengths: list[int], kind: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=kind))


class ItemEmbedder:
    """Item rows -> (item_id, vector, model_version): the vector the server ranks the item with.

    An item whose id and attributes are those of an exported item gets the bundle's vector (a hybrid's
    includes a learned item-ID part no graph holds); any other item goes through the text encoder
    (texts the exported tables lack) and the item tower, as UpsertItems does (Engine.item_vectors).
    ``recompute`` sends every item through the tower.
    """

    def __init__(self, bundle: Bundle, recompute: bool = False):
        self.engine = bundle.engine(candidates=False)
        self.version = self.engine.model_version
        self.recompute = recompute

    def _exported_row(self, item: NewItemData) -> int | None:
        cat = self.engine.catalog  # the exported catalogue: this engine never takes an upsert
        j = cat.row(item.item_id)
        same = j is not None and (
            cat.description[j] == item.description
            and cat.features[j] == item.features
            and cat.category[j] == item.category
            and cat.price_list[j] == item.price
        )
        return j if same else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        cols = {c: batch.column(c).to_pylist() for c in ITEMS_SCHEMA.names}
        items = [NewItemData(*v) for v in zip(*(cols[c] for c in ITEMS_SCHEMA.names))]
        vectors = np.empty((len(items), self.engine.serving.dim), dtype=np.float32)
        rows = [None if self.recompute else self._exported_row(it) for it in items]
        known = [k for k, j in enumerate(rows) if j is not None]
        if known:
            vectors[known] = self.engine.catalog.vectors[[rows[k] for k in known]]
        fresh = [k for k, j in enumerate(rows) if j is None]
        if fresh:  # already checked by read_items, on the driver, with line numbers
            vectors[fresh] = self.engine.item_vectors([items[k] for k in fresh], validate=False)
        dim = vectors.shape[1]
        return pa.table(
            [
                pa.array(cols["item_id"], pa.string()),
                _lists(vectors.reshape(-1), [dim] * len(items), pa.float32()),
                pa.array([self.version] * len(items), pa.string()),
            ],
            schema=VECTORS_SCHEMA,
        )


class UserRecommender:
    """Known users' rows -> (user_id, item_ids, scores, model_version): Engine.recommend, the server's
    Recommend (exclude_seen true, no filters), so answers are the RPC's by construction."""

    def __init__(self, bundle: Bundle, top_n: int = 100):
        self.engine = bundle.engine(candidates=True)
        self.version = self.engine.model_version
        self.top_n = top_n

    def __call__(self, batch: pa.Table) -> pa.Table:
        users = [self.engine.user_ids[j] for j in batch.column(USERS_COLUMN).to_numpy()]
        ids: list[str] = []
        scores: list[float] = []
        lengths: list[int] = []
        for user_id in users:
            cat, rows, probs = self.engine.recommend(user_id, self.top_n)
            ids.extend(cat.ids[r] for r in rows)
            scores.extend(probs)
            lengths.append(len(rows))
        return pa.table(
            [
                pa.array(users, pa.string()),
                _lists(ids, lengths, pa.string()),
                _lists(np.asarray(scores, dtype=np.float32), lengths, pa.float32()),
                pa.array([self.version] * len(users), pa.string()),
            ],
            schema=RECS_SCHEMA,
        )


def users_table(n_users: int) -> pa.Table:
    """The recommendation job's input: every known user's row."""
    return pa.table({USERS_COLUMN: np.arange(n_users, dtype=np.int64)})


def apply_local(job: Callable[[pa.Table], pa.Table], table: pa.Table, batch_size: int) -> pa.Table:
    """``job`` over ``table`` in batches, in this process: the same work as the Ray job, without Ray."""
    parts = [job(table.slice(a, batch_size)) for a in range(0, table.num_rows, batch_size)]
    return pa.concat_tables(parts)
