"""How long a server takes to load a bundle (the part of `towerserve serve` before SERVING that grows
with the bundle), this revision against an older one, alternated round by round.

Each load runs in a fresh process (`Engine(bundle)`: manifest and hashes, towers, encoder, users.csv
and items.csv, the recorded splits and the seen set, the index, the catalogue) and reports its wall
time and peak RSS (VmHWM). With ``--rev`` the same measurement runs with that revision's code
(installed as benchmarks/compare_revisions.py does) on the same bundle, so the two sides are
side by side in one run. A bundle at scale comes from benchmarks/scale_bundle.py:

    python benchmarks/scale_bundle.py --src artifacts/seed-tt/serving --out /tmp/b1m --users 1000000 \
        --items 1000000
    python benchmarks/bench_start.py --artifacts /tmp/b1m --model two_tower --rev fa2e3d6 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import NOTE, serving_dir, table, write_result  # noqa: E402
from compare_revisions import install_revision, revision_env  # noqa: E402

# The child: one load, one JSON line on stdout.
CHILD = """
import json, sys, time
t0 = time.perf_counter()
from towerserve.server.core.config import EngineConfig
from towerserve.server.engine.engine import Engine
t1 = time.perf_counter()
engine = Engine(sys.argv[1], EngineConfig(model=sys.argv[2] or None))
t2 = time.perf_counter()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"load_s": t2 - t1, "imports_s": t1 - t0, "peak_rss_gb": hwm / 1e6,
                  "users": len(engine.user_ids), "items": len(engine.catalog)}))
"""


def load_once(bundle: Path, model: str, site: Path | None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle), model],
        env=revision_env(site),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"load failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, required=True, help="a serving folder (or ARTIFACTS)")
    ap.add_argument("--model", default="", help="the model to load (default: the bundle's)")
    ap.add_argument("--rev", default=None, help="an older revision to load side by side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "towerserve-revisions")
    args = ap.parse_args()
    bundle = serving_dir(args.artifacts)
    sides: dict[str, Path | None] = {"this revision": None}
    if args.rev:
        args.cache.mkdir(parents=True, exist_ok=True)
        sides = {args.rev: install_revision(args.rev, args.cache)[1], **sides}
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # alternate who goes first
        for side in order:
            runs[side].append(load_once(bundle, args.model, sides[side]))
            print(f"round {r + 1} {side}: {runs[side][-1]['load_s']:.1f} s", flush=True)
    summary = {
        side: {
            "load_s": statistics.median(x["load_s"] for x in got),
            "peak_rss_gb": max(x["peak_rss_gb"] for x in got),
            "users": got[0]["users"],
            "items": got[0]["items"],
        }
        for side, got in runs.items()
    }
    base = summary[list(sides)[0]]["load_s"]
    rows = [
        (side, f"{s['users']:,} x {s['items']:,}", f"{s['load_s']:.1f}", f"{s['peak_rss_gb']:.2f}",
         f"{s['load_s'] / base:.2f}")
        for side, s in summary.items()
    ]  # fmt: skip
    print(table(["code", "users x items", "load s (median)", "peak RSS GB", "vs first"], rows))
    print(NOTE)
    write_result("bench_start", {"bundle": str(bundle), "rounds": args.rounds, "sides": summary})


if __name__ == "__main__":
    main()
