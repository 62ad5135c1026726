"""trainer/movielens.py: both MovieLens layouts import to the same seed-schema data set; bad files fail
with file and line. Every file here is written by the tests (real MovieLens data stays out of the repo)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from towerserve.trainer.data import ITEMS_FILE, LONG_FILE, USERS_FILE, DataError, load_dataset
from towerserve.trainer.movielens import GROUPLENS_GENRES, import_movielens

# (id, age, gender, occupation, zip): user 3 rates only below 4, and must still be kept.
USERS = [
    ("1", "24", "M", "technician", "85711"),
    ("2", "53", "F", "other", "94043"),
    ("3", "23", "M", "writer", "32067"),
]
# (id, title without year, year or None, genres). Item 3 has no year and no rating >= 4; item 2's
# title is non-ASCII (latin-1 in GroupLens, UTF-8 in RecBole) and holds a comma (quoted in the CSV).
MOVIES = [
    ("1", "Toy Story", 1995, ["Animation", "Children's", "Comedy"]),
    ("2", "Misérables, Les", 1995, ["Drama", "Musical"]),
    ("3", "unknown", None, ["unknown"]),
    ("4", "Star Wars", 1977, ["Action", "Adventure", "Romance", "Sci-Fi", "War"]),
]
# (user, item, rating, timestamp). User 2's item 2 comes first in time, so it is written first.
RATINGS = [
    ("1", "1", "5", "881250949"),
    ("1", "2", "3", "881250950"),
    ("1", "4", "4", "881250951"),
    ("2", "1", "4", "881250952"),
    ("2", "4", "2", "881250953"),
    ("3", "2", "1", "881250954"),
    ("2", "2", "5", "881250940"),
]
# By hand, ratings >= 4 sorted by user then time: (1,1) 5, (1,4) 4, (2,2) 5, (2,1) 4.
EXPECTED_INTERACTIONS = (
    "user_id,item_id,timestamp\n1,1,881250949\n1,4,881250951\n2,2,881250940\n2,1,881250952\n"
)


def write_grouplens(root: Path, genre_file: bool = True) -> Path:
    """u.user, u.item (latin-1), u.data and (optionally) u.genre, laid out as GroupLens ships them."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.user").write_text("".join("|".join(u) + "\n" for u in USERS))
    items = []
    for item_id, title, year, genres in MOVIES:
        flags = "|".join("1" if g in genres else "0" for g in GROUPLENS_GENRES)
        shown, date = (f"{title} ({year})", f"01-Jan-{year}") if year else (title, "")
        items.append(f"{item_id}|{shown}|{date}||http://us.imdb.com/M/title-exact?{item_id}|{flags}\n")
    (root / "u.item").write_bytes("".join(items).encode("latin-1"))
    (root / "u.data").write_text("".join("\t".join(r) + "\n" for r in RATINGS))
    if genre_file:
        (root / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(GROUPLENS_GENRES)) + "\n")
    return root


def write_recbole(root: Path, name: str = "ml-tiny") -> Path:
    """NAME.user, NAME.item, NAME.inter with RecBole's typed headers (title and year apart)."""
    root.mkdir(parents=True, exist_ok=True)
    header = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
    (root / f"{name}.user").write_text(header + "".join("\t".join(u) + "\n" for u in USERS))
    header = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    rows = "".join(f"{i}\t{t}\t{y or 'unknown'}\t{' '.join(g)}\n" for i, t, y, g in MOVIES)
    (root / f"{name}.item").write_text(header + rows, encoding="utf-8")
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (root / f"{name}.inter").write_text(header + "".join("\t".join(r) + "\n" for r in RATINGS))
    return root


WRITERS = {"grouplens": write_grouplens, "recbole": write_recbole}


def files(root: Path) -> dict[str, str]:
    return {name: (root / name).read_text(encoding="utf-8") for name in (USERS_FILE, ITEMS_FILE, LONG_FILE)}


@pytest.mark.parametrize("layout", sorted(WRITERS))
def test_each_layout_imports_to_a_loadable_data_set(tmp_path, layout):
    src = WRITERS[layout](tmp_path / "src")
    summary = import_movielens(src, tmp_path / "out")
    ds = load_dataset(tmp_path / "out")
    assert ds.users["user_id"].tolist() == ["1", "2", "3"]  # user 3, without a positive, is kept
    assert ds.users["age"].tolist() == [24.0, 53.0, 23.0]
    assert ds.users["profession"].tolist() == ["technician", "other", "writer"]
    assert ds.users["personality"].tolist() == ["M", "F", "M"]
    assert ds.items["item_id"].tolist() == ["1", "2", "3", "4"]
    # One year each: GroupLens titles carry it, RecBole's get it from release_year.
    assert ds.items["description"].tolist() == [
        "Toy Story (1995)",
        "Misérables, Les (1995)",
        "unknown",
        "Star Wars (1977)",
    ]
    assert ds.items["features"].tolist() == [
        "Animation, Children's, Comedy",
        "Drama, Musical",
        "unknown",
        "Action, Adventure, Romance, Sci-Fi, War",
    ]
    assert ds.items["category"].tolist() == ["Animation", "Drama", "unknown", "Action"]
    # Item 3 has no year: the lower median of 1995, 1995, 1977 is 1995.
    assert ds.items["price"].tolist() == [1995.0, 1995.0, 1995.0, 1977.0]
    r, c = ds.positives.pairs()
    assert sorted(zip(r.tolist(), c.tolist())) == [(0, 0), (0, 3), (1, 0), (1, 1)]
    assert (tmp_path / "out" / LONG_FILE).read_text() == EXPECTED_INTERACTIONS
    assert (summary.users, summary.items, summary.ratings, summary.positives) == (3, 4, 7, 4)
    assert (summary.missing_years, summary.median_year, summary.timestamps) == (1, 1995, True)
    assert summary.density == pytest.approx(4 / 12)
    assert "3 users x 4 items, 4 positives of 7 ratings (rating >= 4, density 33.33 %)" in summary.line("D")


def test_both_layouts_of_the_same_ratings_write_identical_files(tmp_path):
    import_movielens(write_grouplens(tmp_path / "gl"), tmp_path / "a")
    import_movielens(write_recbole(tmp_path / "rb"), tmp_path / "b")
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_grouplens_without_u_genre_uses_the_standard_names(tmp_path):
    import_movielens(write_grouplens(tmp_path / "gl", genre_file=False), tmp_path / "a")
    import_movielens(write_grouplens(tmp_path / "gl2"), tmp_path / "b")
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_u_genre_names_the_flags(tmp_path):
    src = write_grouplens(tmp_path / "gl")
    (src / "u.genre").write_text("".join(f"genre{i}|{i}\n" for i in range(len(GROUPLENS_GENRES))))
    import_movielens(src, tmp_path / "out")
    items = load_dataset(tmp_path / "out").items
    assert items["features"].tolist()[0] == "genre3, genre4, genre5"  # Animation, Children's, Comedy
    assert items["category"].tolist()[0] == "genre3"


def test_min_rating_changes_positives_only(tmp_path):
    src = write_recbole(tmp_path / "src")
    counts = {}
    for threshold in (3, 4, 5):
        counts[threshold] = import_movielens(src, tmp_path / f"r{threshold}", min_rating=threshold).positives
    # Ratings 5, 3, 4, 4, 2, 1, 5: three thresholds, by hand.
    assert counts == {3: 5, 4: 4, 5: 2}
    for threshold in (3, 5):
        a, b = files(tmp_path / "r4"), files(tmp_path / f"r{threshold}")
        assert (a[USERS_FILE], a[ITEMS_FILE]) == (b[USERS_FILE], b[ITEMS_FILE])  # ids stay put
    assert load_dataset(tmp_path / "r5").positives.nnz == 2


def test_no_rating_over_the_threshold_is_an_error(tmp_path):
    src = write_grouplens(tmp_path / "src")
    with pytest.raises(DataError, match=r"u\.data: no rating is >= 6 \(ratings run from 1 to 5\)"):
        import_movielens(src, tmp_path / "out", min_rating=6)
    assert not (tmp_path / "out").exists()


def replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_bytes().decode("latin-1").splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    path.write_bytes("".join(lines).encode("latin-1"))


FLAGS = "|0" * 19
BAD_LINES = [
    # layout, file, 1-based line, its new text, expected problem
    ("grouplens", "u.data", 3, "1\t4\t4", "expected 4 '\\t'-separated fields, found 3"),
    ("grouplens", "u.data", 2, "1\t2\tfive\t881250950", "rating 'five' is not a number"),
    ("grouplens", "u.data", 5, "2\tx\t2\t881250953", "item_id 'x' is not a whole number"),
    ("grouplens", "u.data", 6, "9\t2\t1\t881250954", "user_id '9' is not in u.user"),
    ("grouplens", "u.data", 7, "2\t8\t5\t881250940", "item_id '8' is not in u.item"),
    ("grouplens", "u.data", 7, "1\t1\t5\t881250940", "second rating of item 1 by user 1 (first on line 1)"),
    ("grouplens", "u.user", 2, "2|old|F|other|94043", "age 'old' is not a number"),
    ("grouplens", "u.user", 3, "3|23|M|writer", "expected 5 '|'-separated fields, found 4"),
    ("grouplens", "u.user", 3, "1|23|M|writer|32067", "duplicate user_id '1' (first on line 1)"),
    ("grouplens", "u.item", 4, "4|Star Wars (1977)|01-Jan-1977||url|1|0", "expected 24 '|'-separated fields"),
    ("grouplens", "u.item", 2, f"2|Up (2009)|||url{FLAGS[:-1]}2", "genre flag '2' is not 0 or 1"),
    ("grouplens", "u.item", 1, f"one|Toy Story (1995)|||url{FLAGS}", "item_id 'one' is not a whole number"),
    # RecBole lines count the header as line 1.
    ("recbole", "ml-tiny.inter", 4, "1\t4\t4", "expected 4 tab-separated fields, found 3"),
    ("recbole", "ml-tiny.inter", 3, "1\t2\tbad\t881250950", "rating 'bad' is not a number"),
    ("recbole", "ml-tiny.inter", 8, "3\t7\t5\t881250940", "item_id '7' is not in ml-tiny.item"),
    ("recbole", "ml-tiny.user", 2, "1\t24\tM\ttechnician", "expected 5 tab-separated fields, found 4"),
    ("recbole", "ml-tiny.user", 3, "2\tfifty\tF\tother\t94043", "age 'fifty' is not a number"),
    ("recbole", "ml-tiny.item", 5, "x4\tStar Wars\t1977\tAction", "item_id 'x4' is not a whole number"),
    ("recbole", "ml-tiny.item", 3, "2\tUp\t2009", "expected 4 tab-separated fields, found 3"),
]


@pytest.mark.parametrize(
    "layout, name, line, text, problem", BAD_LINES, ids=[f"{b[1]}:{b[2]}:{b[4][:24]}" for b in BAD_LINES]
)
def test_a_bad_line_names_its_file_and_line(tmp_path, layout, name, line, text, problem):
    src = WRITERS[layout](tmp_path / "src")
    replace_line(src / name, line, text)
    with pytest.raises(DataError) as info:
        import_movielens(src, tmp_path / "out")
    assert info.value.path == str(src / name)
    assert info.value.line == line
    assert problem in info.value.problem


def test_a_missing_recbole_header_column_is_named(tmp_path):
    src = write_recbole(tmp_path / "src")
    replace_line(src / "ml-tiny.inter", 1, "user_id:token\titem_id:token\tscore:float\ttimestamp:float")
    with pytest.raises(DataError, match=r"ml-tiny\.inter: line 1: missing column\(s\) \['rating'\]"):
        import_movielens(src, tmp_path / "out")


@pytest.mark.parametrize(
    "layout, name, expected",
    [("grouplens", "u.item", "GroupLens 100K layout"), ("recbole", "ml-tiny.user", "RecBole atomic files")],
)
def test_a_missing_file_is_named_with_the_layout_expected(tmp_path, layout, name, expected):
    src = WRITERS[layout](tmp_path / "src")
    (src / name).unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(src / name))}: file not found \({expected}"):
        import_movielens(src, tmp_path / "out")


def test_a_folder_of_neither_layout_lists_what_it_holds(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n")
    with pytest.raises(DataError, match=r"no MovieLens files: .*the folder has \['ratings\.csv'\]"):
        import_movielens(tmp_path / "src", tmp_path / "out")


def test_a_failed_import_leaves_the_previous_output_as_it_was(tmp_path):
    src = write_grouplens(tmp_path / "src")
    import_movielens(src, tmp_path / "out")
    before = files(tmp_path / "out")
    replace_line(src / "u.data", 7, "2\t8\t5\t881250940")
    with pytest.raises(DataError):
        import_movielens(src, tmp_path / "out")
    assert files(tmp_path / "out") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temporary folder left


def test_out_may_not_replace_the_source(tmp_path):
    src = write_recbole(tmp_path / "data" / "src")
    for out in (src, tmp_path / "data"):
        with pytest.raises(ValueError, match="would replace the source folder"):
            import_movielens(src, out)
    assert (src / "ml-tiny.inter").is_file()


def towerserve_command() -> list[str]:
    """The installed console script beside this interpreter (what users run), else the module."""
    script = shutil.which("towerserve", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "towerserve.clients.cli"]


def test_the_import_command_runs_end_to_end(tmp_path):
    src = write_grouplens(tmp_path / "src")
    cmd = [*towerserve_command(), "import", "movielens", str(src), "--out", str(tmp_path / "out")]
    done = subprocess.run([*cmd, "--min-rating", "5"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {tmp_path / 'out'}: 3 users x 4 items, 2 positives of 7 ratings")
    assert load_dataset(tmp_path / "out").positives.nnz == 2
    (src / "u.user").unlink()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"towerserve import: error: {src / 'u.user'}: file not found" in done.stderr
