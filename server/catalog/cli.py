"""`towerserve catalog dump|compact`: read or compact a server's catalogue journal (store.py), in SQLite
(--state-dir) or PostgreSQL (--catalog-url).

Both work while servers run on the same journal: SQLite's WAL lets readers and one writer share the
file, and compaction only drops changes a later change of the same item supersedes (and, given the
bundles that may be served, deletes of ids none of them holds). Only argparse at the top (see
server/api/cli.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _open(args: argparse.Namespace):
    from .journal import open_journal

    if args.catalog_url:
        return open_journal(args.catalog_url)
    if args.state_dir is None:
        raise ValueError("give the server's --state-dir or --catalog-url")
    return open_journal(args.state_dir)


def bundle_ids(folders: list[Path]) -> set[str]:
    """The item ids of the serving bundles in ``folders`` (a training folder means its serving/)."""
    from ..core.manifest import MANIFEST_FILE
    from .snapshot import read_csv

    ids: set[str] = set()
    for folder in folders:
        serving = folder / "serving" if (folder / "serving" / MANIFEST_FILE).is_file() else folder
        ids.update(r["item_id"] for r in read_csv(serving / "catalog" / "items.csv", ["item_id"]))
    return ids


def cmd_dump(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .store import latest

    store = _open(args)
    try:
        changes = list(store.changes()) if args.all else latest(store.changes())
    finally:
        store.close()
    lines = []
    for c in changes:
        row = {"seq": c.seq, "op": c.op, "item_id": c.item_id, "at": c.at}
        if c.item is not None:
            row.update({k: v for k, v in asdict(c.item).items() if k != "item_id"})
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    if args.out:
        args.out.write_text("".join(lines), encoding="utf-8")
    else:
        sys.stdout.writelines(lines)
    if args.out:
        print(f"wrote {len(changes)} changes to {args.out}", file=sys.stderr)
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    keep = bundle_ids(args.artifacts).__contains__ if args.artifacts else None
    store = _open(args)
    try:
        before, after = store.compact(keep_delete=keep)
    finally:
        store.close()
    deletes = "deletes of ids no given bundle holds dropped" if keep else "deletes kept (no --artifacts)"
    print(f"compacted {store.url}: {before} -> {after} changes (each item's latest kept; {deletes})")
    return 0


def _journal_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", type=Path, help="the server's --state-dir (SQLite journal)")
    where.add_argument("--catalog-url", help="the servers' --catalog-url (PostgreSQL journal)")


def register(sub) -> None:
    """Adds `catalog` (dump, compact) to the `towerserve` subcommands."""
    p = sub.add_parser(
        "catalog",
        help="inspect or compact the catalogue journal of `towerserve serve`",
        description="The journal holds every acknowledged UpsertItems and DeleteItems; the server "
        "replays it at start and on every Reload. Safe to run while servers run.",
    )
    cmds = p.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    dump = cmds.add_parser("dump", help="print the journal as JSON lines (each item's latest change)")
    _journal_options(dump)
    dump.add_argument("--all", action="store_true", help="every change, not only each item's latest")
    dump.add_argument("--out", type=Path, help="write here instead of standard output")
    dump.set_defaults(func=cmd_dump)
    compact = cmds.add_parser(
        "compact",
        help="drop changes a later change of the same item supersedes, and expired write ids",
        description="Keeps each item's latest change. A delete must stay while a bundle that holds "
        "the item may be served (replaying it removes the item from that bundle): with --artifacts, "
        "deletes of ids none of the given bundles holds are dropped too, so name every bundle you "
        "may serve or Reload.",
    )
    _journal_options(compact)
    compact.add_argument(
        "--artifacts",
        type=Path,
        nargs="+",
        metavar="FOLDER",
        help="the serving (or training) folders that may be served: deletes of ids none holds are dropped",
    )
    compact.set_defaults(func=cmd_compact)
