"""trainer/data.py: a valid data set loads as arrays; every malformed file fails with file, line, column and problem."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from towerserve.trainer.data import (
    ITEMS_FILE,
    LONG_FILE,
    MATRIX_FILE,
    USERS_FILE,
    DataError,
    load_dataset,
)

USERS = (
    "user_id,age,profession,personality\n"
    "u1,30,arts,Gamer\n"  # line 2
    "u2,40,law,Traveler\n"  # line 3
    "u3,25,student,Book Lover\n"  # line 4
)
ITEMS = (
    "item_id,description,features,price,category\n"
    "i1,A fast laptop,Wi-Fi 6,900,laptop\n"  # line 2
    "i2,A light tent,Waterproof,200,tent\n"  # line 3
    "i3,A gripping novel,Illustrated,20,novel\n"  # line 4
)
MATRIX = (
    "user_id,i1,i2,i3\n"
    "u1,1,0,0\n"  # line 2
    "u2,0,1,1\n"  # line 3
    "u3,1,0,1\n"  # line 4
)
# (user index, item index) of the ones above, row-major.
MATRIX_PAIRS = [(0, 0), (1, 1), (1, 2), (2, 0), (2, 2)]


def write_dataset(
    root: Path,
    users: str | None = USERS,
    items: str | None = ITEMS,
    matrix: str | None = MATRIX,
    long: str | None = None,
) -> Path:
    """Writes the given files (None: leave that file out) and returns the folder."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in ((USERS_FILE, users), (ITEMS_FILE, items), (MATRIX_FILE, matrix), (LONG_FILE, long)):
        if text is not None:
            (root / name).write_text(text)
    return root


def pair_list(ds) -> list[tuple[int, int]]:
    r, c = ds.positives.pairs()
    return list(zip(r.tolist(), c.tolist()))


def expect_error(root: Path, file: str, match: str, line: int | None, column: str | None) -> DataError:
    """Loads ``root``, expects a DataError naming ``file`` with this message, line and column."""
    with pytest.raises(DataError, match=match) as info:
        load_dataset(root)
    err = info.value
    assert Path(err.path) == root / file
    assert str(root / file) in str(err)  # the message itself names the file
    assert err.line == line
    assert err.column == column
    if line is not None:
        assert f"line {line}" in str(err)
    if column is not None:
        assert f"column '{column}'" in str(err)
    return err


# ------------------------------------------------------------------------------------------- valid data


def test_valid_dataset_loads_with_shapes_and_types(tmp_path):
    ds = load_dataset(write_dataset(tmp_path))
    assert (ds.n_users, ds.n_items) == (3, 3)
    assert list(ds.users.columns) == ["user_id", "age", "profession", "personality"]
    assert list(ds.items.columns) == ["item_id", "description", "features", "price", "category"]
    assert ds.users["age"].dtype == np.float64 and ds.users["age"].tolist() == [30.0, 40.0, 25.0]
    assert ds.items["price"].dtype == np.float64 and ds.items["price"].tolist() == [900.0, 200.0, 20.0]
    assert (ds.positives.n_rows, ds.positives.n_cols) == (3, 3)
    assert pair_list(ds) == MATRIX_PAIRS
    assert ds.density == pytest.approx(5 / 9)
    assert ds.user_index() == {"u1": 0, "u2": 1, "u3": 2}
    assert ds.item_index() == {"i1": 0, "i2": 1, "i3": 2}
    assert ds.root == tmp_path


def test_matrix_column_and_row_order_may_differ_from_the_tables(tmp_path):
    # Same ones as MATRIX, but columns i3,i1,i2 and rows u3,u1,u2: indices follow users.csv / items.csv.
    shuffled = "user_id,i3,i1,i2\nu3,1,1,0\nu1,0,1,0\nu2,1,0,1\n"
    ds = load_dataset(write_dataset(tmp_path, matrix=shuffled))
    assert pair_list(ds) == MATRIX_PAIRS


def test_matrix_may_leave_out_items_and_users(tmp_path):
    # i2 and u3 are absent from the matrix: they simply have no positives.
    partial = "user_id,i3,i1\nu2,1,0\nu1,0,1\n"
    ds = load_dataset(write_dataset(tmp_path, matrix=partial))
    assert pair_list(ds) == [(0, 0), (1, 2)]


def test_hand_written_dataset_with_other_ids(tmp_path):
    users = (
        "personality,user_id,profession,age\n"  # columns in another order, plus ids we never generate
        "Night Owl,alice,nurse,51.5\n"
        "Early Bird,007,pilot,33\n"
        "Cat Person,Bob Smith,baker,19\n"
    )
    items = (
        "category,item_id,price,features,description,extra_column\n"
        'kettle,SKU-9,12.5,"Fast boil, Steel","A kettle, with a comma",ignored\n'
        "mug,SKU-10,3,Ceramic,A mug,ignored\n"
    )
    matrix = "user_id,SKU-10,SKU-9\nBob Smith,1,1\n007,0,1\nalice,0,0\n"
    ds = load_dataset(write_dataset(tmp_path, users=users, items=items, matrix=matrix))
    assert ds.users["user_id"].tolist() == ["alice", "007", "Bob Smith"]  # "007" stays text
    assert ds.users["age"].tolist() == [51.5, 33.0, 19.0]
    assert ds.items["item_id"].tolist() == ["SKU-9", "SKU-10"]
    assert ds.items["description"].tolist() == ["A kettle, with a comma", "A mug"]
    assert "extra_column" not in ds.items.columns
    # Bob Smith (2) has SKU-9 (0) and SKU-10 (1); 007 (1) has SKU-9 (0).
    assert pair_list(ds) == [(1, 0), (2, 0), (2, 1)]


def test_long_form_with_and_without_labels(tmp_path):
    labelled = "user_id,item_id,label\nu3,i3,1\nu1,i2,0\nu2,i1,1\nu1,i1,1\nu3,i2,0\n"
    ds = load_dataset(write_dataset(tmp_path / "a", matrix=None, long=labelled))
    assert pair_list(ds) == [(0, 0), (1, 0), (2, 2)]  # label-0 rows are not positives
    plain = "user_id,item_id\nu3,i3\nu2,i1\nu1,i1\n"
    ds = load_dataset(write_dataset(tmp_path / "b", matrix=None, long=plain))
    assert pair_list(ds) == [(0, 0), (1, 0), (2, 2)]


def test_long_form_equals_matrix_form(tmp_path):
    long = "user_id,item_id\n" + "".join(f"u{u + 1},i{i + 1}\n" for u, i in MATRIX_PAIRS[::-1])
    a = load_dataset(write_dataset(tmp_path / "matrix"))
    b = load_dataset(write_dataset(tmp_path / "long", matrix=None, long=long))
    np.testing.assert_array_equal(a.positives.indptr, b.positives.indptr)
    np.testing.assert_array_equal(a.positives.indices, b.positives.indices)


def test_matrix_wins_over_long_form_when_both_exist(tmp_path):
    ds = load_dataset(write_dataset(tmp_path, long="user_id,item_id\nu1,i3\n"))
    assert pair_list(ds) == MATRIX_PAIRS


# ----------------------------------------------------------------------------------------- missing files


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found") as info:
        load_dataset(tmp_path / "nowhere")
    assert info.value.path == str(tmp_path / "nowhere")


@pytest.mark.parametrize("missing", [USERS_FILE, ITEMS_FILE])
def test_missing_table(tmp_path, missing):
    root = write_dataset(tmp_path)
    (root / missing).unlink()
    expect_error(root, missing, "file not found", None, None)


def test_missing_interactions_in_both_forms(tmp_path):
    root = write_dataset(tmp_path, matrix=None)
    err = expect_error(root, MATRIX_FILE, "file not found", None, None)
    assert LONG_FILE in str(err)  # says the long form was looked for too


# ----------------------------------------------------------------------------------- users.csv / items.csv


def _replace_line(text: str, line: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[line - 1] = new + "\n"
    return "".join(lines)


TABLE_CASES = [
    # (id, file, line 3 replaced by / or whole text, expected message regex, line, column)
    (
        "users-missing-column",
        USERS_FILE,
        "user_id,age,profession\nu1,30,arts\n",
        r"missing column\(s\) \['personality'\]",
        None,
        None,
    ),
    (
        "users-duplicate-id",
        USERS_FILE,
        USERS + "u2,50,law,Gamer\n",
        r"duplicate user_id 'u2' \(first on line 3\)",
        5,
        "user_id",
    ),
    (
        "users-empty-id",
        USERS_FILE,
        _replace_line(USERS, 3, "  ,40,law,Traveler"),
        r"empty user_id",
        3,
        "user_id",
    ),
    (
        "age-nan",
        USERS_FILE,
        _replace_line(USERS, 3, "u2,nan,law,Traveler"),
        r"age 'nan' is not a finite number \(user_id 'u2'\)",
        3,
        "age",
    ),
    (
        "age-NA",
        USERS_FILE,
        _replace_line(USERS, 3, "u2,NA,law,Traveler"),
        r"age 'NA' is not a finite number",
        3,
        "age",
    ),
    (
        "age-blank",
        USERS_FILE,
        _replace_line(USERS, 3, "u2,,law,Traveler"),
        r"age '' is not a finite number",
        3,
        "age",
    ),
    (
        "age-text",
        USERS_FILE,
        _replace_line(USERS, 3, "u2,forty,law,Traveler"),
        r"age 'forty' is not a finite number",
        3,
        "age",
    ),
    (
        "age-inf",
        USERS_FILE,
        _replace_line(USERS, 4, "u3,inf,student,Book Lover"),
        r"age 'inf' is not a finite number \(user_id 'u3'\)",
        4,
        "age",
    ),
    (
        "age-negative",
        USERS_FILE,
        _replace_line(USERS, 3, "u2,-1,law,Traveler"),
        r"age '-1' is negative",
        3,
        "age",
    ),
    (
        "age-above-150",
        USERS_FILE,
        _replace_line(USERS, 3, "u2,151,law,Traveler"),
        r"age '151' is above 150",
        3,
        "age",
    ),
    (
        "users-empty-profession",
        USERS_FILE,
        _replace_line(USERS, 3, "u2,40, ,Traveler"),
        r"empty profession \(user_id 'u2'\)",
        3,
        "profession",
    ),
    (
        "users-empty-personality",
        USERS_FILE,
        _replace_line(USERS, 4, "u3,25,student,"),
        r"empty personality \(user_id 'u3'\)",
        4,
        "personality",
    ),
    (
        "items-missing-column",
        ITEMS_FILE,
        "item_id,description,features,price\ni1,a,b,1\n",
        r"missing column\(s\) \['category'\]",
        None,
        None,
    ),
    (
        "items-duplicate-id",
        ITEMS_FILE,
        ITEMS + "i1,Another laptop,Wi-Fi 6,800,laptop\n",
        r"duplicate item_id 'i1' \(first on line 2\)",
        5,
        "item_id",
    ),
    (
        "items-empty-id",
        ITEMS_FILE,
        _replace_line(ITEMS, 4, ",A gripping novel,Illustrated,20,novel"),
        r"empty item_id",
        4,
        "item_id",
    ),
    (
        "price-nan",
        ITEMS_FILE,
        _replace_line(ITEMS, 3, "i2,A light tent,Waterproof,nan,tent"),
        r"price 'nan' is not a finite number \(item_id 'i2'\)",
        3,
        "price",
    ),
    (
        "price-text",
        ITEMS_FILE,
        _replace_line(ITEMS, 3, "i2,A light tent,Waterproof,$200,tent"),
        r"price '\$200' is not a finite number",
        3,
        "price",
    ),
    (
        "price-negative",
        ITEMS_FILE,
        _replace_line(ITEMS, 3, "i2,A light tent,Waterproof,-5,tent"),
        r"price '-5' is negative \(item_id 'i2'\)",
        3,
        "price",
    ),
    (
        "items-empty-description",
        ITEMS_FILE,
        _replace_line(ITEMS, 3, "i2,,Waterproof,200,tent"),
        r"empty description \(item_id 'i2'\)",
        3,
        "description",
    ),
    (
        "items-empty-features",
        ITEMS_FILE,
        _replace_line(ITEMS, 2, 'i1,A fast laptop,"   ",900,laptop'),
        r"empty features \(item_id 'i1'\)",
        2,
        "features",
    ),
    (
        "items-empty-category",
        ITEMS_FILE,
        _replace_line(ITEMS, 4, "i3,A gripping novel,Illustrated,20,"),
        r"empty category \(item_id 'i3'\)",
        4,
        "category",
    ),
]


@pytest.mark.parametrize(
    "file,text,match,line,column", [c[1:] for c in TABLE_CASES], ids=[c[0] for c in TABLE_CASES]
)
def test_malformed_table(tmp_path, file, text, match, line, column):
    root = write_dataset(tmp_path, **{"users" if file == USERS_FILE else "items": text})
    expect_error(root, file, match, line, column)


def test_age_150_is_allowed(tmp_path):
    ds = load_dataset(write_dataset(tmp_path, users=_replace_line(USERS, 3, "u2,150,law,Traveler")))
    assert ds.users["age"].tolist() == [30.0, 150.0, 25.0]


# --------------------------------------------------------------------------------------------- the matrix

MATRIX_CASES = [
    (
        "duplicate-column",
        "user_id,i1,i2,i1\nu1,1,0,0\n",
        r"duplicate column 'i1' \(also column 2\)",
        None,
        "i1",
    ),
    ("unknown-column", "user_id,i1,i9,i3\nu1,1,0,0\n", r"column is not an item_id in items\.csv", None, "i9"),
    ("no-user-id-column", "uid,i1,i2,i3\nu1,1,0,0\n", r"missing column 'user_id'", None, None),
    ("empty-file", "", r"file is empty", None, None),
    (
        "unknown-user",
        _replace_line(MATRIX, 3, "u9,0,1,1"),
        r"user_id 'u9' is not in users\.csv",
        3,
        "user_id",
    ),
    ("duplicate-user-row", MATRIX + "u1,0,0,1\n", r"duplicate user_id 'u1'", 5, "user_id"),
    ("cell-2", _replace_line(MATRIX, 3, "u2,0,2,1"), r"cell .*2.* is not 0 or 1 \(user_id 'u2'\)", 3, "i2"),
    (
        "cell-minus-1",
        _replace_line(MATRIX, 4, "u3,1,0,-1"),
        r"cell .*-1.* is not 0 or 1 \(user_id 'u3'\)",
        4,
        "i3",
    ),
    ("cell-x", _replace_line(MATRIX, 3, "u2,0,x,1"), r"cell 'x' is not 0 or 1 \(user_id 'u2'\)", 3, "i2"),
    ("cell-blank", _replace_line(MATRIX, 3, "u2,0,,1"), r"cell '' is not 0 or 1 \(user_id 'u2'\)", 3, "i2"),
    ("short-row", _replace_line(MATRIX, 4, "u3,1,0"), r"cell '' is not 0 or 1 \(user_id 'u3'\)", 4, "i3"),
]


@pytest.mark.parametrize(
    "text,match,line,column", [c[1:] for c in MATRIX_CASES], ids=[c[0] for c in MATRIX_CASES]
)
def test_malformed_matrix(tmp_path, text, match, line, column):
    expect_error(write_dataset(tmp_path, matrix=text), MATRIX_FILE, match, line, column)


def test_matrix_integer_cell_is_quoted_as_written(tmp_path):
    err = expect_error(
        write_dataset(tmp_path, matrix=_replace_line(MATRIX, 3, "u2,0,2,1")), MATRIX_FILE, r"cell", 3, "i2"
    )
    assert "cell '2' is not 0 or 1" in str(err), str(err)


def test_matrix_float_cell_is_reported_where_it_is(tmp_path):
    expect_error(
        write_dataset(tmp_path, matrix=_replace_line(MATRIX, 3, "u2,0,0.5,1")),
        MATRIX_FILE,
        r"cell '0\.5' is not 0 or 1 \(user_id 'u2'\)",
        3,
        "i2",
    )


def test_matrix_float_cell_is_rejected(tmp_path):
    # Whatever the message, 0.5 must never be read as a positive or a negative.
    with pytest.raises(DataError, match=r"is not 0 or 1") as info:
        load_dataset(write_dataset(tmp_path, matrix=_replace_line(MATRIX, 3, "u2,0,0.5,1")))
    assert info.value.column == "i2"


def test_matrix_row_with_too_many_cells(tmp_path):
    root = write_dataset(tmp_path, matrix=_replace_line(MATRIX, 3, "u2,0,1,1,1"))
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert Path(info.value.path) == root / MATRIX_FILE


# ----------------------------------------------------------------------------------------- the long form

LONG_CASES = [
    ("unknown-user", "user_id,item_id\nu1,i1\nu9,i2\n", r"user_id 'u9' is not in users\.csv", 3, "user_id"),
    (
        "unknown-item",
        "user_id,item_id\nu1,i1\nu2,i2\nu3,i7\n",
        r"item_id 'i7' is not in items\.csv",
        4,
        "item_id",
    ),
    ("label-yes", "user_id,item_id,label\nu1,i1,1\nu2,i2,yes\n", r"label 'yes' is not 0 or 1", 3, "label"),
    ("label-2", "user_id,item_id,label\nu1,i1,2\n", r"label '2' is not 0 or 1", 2, "label"),
    ("label-blank", "user_id,item_id,label\nu1,i1,1\nu2,i2,\n", r"label '' is not 0 or 1", 3, "label"),
    ("duplicate-pair", "user_id,item_id\nu1,i1\nu2,i2\nu1,i1\n", r"duplicate pair \(u1, i1\)", 4, None),
    (
        "duplicate-pair-other-label",
        "user_id,item_id,label\nu1,i1,1\nu1,i1,0\n",
        r"duplicate pair \(u1, i1\)",
        3,
        None,
    ),
    ("missing-item-column", "user_id,item\nu1,i1\n", r"missing column 'item_id'", None, None),
]


@pytest.mark.parametrize(
    "text,match,line,column", [c[1:] for c in LONG_CASES], ids=[c[0] for c in LONG_CASES]
)
def test_malformed_long_form(tmp_path, text, match, line, column):
    expect_error(write_dataset(tmp_path, matrix=None, long=text), LONG_FILE, match, line, column)


def test_error_message_layout(tmp_path):
    # "<path>: line <n>, column '<c>': <problem>" — the same order everywhere, so people and tools can read it.
    root = write_dataset(tmp_path, users=_replace_line(USERS, 3, "u2,-1,law,Traveler"))
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert re.fullmatch(
        rf"{re.escape(str(root / USERS_FILE))}: line 3, column 'age': age '-1' is negative "
        r"\(user_id 'u2'\)",
        str(info.value),
    )
    assert info.value.problem == "age '-1' is negative (user_id 'u2')"
    assert isinstance(info.value, ValueError)  # the CLI turns ValueErrors into exit code 2


def test_byte_order_mark_is_accepted_in_the_tables_and_long_form(tmp_path):
    # Spreadsheet "CSV UTF-8" exports start with a byte order mark; pandas drops it.
    bom = "\ufeff"
    root = write_dataset(
        tmp_path, users=bom + USERS, items=bom + ITEMS, matrix=None, long=bom + "user_id,item_id\nu1,i1\n"
    )
    assert pair_list(load_dataset(root)) == [(0, 0)]


def test_byte_order_mark_is_accepted_in_the_matrix(tmp_path):
    ds = load_dataset(write_dataset(tmp_path, matrix="\ufeff" + MATRIX))
    assert pair_list(ds) == MATRIX_PAIRS
