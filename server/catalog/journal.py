"""Which catalogue journal a server writes: PostgreSQL (shared by replicas), SQLite, or none."""

from __future__ import annotations

from pathlib import Path

from .store import CatalogStore, SQLiteStore
from .store_pg import PostgresStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(state_dir: Path | str | None = None, url: str | None = None) -> CatalogStore | None:
    """The journal: in PostgreSQL at ``url`` (shared by replicas), else under ``state_dir`` (SQLite),
    else None (catalogue changes live in memory only).

    Raises:
        ValueError: ``url`` is not a postgresql:// URL.
    """
    if url:
        if not url.startswith(POSTGRES_SCHEMES):
            raise ValueError(f"--catalog-url must be a postgresql:// URL (got {url.split(':', 1)[0]}://...)")
        return PostgresStore(url)
    return SQLiteStore(state_dir) if state_dir is not None else None
