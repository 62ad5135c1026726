"""MovieLens 100K in the seed schema, fetched once and cached: `.venv/bin/python benchmarks/movielens.py [--min-rating 4]`.

Prints the imported data set's folder. Other benchmarks import :func:`ensure_ml100k` (after putting
benchmarks/ on ``sys.path``, as they do for _common). The raw files come from RecBole's wheel on PyPI
(it ships MovieLens 100K as atomic files), fetched with pip; they stay in the user's cache and never
enter the repository (GroupLens's terms of use). Cache: ``$TOWERSERVE_CACHE``, else
``~/.cache/towerserve``:

- ``dl/``: the downloaded wheel;
- ``ml-100k-recbole/``: ml-100k.inter, ml-100k.user, ml-100k.item, extracted from it;
- ``movielens-100k-r4/``: ``towerserve import movielens`` of those, positives = ratings >= 4.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from towerserve.trainer.artifacts import atomic_dir
from towerserve.trainer.data import ITEMS_FILE, LONG_FILE, USERS_FILE
from towerserve.trainer.movielens import import_movielens

# Pinned: the data set's files must not change under a cached import between releases.
RECBOLE = "recbole==1.2.1"
MEMBERS = tuple(f"recbole/dataset_example/ml-100k/ml-100k{s}" for s in (".inter", ".user", ".item"))
RAW_DIR = "ml-100k-recbole"


def cache_root() -> Path:
    """``$TOWERSERVE_CACHE``, else ``~/.cache/towerserve`` (trainer/text.py's embedding cache lives there too)."""
    return Path(os.environ.get("TOWERSERVE_CACHE") or Path.home() / ".cache" / "towerserve")


def ensure_ml100k(cache: Path | None = None, min_rating: int = 4) -> Path:
    """The folder of MovieLens 100K imported with positives = ratings >= ``min_rating``, built if missing.

    Args:
        cache: the cache folder (default :func:`cache_root`).
        min_rating: the import's threshold; each threshold has its own folder.

    Returns:
        ``<cache>/movielens-100k-r<min_rating>``, readable by ``trainer.data.load_dataset``.

    Raises:
        subprocess.CalledProcessError: pip could not download the wheel.
    """
    cache = Path(cache) if cache is not None else cache_root()
    out = cache / f"movielens-100k-r{min_rating:g}"
    # atomic_dir writes the whole folder or nothing, so its files being there means the import finished.
    if all((out / name).is_file() for name in (USERS_FILE, ITEMS_FILE, LONG_FILE)):
        return out
    raw = cache / RAW_DIR
    if not all((raw / Path(m).name).is_file() for m in MEMBERS):
        _extract(_download(cache / "dl"), raw)
    summary = import_movielens(raw, out, min_rating=min_rating)
    print(summary.line(out), file=sys.stderr)
    return out


def _download(dest: Path) -> Path:
    """RecBole's wheel in ``dest`` (downloaded by pip unless already there)."""
    wheels = sorted(dest.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        # --no-deps: only the data files are wanted, not RecBole's torch and friends.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", RECBOLE]
        subprocess.run([*cmd, "-d", str(dest)], check=True, stdout=sys.stderr)
        wheels = sorted(dest.glob("recbole-1.2.1-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download {RECBOLE} left no wheel in {dest}")
    return wheels[-1]


def _extract(wheel: Path, raw: Path) -> None:
    """The three ml-100k atomic files from ``wheel`` into ``raw`` (all of them or, on failure, none)."""
    with zipfile.ZipFile(wheel) as zf, atomic_dir(raw) as tmp:
        missing = [m for m in MEMBERS if m not in zf.namelist()]
        if missing:
            raise SystemExit(f"{wheel} lacks {missing}")
        for member in MEMBERS:
            (tmp / Path(member).name).write_bytes(zf.read(member))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--min-rating", type=int, default=4, help="ratings at or above this are positives (default 4)"
    )
    parser.add_argument(
        "--cache", type=Path, help="cache folder (default $TOWERSERVE_CACHE or ~/.cache/towerserve)"
    )
    args = parser.parse_args()
    print(ensure_ml100k(args.cache, args.min_rating))


if __name__ == "__main__":
    main()
