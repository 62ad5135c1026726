"""Rules of the test suite itself, checked by running pytest on planted tests: a worker thread that
dies on an exception fails its test (pyproject's filterwarnings), so no thread's failure is silent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLANTED = """
import threading

def test_a_thread_dies():
    t = threading.Thread(target=lambda: 1 / 0)
    t.start()
    t.join()
"""


def test_a_thread_that_dies_on_an_exception_fails_its_test(tmp_path):
    (tmp_path / "test_planted.py").write_text(PLANTED)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_planted.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout[-2000:]
    assert "ZeroDivisionError" in run.stdout and "1 failed" in run.stdout, run.stdout[-2000:]
