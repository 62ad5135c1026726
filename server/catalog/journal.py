"""Which catalogue journal a server writes: PostgreSQL (shared by replicas), SQLite, or none."""

from __future__ import annotations

from pathlib import Path

from ..core.secrets import redact
from .store import CatalogStore, SQLiteStore
from .store_pg import PostgresStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(state_dir: Path | str | None = None, url: str | None = None) -> CatalogStore | None:
    """The journal: in PostgreSQL at ``url`` (shared by replicas), else under ``state_dir`` (SQLite),
    else None (catalogue changes live in memory only).

    Raises:
        ValueError: ``url`` is not a postgresql:// URL libpq can read (the message masks its password).
    """
    if url:
        if not url.startswith(POSTGRES_SCHEMES):
            scheme = url.split("://", 1)[0] + "://..." if "://" in url else "no scheme"
            raise ValueError(f"--catalog-url must be a postgresql:// URL (got {redact(scheme, url)})")
        return PostgresStore(url)  # which refuses a URL libpq cannot parse, its password masked
    return SQLiteStore(state_dir) if state_dir is not None else None


def open_journal(source: str | Path) -> CatalogStore:
    """An existing server's journal to read: a postgresql:// URL, or its --state-dir (SQLite).

    Raises:
        FileNotFoundError: a folder with no journal in it (a typo must not create an empty one).
    """
    text = str(source)
    if text.startswith(POSTGRES_SCHEMES):
        return PostgresStore(text)
    from .store import JOURNAL_FILE

    if not (Path(text) / JOURNAL_FILE).is_file():
        raise FileNotFoundError(
            f"{Path(text) / JOURNAL_FILE}: no catalogue journal (give the server's --state-dir or --catalog-url)"
        )
    return SQLiteStore(text)
