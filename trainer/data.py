"""Loads and validates a data set in the seed schema (users, items, interactions) into arrays."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from towerserve.server.core.csr import CSR

_LOGGER = logging.getLogger(__name__)

USERS_FILE = "users.csv"
ITEMS_FILE = "items.csv"
MATRIX_FILE = "user_product_rating_matrix.csv"
LONG_FILE = "interactions.csv"
TRUTH_FILE = "true_probabilities.npy"
GENERATOR_FILE = "generator.json"

USER_COLUMNS = ("user_id", "age", "profession", "personality")
ITEM_COLUMNS = ("item_id", "description", "features", "price", "category")
USER_TEXT = ("profession", "personality")
ITEM_TEXT = ("description", "features", "category")


class DataError(ValueError):
    """A data file breaks the schema; the message names the file, the place and the problem."""

    def __init__(self, path: Path | str, problem: str, *, line: int | None = None, column: str | None = None):
        where = str(path)
        if line is not None:
            where += f": line {line}"
        if column is not None:
            where += f"{',' if line is not None else ':'} column '{column}'"
        super().__init__(f"{where}: {problem}")
        self.path, self.problem, self.line, self.column = str(path), problem, line, column


@dataclass(frozen=True)
class Dataset:
    """A validated data set. Row ``i`` of ``users``/``items`` is user/item index ``i`` everywhere.

    Attributes:
        users: columns user_id, age (float), profession, personality.
        items: columns item_id, description, features, price (float), category.
        positives: every positive interaction, users x items.
        root: the folder it was read from.
    """

    users: pd.DataFrame
    items: pd.DataFrame
    positives: CSR
    root: Path

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def density(self) -> float:
        return self.positives.nnz / float(self.n_users * self.n_items)

    def user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.users["user_id"])}

    def item_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.items["item_id"])}


def _line(row: int) -> int:
    """CSV line of a 0-based data row: the header is line 1."""
    return int(row) + 2


def _read_table(path: Path, required: tuple[str, ...], id_column: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        # Read every cell as text first, so a bad cell is reported as written, not as pandas guessed it.
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(path, f"not a readable CSV file ({err})") from err
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            path, f"missing column(s) {missing}; expected {list(required)} (found {list(df.columns)})"
        )
    ids = df[id_column].str.strip()
    empty = np.flatnonzero(ids.eq("").to_numpy())
    if len(empty):
        raise DataError(path, f"empty {id_column}", line=_line(empty[0]), column=id_column)
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(ids.eq(ids.iloc[r]).to_numpy())[0])
        raise DataError(
            path,
            f"duplicate {id_column} '{ids.iloc[r]}' (first on line {_line(first)})",
            line=_line(r),
            column=id_column,
        )
    df[id_column] = ids
    return df


def _numeric(
    path: Path, df: pd.DataFrame, column: str, id_column: str, upper: float | None = None
) -> np.ndarray:
    raw = df[column]
    values = pd.to_numeric(raw.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    for bad, problem in (
        (~np.isfinite(values), "is not a finite number"),
        (values < 0, "is negative"),
        (values > upper if upper is not None else np.zeros(len(values), dtype=bool), f"is above {upper}"),
    ):
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(
                path,
                f"{column} {raw.iloc[r]!r} {problem} ({id_column} '{df[id_column].iloc[r]}')",
                line=_line(r),
                column=column,
            )
    return values


def _text(path: Path, df: pd.DataFrame, column: str, id_column: str) -> None:
    empty = df[column].str.strip().eq("").to_numpy()
    if empty.any():
        r = int(np.flatnonzero(empty)[0])
        raise DataError(
            path, f"empty {column} ({id_column} '{df[id_column].iloc[r]}')", line=_line(r), column=column
        )


def load_users(path: Path) -> pd.DataFrame:
    """Reads and validates users.csv; returns user_id, age (float), profession, personality."""
    df = _read_table(path, USER_COLUMNS, "user_id")
    # 150 years: anything older is a unit or typing error, not a customer.
    age = _numeric(path, df, "age", "user_id", upper=150.0)
    for col in USER_TEXT:
        _text(path, df, col, "user_id")
    out = df[list(USER_COLUMNS)].copy()
    out["age"] = age
    return out.reset_index(drop=True)


def load_items(path: Path) -> pd.DataFrame:
    """Reads and validates items.csv; returns item_id, description, features, price (float), category."""
    df = _read_table(path, ITEM_COLUMNS, "item_id")
    price = _numeric(path, df, "price", "item_id")
    for col in ITEM_TEXT:
        _text(path, df, col, "item_id")
    out = df[list(ITEM_COLUMNS)].copy()
    out["price"] = price
    return out.reset_index(drop=True)


def _load_matrix(path: Path, user_index: dict[str, int], item_index: dict[str, int]) -> CSR:
    # utf-8-sig: spreadsheet "CSV UTF-8" exports start with a byte order mark.
    with open(path, newline="", encoding="utf-8-sig") as fh:
        try:
            header = [h.strip() for h in next(csv.reader(fh))]
        except StopIteration:
            raise DataError(path, "file is empty") from None
    if "user_id" not in header:
        raise DataError(path, f"missing column 'user_id' (found {header[:5]}...)")
    seen: dict[str, int] = {}
    for pos, name in enumerate(header):
        if name in seen:
            raise DataError(path, f"duplicate column '{name}' (also column {seen[name] + 1})", column=name)
        seen[name] = pos
    item_cols = [c for c in header if c != "user_id"]
    unknown = [c for c in item_cols if c not in item_index]
    if unknown:
        raise DataError(
            path, f"column is not an item_id in {ITEMS_FILE} ({len(unknown)} such columns)", column=unknown[0]
        )
    try:
        df = pd.read_csv(
            path, dtype={"user_id": str}, keep_default_na=False, low_memory=False, encoding="utf-8-sig"
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(path, f"not a readable CSV file ({err})") from err
    df.columns = [str(c).strip() for c in df.columns]
    ids = df["user_id"].str.strip()
    dup = ids.duplicated().to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(ids.eq(ids.iloc[r]).to_numpy())[0])
        raise DataError(
            path,
            f"duplicate user_id '{ids.iloc[r]}' (first on line {_line(first)})",
            line=_line(r),
            column="user_id",
        )
    rows = ids.map(user_index)
    missing = rows.isna().to_numpy()
    if missing.any():
        r = int(np.flatnonzero(missing)[0])
        raise DataError(
            path, f"user_id '{ids.iloc[r]}' is not in {USERS_FILE}", line=_line(r), column="user_id"
        )
    block = df[item_cols]
    values = block.to_numpy() if all(pd.api.types.is_integer_dtype(t) for t in block.dtypes) else None
    bad_cells = None if values is None else (values != 0) & (values != 1)
    if values is None or bad_cells.any():
        # Only on error: re-read as text so the message quotes the offending cell exactly as written.
        text = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")[df.columns].iloc[
            :, 1:
        ]
        text.columns = item_cols
        stripped = text.apply(lambda col: col.str.strip()).to_numpy()
        r, c = (int(x[0]) for x in np.nonzero((stripped != "0") & (stripped != "1")))
        raise DataError(
            path,
            f"cell {stripped[r, c]!r} is not 0 or 1 (user_id '{ids.iloc[r]}')",
            line=_line(r),
            column=item_cols[c],
        )
    r, c = np.nonzero(values)
    col_items = np.array([item_index[x] for x in item_cols], dtype=np.int64)
    return CSR.from_pairs(rows.to_numpy(dtype=np.int64)[r], col_items[c], len(user_index), len(item_index))


def _load_long(path: Path, user_index: dict[str, int], item_index: dict[str, int]) -> CSR:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(path, f"not a readable CSV file ({err})") from err
    for col in ("user_id", "item_id"):
        if col not in df.columns:
            raise DataError(
                path, f"missing column '{col}'; expected user_id, item_id[, label] (found {list(df.columns)})"
            )
    users = df["user_id"].str.strip()
    items = df["item_id"].str.strip()
    rows = {}
    for ids, index, col, src in (
        (users, user_index, "user_id", USERS_FILE),
        (items, item_index, "item_id", ITEMS_FILE),
    ):
        # One lookup per column, kept: at 2·10⁷ rows each pass over the strings costs tens of seconds.
        mapped = ids.map(index)
        missing = mapped.isna().to_numpy()
        if missing.any():
            r = int(np.flatnonzero(missing)[0])
            raise DataError(path, f"{col} '{ids.iloc[r]}' is not in {src}", line=_line(r), column=col)
        rows[col] = mapped.to_numpy(dtype=np.int64)
    label = np.ones(len(df), dtype=bool)
    if "label" in df.columns:
        text = df["label"].str.strip()
        bad = ~text.isin(["0", "1"]).to_numpy()
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(path, f"label {text.iloc[r]!r} is not 0 or 1", line=_line(r), column="label")
        label = text.eq("1").to_numpy()
    # Duplicates by integer pair key: hashing 2·10⁷ string pairs took minutes, int64 keys seconds.
    key = pd.Series(rows["user_id"] * len(item_index) + rows["item_id"])
    dup = key.duplicated().to_numpy()
    if dup.any():
        r = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(key.to_numpy() == key.iloc[r])[0])
        raise DataError(
            path,
            f"duplicate pair ({users.iloc[r]}, {items.iloc[r]}) (first on line {_line(first)})",
            line=_line(r),
        )
    u = rows["user_id"][label]
    i = rows["item_id"][label]
    return CSR.from_pairs(u, i, len(user_index), len(item_index))


def load_dataset(root: Path | str) -> Dataset:
    """Reads users.csv, items.csv and the interactions (wide matrix or long form) from ``root``.

    Raises:
        DataError: a file is missing or breaks the schema; the message names file, line and column.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "data folder not found")
    users = load_users(root / USERS_FILE)
    items = load_items(root / ITEMS_FILE)
    uidx = {u: i for i, u in enumerate(users["user_id"])}
    iidx = {u: i for i, u in enumerate(items["item_id"])}
    if (root / MATRIX_FILE).is_file():
        positives = _load_matrix(root / MATRIX_FILE, uidx, iidx)
    elif (root / LONG_FILE).is_file():
        positives = _load_long(root / LONG_FILE, uidx, iidx)
    else:
        raise DataError(root / MATRIX_FILE, f"file not found (nor the long form {LONG_FILE})")
    _LOGGER.info(
        "loaded %d users, %d items, %d positives from %s", len(users), len(items), positives.nnz, root
    )
    return Dataset(users=users, items=items, positives=positives, root=root)
