"""The embedded journal fails clearly (server/catalog/store.py): a full disk and a read-only folder or file
each give an error naming the path and the cause, and nothing acknowledged is lost."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from pipeline import serve_process

from towerserve.clients.client import ItemData, RecommenderClient, TowerserveError
from towerserve.server.catalog.store import JOURNAL_FILE, SQLiteStore


def _item(k: int) -> ItemData:
    return ItemData(f"full-{k}", f"item {k} " + "words " * 300, "feature words", 1.0, "full")


def test_a_full_disk_refuses_writes_and_loses_nothing_acknowledged(serving, tmp_path):
    """The journal hits its file size limit (RLIMIT_FSIZE, as a full disk would): the write that does not
    fit gets RESOURCE_EXHAUSTED naming the journal, reads go on, and after a restart every write that
    got OK is served and the refused one is not."""
    state = tmp_path / "state"
    proc, target = serve_process(serving, "--state-dir", str(state))
    acknowledged: list[str] = []
    try:
        wal = state / (JOURNAL_FILE + "-wal")
        room = max(wal.stat().st_size if wal.exists() else 0, (state / JOURNAL_FILE).stat().st_size)
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (room + 96 * 1024, room + 96 * 1024))
        with RecommenderClient(target) as c:
            for k in range(200):
                try:
                    c.upsert_items([_item(k)])
                except TowerserveError as err:
                    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details
                    assert "no room" in err.details and str(state / JOURNAL_FILE) in err.details
                    refused = f"full-{k}"
                    break
                acknowledged.append(f"full-{k}")
            else:
                pytest.fail("200 writes of ~2 KB fitted under a 96 KiB file size limit")
            assert acknowledged, "the limit left no room for a single write"
            assert c.model_info().item_count > 0  # reads go on
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    proc, target = serve_process(serving, "--state-dir", str(state))
    try:
        with RecommenderClient(target) as c:
            from towerserve.server.engine.engine import Engine

            user = Engine(serving).user_ids[0]
            served = {i.item_id for i in c.recommend(user, top_n=500, categories=["full"]).items}
            assert served == set(acknowledged) and refused not in served
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        proc.stderr.close()


def _open_read_only(state: Path, read_only: Path) -> subprocess.CompletedProcess:
    """Opens the journal in ``state`` in a process that cannot write ``read_only`` (the folder or the
    journal file): mode bits for an unprivileged user, a read-only bind mount for root (root writes
    through any mode bits; a read-only file system stops it too)."""
    code = (
        "import sys\n"
        "from towerserve.server.catalog.store import JournalError, SQLiteStore\n"
        "try:\n"
        f"    SQLiteStore({str(state)!r})\n"
        "except JournalError as err:\n"
        "    print(type(err).__name__, err)\n"
        "    sys.exit(3)\n"
    )
    if os.geteuid() != 0:
        os.chmod(read_only, 0o555 if read_only.is_dir() else 0o444)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    mount = f"mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only} {read_only}"
    script = f'{mount} || exit 97; exec "$0" -c "$1"'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, sys.executable, code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == 97 or "unshare failed" in done.stderr:
        pytest.skip(f"root without a mount namespace (unshare/mount refused: {done.stderr.strip()[:200]})")
    return done


@pytest.mark.parametrize("what", ["folder", "file"])
def test_a_read_only_journal_is_refused_at_start_naming_the_path(tmp_path, what):
    """A read-only state folder, or a read-only journal file in a writable folder, is refused when the
    journal opens — not reported durable and then failing every write — with the path and the cause."""
    state = tmp_path / "state"
    SQLiteStore(state).close()
    journal = state / JOURNAL_FILE
    read_only = state if what == "folder" else journal
    try:
        refused = _open_read_only(state, read_only)
    finally:
        os.chmod(read_only, 0o755 if read_only.is_dir() else 0o644)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert refused.stdout.startswith("JournalReadOnly"), refused.stdout
    assert str(read_only) in refused.stdout and "cannot be" in refused.stdout, refused.stdout
    assert "Traceback" not in refused.stderr
