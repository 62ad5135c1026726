"""The soak's fast version: benchmarks/soak.py for a few seconds in the suite (the full minute is a
script, docs/reliability.md): 64 concurrent callers of mixed RPCs, upserts and deletes through a
journal included, against a real `towerserve serve`; no call may fail, the server must live, and
every id written reads back as its last acknowledged write left it, live and after a restart."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_soak_has_no_errors(serving, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "soak.py"), "--artifacts", str(serving)]
    cmd += ["--seconds", "8", "--warmup", "2", "--callers", "64", "--state-dir", str(tmp_path / "state")]
    # RSS over 8 s mostly shows caches and the journal filling; the minute-long script holds the 5 %.
    cmd += ["--max-rss-growth", "0.5"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "errors: 0" in out and "PASS" in out, out[-3000:]
    # Every id written is read back as its last acknowledged write left it, live and after a restart.
    read = re.search(r"read back: (\d+) written ids, (\d+) wrong live, (\d+) wrong after a restart", out)
    assert read and int(read[1]) > 50 and read[2] == read[3] == "0", out[-3000:]
    for rpc in ("UpsertItems", "DeleteItems", "Recommend(unseen)", "Evaluate", "Health.Check"):
        assert f"\n{rpc} " in out, (rpc, out[-3000:])
