"""`towerserve catalog dump|compact`: read or compact a server's catalogue journal (store.py).

Both work while a server runs on the same --state-dir: SQLite's WAL lets readers and one writer
share the file, and compaction only drops changes a later change of the same item supersedes.
Only argparse at the top (see server/api/cli.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _open(state_dir: Path):
    from .store import JOURNAL_FILE, SQLiteStore

    if not (state_dir / JOURNAL_FILE).is_file():
        raise FileNotFoundError(f"{state_dir / JOURNAL_FILE}: no catalogue journal (is --state-dir right?)")
    return SQLiteStore(state_dir)


def cmd_dump(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from .store import latest

    store = _open(args.state_dir)
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
    store = _open(args.state_dir)
    try:
        before, after = store.compact()
    finally:
        store.close()
    print(f"compacted {store.path}: {before} -> {after} changes (each item's latest kept)")
    return 0


def register(sub) -> None:
    """Adds `catalog` (dump, compact) to the `towerserve` subcommands."""
    p = sub.add_parser(
        "catalog",
        help="inspect or compact the catalogue journal of `towerserve serve --state-dir`",
        description="The journal holds every acknowledged UpsertItems and DeleteItems; the server "
        "replays it at start and on every Reload. Safe to run while the server runs.",
    )
    cmds = p.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    dump = cmds.add_parser("dump", help="print the journal as JSON lines (each item's latest change)")
    dump.add_argument("--state-dir", type=Path, required=True, help="the server's --state-dir")
    dump.add_argument("--all", action="store_true", help="every change, not only each item's latest")
    dump.add_argument("--out", type=Path, help="write here instead of standard output")
    dump.set_defaults(func=cmd_dump)
    compact = cmds.add_parser("compact", help="drop changes a later change of the same item supersedes")
    compact.add_argument("--state-dir", type=Path, required=True, help="the server's --state-dir")
    compact.set_defaults(func=cmd_compact)
