"""Imports MovieLens (GroupLens 100K files or RecBole atomic files) as a data set in the seed schema.

The mapping, field by field, and why:

- ``user_id``, ``item_id``: MovieLens's own ids, as written. Every user and item of the source is kept,
  with or without positives, so ids and row order do not move when ``min_rating`` does.
- ``age``: age. ``profession``: occupation, the closest field there is.
- ``personality``: gender (``M``/``F``). The seed schema's other free-text user field; the zip code,
  the only attribute left, is too fine-grained to say anything as text and is dropped.
- ``description``: the title with its year, ``"Toy Story (1995)"``. GroupLens titles already end in
  ``(1995)``; RecBole keeps the title and ``release_year`` apart; both end up with one year.
- ``features``: the genres joined with ``", "``; ``category``: the first genre (GroupLens's genre order,
  which RecBole keeps). An item with no genre flag gets ``unknown``, MovieLens's own name for that.
- ``price``: the release year, MovieLens's one numeric item attribute (the schema's only numeric item
  column, min-max scaled by the trainer like any price). The title's trailing ``(1995)`` comes first,
  so price and description agree (RecBole's item 1412 has ``V`` in its year column and the year in its
  title), else GroupLens's release date or RecBole's ``release_year``. An item with no year at all (item 267, ``unknown``, in MovieLens 100K) gets the
  catalogue's median year (the lower median: a year that occurs), and the summary says how many.
- positives: ratings ``>= min_rating`` (default 4: "liked" on MovieLens's 1-5 stars, the usual cut).
  They go to long-form ``interactions.csv`` with their rating's ``timestamp`` (the loader reads only
  ``user_id``/``item_id``/``label``; the time is there for time-ordered splits), sorted by user, time.

Errors name the source file and its 1-based line (trainer/data.py's DataError), and the output folder
is replaced atomically, so a failed import leaves an existing one as it was.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
import statistics
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .artifacts import atomic_dir
from .data import (
    ITEM_COLUMNS,
    ITEMS_FILE,
    LONG_FILE,
    USER_COLUMNS,
    USERS_FILE,
    DataError,
    load_items,
    load_users,
)

GROUPLENS_FILES = ("u.data", "u.user", "u.item")
# u.genre's contents, for folders without it (its names in its order; u.item's flags follow this order).
GROUPLENS_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
RECBOLE_SUFFIXES = (".inter", ".user", ".item")
# RecBole's ml-100k.item calls the genres `class`; its ml-1m.item calls them `genre`.
RECBOLE_GENRE_COLUMNS = ("class", "genre")
NO_GENRE = "unknown"
# Users of 150 and over are a typing error (trainer/data.py rejects them too).
MAX_AGE = 150.0

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)")
_TRAILING_YEAR = re.compile(r"\((\d{4})\)\s*$")
_YEAR = re.compile(r"\d{4}", re.ASCII)
_ID = re.compile(r"\d+", re.ASCII)


@dataclass
class _Source:
    """One MovieLens folder read into rows, each with its 1-based line for later errors.

    users: (line, [id, age, occupation, gender]); items: (line, id, title, year or None, genres);
    ratings: (line, user id, item id, rating, timestamp or None).
    """

    layout: str
    users_path: Path
    items_path: Path
    ratings_path: Path
    users: list = field(default_factory=list)
    items: list = field(default_factory=list)
    ratings: list = field(default_factory=list)


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote: sizes, positives and the items whose year had to be filled in."""

    layout: str
    users: int
    items: int
    ratings: int
    positives: int
    min_rating: float
    timestamps: bool
    missing_years: int
    median_year: int | None

    @property
    def density(self) -> float:
        return self.positives / float(self.users * self.items)

    def line(self, out: Path | str) -> str:
        """The one-line report, e.g. ``wrote D: 943 users x 1682 items, 55375 positives of ...``."""
        filled = (
            f"; {self.missing_years} item(s) without a year priced at the median year {self.median_year}"
            if self.missing_years
            else ""
        )
        return (
            f"wrote {out}: {self.users} users x {self.items} items, {self.positives} positives of "
            f"{self.ratings} ratings (rating >= {self.min_rating:g}, density {100 * self.density:.2f} %) "
            f"from {self.layout}{filled}"
        )


def import_movielens(src: Path | str, out: Path | str, min_rating: float = 4) -> ImportSummary:
    """Converts the MovieLens folder ``src`` into users.csv, items.csv and interactions.csv in ``out``.

    Args:
        src: a folder with GroupLens 100K's u.data, u.user, u.item (and u.genre), or with one RecBole
            triple NAME.inter, NAME.user, NAME.item; the layout is detected from the file names.
        out: the data set folder to write; replaced atomically (created if missing).
        min_rating: ratings at or above it are positives.

    Returns:
        The summary (sizes, positives, density; see :meth:`ImportSummary.line`).

    Raises:
        DataError: a file is missing, or a line is malformed or names an unknown user or item; the
            message names the file and the line. Also when no rating reaches ``min_rating``.
        ValueError: ``out`` is ``src`` or a folder above it (replacing it would delete the source).
    """
    src, out = Path(src), Path(out)
    if not math.isfinite(min_rating):
        raise ValueError(f"min_rating must be a finite number (got {min_rating})")
    if src.resolve() == out.resolve() or out.resolve() in src.resolve().parents:
        raise ValueError(f"--out {out} would replace the source folder {src}; write elsewhere")
    source = _read(src)
    users = [user for _, user in source.users]
    user_row = _index(source.users_path, "user_id", [(n, u[0]) for n, u in source.users])
    item_row = _index(source.items_path, "item_id", [(n, item_id) for n, item_id, *_ in source.items])
    pairs, timed = _positives(source, user_row, item_row, min_rating)
    years = [year for _, _, _, year, _ in source.items if year is not None]
    median = statistics.median_low(years) if years else None
    items = [
        [item_id, _description(title, year), ", ".join(genres), str(year or median or 0), genres[0]]
        for _, item_id, title, year, genres in source.items
    ]
    with atomic_dir(out) as tmp:
        _write(tmp / USERS_FILE, USER_COLUMNS, users)
        _write(tmp / ITEMS_FILE, ITEM_COLUMNS, items)
        _write(
            tmp / LONG_FILE, ("user_id", "item_id", "timestamp") if timed else ("user_id", "item_id"), pairs
        )
        # Checked by the loader every consumer uses before `out` is replaced: a bad value stops here.
        load_users(tmp / USERS_FILE)
        load_items(tmp / ITEMS_FILE)
    return ImportSummary(
        layout=source.layout,
        users=len(users),
        items=len(items),
        ratings=len(source.ratings),
        positives=len(pairs),
        min_rating=float(min_rating),
        timestamps=timed,
        missing_years=len(items) - len(years),
        median_year=median,
    )


def _read(src: Path) -> _Source:
    """Detects the layout from the file names and reads it."""
    if not src.is_dir():
        raise DataError(src, "MovieLens folder not found")
    names = sorted(p.name for p in src.iterdir())
    # GroupLens first: its u.user and u.item would otherwise pass for a RecBole data set named "u".
    if any(n in names for n in GROUPLENS_FILES):
        expected = "GroupLens 100K layout: u.data, u.user, u.item, optionally u.genre"
        for n in GROUPLENS_FILES:
            if n not in names:
                raise DataError(src / n, f"file not found ({expected})")
        return _read_grouplens(src)
    stems = sorted({Path(n).stem for n in names if Path(n).suffix in RECBOLE_SUFFIXES})
    if len(stems) > 1:
        raise DataError(src, f"more than one RecBole data set {stems}; give a folder with one")
    if stems:
        for suffix in RECBOLE_SUFFIXES:
            if not (src / f"{stems[0]}{suffix}").is_file():
                expected = f"RecBole atomic files: {', '.join(stems[0] + s for s in RECBOLE_SUFFIXES)}"
                raise DataError(src / f"{stems[0]}{suffix}", f"file not found ({expected})")
        return _read_recbole(src, stems[0])
    raise DataError(
        src,
        "no MovieLens files: expected GroupLens 100K (u.data, u.user, u.item) or RecBole atomic files "
        f"(NAME.inter, NAME.user, NAME.item); the folder has {names if names else 'nothing'}",
    )


def _lines(
    path: Path, sep: str, encoding: str, n_fields: int | None = None
) -> Iterator[tuple[int, list[str]]]:
    """Yields (1-based line, stripped fields) of every non-blank line, checking the field count."""
    with open(path, "rb") as fh:
        # Bytes decoded line by line: a text stream decodes ahead in blocks and would blame the wrong line.
        for n, raw in enumerate(fh, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise DataError(path, f"not {encoding} text ({err.reason})", line=n) from None
            if not text.strip():
                continue
            fields = [f.strip() for f in text.rstrip("\r\n").split(sep)]
            if n_fields is not None and len(fields) != n_fields:
                raise DataError(
                    path, f"expected {n_fields} {sep!r}-separated fields, found {len(fields)}", line=n
                )
            yield n, fields


def _id(path: Path, line: int, value: str, column: str) -> str:
    if not _ID.fullmatch(value):
        raise DataError(path, f"{column} {value!r} is not a whole number", line=line)
    return value


def _number(path: Path, line: int, value: str, column: str) -> float:
    with contextlib.suppress(ValueError):
        if math.isfinite(x := float(value)):
            return x
    raise DataError(path, f"{column} {value!r} is not a number", line=line)


def _user(path: Path, line: int, uid: str, age: str, gender: str, job: str) -> tuple[int, list[str]]:
    years = _number(path, line, age, "age")
    if not 0 <= years <= MAX_AGE:
        raise DataError(path, f"age {age!r} is not between 0 and {MAX_AGE:g}", line=line)
    for value, column in ((gender, "gender"), (job, "occupation")):
        if not value:
            raise DataError(path, f"empty {column}", line=line)
    return line, [_id(path, line, uid, "user_id"), age, job, gender]


def _rating(path: Path, line: int, user: str, item: str, rating: str, time: str | None) -> tuple:
    return (
        line,
        _id(path, line, user, "user_id"),
        _id(path, line, item, "item_id"),
        _number(path, line, rating, "rating"),
        None if time is None else _number(path, line, time, "timestamp"),
    )


def _year(title: str, fallback: str) -> int | None:
    """A title's trailing ``(1995)``, else the first four-digit run of ``fallback``, else None."""
    if found := _TRAILING_YEAR.search(title):
        return int(found.group(1))
    found = _YEAR.search(fallback)
    return int(found.group(0)) if found else None


def _read_grouplens(src: Path) -> _Source:
    genres = _grouplens_genres(src / "u.genre")
    source = _Source("GroupLens 100K files", src / "u.user", src / "u.item", src / "u.data")
    for n, (uid, age, gender, job, _zip) in _lines(source.users_path, "|", "latin-1", 5):
        source.users.append(_user(source.users_path, n, uid, age, gender, job))
    # id | title | release date | video release date | IMDb URL | one 0/1 flag per genre
    for n, fields in _lines(source.items_path, "|", "latin-1", 5 + len(genres)):
        flags = fields[5:]
        bad = next((f for f in flags if f not in ("0", "1")), None)
        if bad is not None:
            raise DataError(source.items_path, f"genre flag {bad!r} is not 0 or 1", line=n)
        item_id = _id(source.items_path, n, fields[0], "item_id")
        kinds = [g for g, f in zip(genres, flags) if f == "1"] or [NO_GENRE]
        source.items.append((n, item_id, fields[1], _year(fields[1], fields[2]), kinds))
    for n, (user, item, rating, time) in _lines(source.ratings_path, "\t", "latin-1", 4):
        source.ratings.append(_rating(source.ratings_path, n, user, item, rating, time))
    return source


def _grouplens_genres(path: Path) -> tuple[str, ...]:
    """u.genre's names by index (``Action|1``), or the standard 19 when the file is absent."""
    if not path.is_file():
        return GROUPLENS_GENRES
    named = {}
    for n, (name, index) in _lines(path, "|", "latin-1", 2):
        named[int(_id(path, n, index, "genre index"))] = name
    if sorted(named) != list(range(len(named))):
        raise DataError(path, f"genre indexes {sorted(named)} are not 0 to {len(named) - 1}")
    return tuple(named[i] for i in range(len(named)))


def _read_recbole(src: Path, stem: str) -> _Source:
    source = _Source(
        f"RecBole atomic files '{stem}'", *(src / f"{stem}{s}" for s in (".user", ".item", ".inter"))
    )
    for n, row in _table(source.users_path, ("user_id", "age", "gender", "occupation")):
        source.users.append(
            _user(source.users_path, n, row["user_id"], row["age"], row["gender"], row["occupation"])
        )
    for n, row in _table(source.items_path, ("item_id", "movie_title"), RECBOLE_GENRE_COLUMNS):
        title = row["movie_title"]
        item_id = _id(source.items_path, n, row["item_id"], "item_id")
        kinds = next(row[c] for c in RECBOLE_GENRE_COLUMNS if c in row).split() or [NO_GENRE]
        source.items.append((n, item_id, title, _year(title, row.get("release_year", "")), kinds))
    for n, row in _table(source.ratings_path, ("user_id", "item_id", "rating")):
        time = row.get("timestamp")
        source.ratings.append(
            _rating(source.ratings_path, n, row["user_id"], row["item_id"], row["rating"], time)
        )
    return source


def _table(path: Path, required: tuple[str, ...], one_of: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """Rows of a RecBole atomic file as {column: value}; columns matched by name (``age`` of ``age:token``)."""
    rows = _lines(path, "\t", "utf-8")
    first = next(rows, None)
    if first is None:
        raise DataError(path, "file is empty (expected a header such as user_id:token)")
    header = [h.split(":", 1)[0] for h in first[1]]
    missing = [c for c in required if c not in header] + (
        [" or ".join(one_of)] if one_of and not set(one_of) & set(header) else []
    )
    if missing:
        raise DataError(path, f"missing column(s) {missing} (found {first[1]})", line=first[0])
    for n, fields in rows:
        if len(fields) != len(header):
            raise DataError(path, f"expected {len(header)} tab-separated fields, found {len(fields)}", line=n)
        yield n, dict(zip(header, fields))


def _index(path: Path, column: str, ids: list[tuple[int, str]]) -> dict[str, int]:
    """{id: row}; a repeated id is an error naming both lines."""
    lines: dict[str, int] = {}
    for n, key in ids:
        if key in lines:
            raise DataError(path, f"duplicate {column} '{key}' (first on line {lines[key]})", line=n)
        lines[key] = n
    return {key: row for row, key in enumerate(lines)}


def _positives(
    source: _Source, user_row: dict[str, int], item_row: dict[str, int], min_rating: float
) -> tuple[list[list[str]], bool]:
    """The positive (user, item[, timestamp]) rows, sorted by user, time, item; and whether times exist."""
    path = source.ratings_path
    if not source.ratings:
        raise DataError(path, "no ratings")
    seen: dict[tuple[str, str], int] = {}
    keep = []
    timed = all(r[4] is not None for r in source.ratings)
    for n, user, item, rating, time in source.ratings:
        for key, index, column, other in (
            (user, user_row, "user_id", source.users_path),
            (item, item_row, "item_id", source.items_path),
        ):
            if key not in index:
                raise DataError(path, f"{column} '{key}' is not in {other.name}", line=n)
        if (user, item) in seen:
            raise DataError(
                path,
                f"second rating of item {item} by user {user} (first on line {seen[user, item]})",
                line=n,
            )
        seen[user, item] = n
        if rating >= min_rating:
            keep.append((user_row[user], time or 0.0, item_row[item], user, item, time))
    if not keep:
        low, high = min(r[3] for r in source.ratings), max(r[3] for r in source.ratings)
        raise DataError(
            path, f"no rating is >= {min_rating:g} (ratings run from {low:g} to {high:g}); lower --min-rating"
        )
    keep.sort(key=lambda k: k[:3])
    return [[u, i, _time_text(t)] if timed else [u, i] for *_, u, i, t in keep], timed


def _time_text(t: float) -> str:
    # Unix seconds come as integers (GroupLens) or floats (RecBole's `timestamp:float`): write both alike.
    return str(int(t)) if float(t).is_integer() else repr(t)


def _description(title: str, year: int | None) -> str:
    """The title with its year once: GroupLens titles carry it already, RecBole's do not."""
    title = title or "untitled"
    return title if year is None or _YEAR_IN_TITLE.search(title) else f"{title} ({year})"


def _write(path: Path, header: tuple[str, ...], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
