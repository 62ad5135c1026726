"""A real, throwaway PostgreSQL server for the tests: initdb in a temporary folder, started on a free
loopback port, stopped and removed afterwards.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user (Debian's
package creates it) through ``runuser``; as anyone else it runs as that user. The binaries come from
Debian's ``postgresql`` package (``.ci/run`` installs it where it is missing).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a connection URL (``postgresql://postgres@127.0.0.1:PORT/postgres``, trust auth on loopback)."""
    bin_dir = pg_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    user = "postgres" if as_root else os.environ.get("USER", "postgres")
    root = Path(tempfile.mkdtemp(prefix="towerserve-pg-"))
    data = root / "data"
    if as_root:
        shutil.chown(root, "postgres", "postgres")
    os.chmod(root, 0o755)
    port = _free_port()

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=120)

    run(str(bin_dir / "initdb"), "-D", str(data), "-U", user, "-A", "trust", "-E", "UTF8", "--no-sync")
    # fsync stays on (the default): the durability tests rely on commits reaching the disk.
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c max_connections=50"
    run(
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "log"),
        "-o",
        opts,
        "-w",
        "-t",
        "60",
        "start",
    )
    try:
        url = f"postgresql://{user}@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        ready = [str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
        while subprocess.run(ready).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError((root / "log").read_text()[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


_databases = iter(range(1, 1_000_000))


def fresh_database(url: str) -> str:
    """A new, empty database on the server at ``url``: its URL (each test gets its own journal)."""
    import psycopg

    name = f"towerserve_test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name
