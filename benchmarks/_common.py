"""Shared by the benchmark scripts: repo paths, a real `towerserve serve` subprocess, tables and JSON results."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "seed"
DEFAULT_ARTIFACTS = ROOT / "artifacts" / "seed"
OUT_DIR = ROOT / "benchmarks" / "out"
# The packaged MiniLM is found offline; nothing here may reach for the hub (as the Makefile says).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "USE_TF": "0"}
NOTE = "indicative only: a shared, noisy 2-core machine; compare ratios measured side by side in one run"


def towerserve_cmd() -> list[str]:
    """The `towerserve` console script of the interpreter running us (the venv's), else the repo's venv."""
    for candidate in (Path(sys.executable).parent / "towerserve", ROOT / ".venv" / "bin" / "towerserve"):
        if candidate.is_file():
            return [str(candidate)]
    return [sys.executable, "-m", "towerserve.clients.cli"]


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV, **extra}


def serving_dir(artifacts: Path) -> Path:
    """ARTIFACTS/serving, or ARTIFACTS itself when it already is a serving folder."""
    artifacts = Path(artifacts)
    if (artifacts / "serving" / "manifest.json").is_file():
        return artifacts / "serving"
    if (artifacts / "encoder").is_dir() and (artifacts / "manifest.json").is_file():
        return artifacts
    raise SystemExit(
        f"{artifacts}: no serving folder (expected {artifacts / 'serving' / 'manifest.json'}); "
        f"run `make artifacts` or pass --artifacts"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, the load-test harness's own rule (NaN for no samples)."""
    from towerserve.clients.loadtest import nearest_rank

    return nearest_rank(sorted(xs), q) if xs else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(name: str, payload: dict) -> Path:
    """benchmarks/out/<name>.json, with when and where it ran."""
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    doc = {
        "benchmark": name,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "note": NOTE,
        **payload,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=False, default=float) + "\n")
    return path


class ServerProcess:
    """`towerserve serve --artifacts SERVING --port P [extra]` as a child process; SIGTERM on exit.

    Its log goes to benchmarks/out/<tag>-server.log (a pipe nobody reads would fill and stall it).
    """

    def __init__(self, serving: Path, *extra: str, tag: str = "bench", port: int | None = None):
        self.port = port or free_port()
        self.target = f"localhost:{self.port}"
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = OUT_DIR / f"{tag}-server.log"
        self.cmd = [*towerserve_cmd(), "serve", "--artifacts", str(serving), "--port", str(self.port), *extra]
        self.workers = int(extra[extra.index("--workers") + 1]) if "--workers" in extra else 1
        self.proc: subprocess.Popen | None = None
        self.exit_code: int | None = None
        self.ready_seconds = float("nan")

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> None:
        t0 = time.perf_counter()
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop(), outlives this call
        self.proc = subprocess.Popen(
            self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT
        )
        try:
            self.wait_serving(timeout)
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = time.perf_counter() - t0

    def wait_serving(self, timeout: float) -> None:
        from towerserve.clients.client import RecommenderClient, RetryPolicy, TowerserveError

        deadline = time.monotonic() + timeout
        with RecommenderClient(self.target, timeout=2.0, retry=RetryPolicy(attempts=1)) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server exited with code {self.proc.returncode} before SERVING:\n{self.log_tail()}"
                    )
                try:
                    # With --workers N the port answers as soon as one worker is up; wait for all of
                    # them (each logs "worker i (pid p) SERVING"), or a generator's connection could
                    # land on one still loading and count UNAVAILABLE errors.
                    if client.health() == "SERVING" and self.log_text().count(") SERVING ") >= self.workers:
                        return
                except TowerserveError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server not SERVING within {timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.2)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:]) or "(empty log)"

    def status(self) -> dict[str, int]:
        """VmRSS / VmHWM of the server process in kB, from /proc/<pid>/status."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait; SIGKILL only if it does not drain in time. Returns the exit code."""
        if self.proc is None or self.exit_code is not None:
            return self.exit_code
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        self._log.close()
        return self.exit_code


_NUMERIC = re.compile(r"^[-+]?(\d[\d,]*\.?\d*|\.\d+|nan|inf)(e[-+]?\d+)?\s*(x|%|ms|s|MB|GB)?$", re.IGNORECASE)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Cells printed as given (format numbers before); columns of numbers are right-aligned."""
    cells = [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[c]) for r in cells]) for c, h in enumerate(headers)]
    right = [
        bool(cells) and all(_NUMERIC.match(r[c]) or r[c] in ("", "-") for r in cells)
        for c in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if right[c] else v.ljust(w) for c, (v, w) in enumerate(zip(values, widths))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])
