"""Runs one benchmark script at two git revisions, alternated round by round, and prints them side by side.

A refactoring or a new feature must not make serving slower, and this machine's speed swings by 2x
from one day to the next: only figures measured in one run, interleaved, are comparable. The old
revision is checked out into a worktree and installed (code only, no dependencies) into a folder
that goes first on PYTHONPATH, so both sides use the same interpreter, libraries and artifacts.

    .venv/bin/python benchmarks/compare_revisions.py --rev b6a4c83 --bench bench_server --rounds 3 -- --quick
    .venv/bin/python benchmarks/compare_revisions.py --rev b6a4c83 --bench bench_loadtest --rounds 2 -- \
        --quick --skip-workers
    .venv/bin/python benchmarks/compare_revisions.py --rev REV --bench bench_train --rounds 1 -- \
        --data data/seed

Arguments after ``--`` go to the benchmark script; ``--artifacts`` is added for both sides, except
for bench_train, which builds its own (its old side needs a revision whose `towerserve export`
works: de39ee7~1's fails on the typed manifest).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_ARTIFACTS, ROOT, child_env, table, write_result  # noqa: E402

# Which numbers each benchmark's JSON is judged by (regex over flattened keys).
DEFAULT_KEYS = {
    "bench_server": r"(recommend_in_process\.cases\.\d+\.(median|p99)_ms|grpc\..*(median|p99).*|load\.engine_s)$",
    "bench_loadtest": r"^concurrency\.\d+\.(health_qps|recommend_qps|qps_ratio|health_p99_ms|recommend_p99_ms|p99_ratio)$",
    "bench_train": r"^(steps_s\.(train|export)_s|phases_s\..*|ndcg@10\..*)$",
}
# bench_train builds its own artifacts from --data; the others read a trained artifacts folder.
NO_ARTIFACTS = {"bench_train"}


def _flatten(obj, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for j, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}{j}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)
    return out


def _labels(obj) -> dict[str, str]:
    """Human names for list entries that carry one ('case', 'concurrency', 'rpc', 'protocol')."""
    out: dict[str, str] = {}

    def walk(o, prefix: str) -> None:
        if isinstance(o, dict):
            for k, v in o.items():
                walk(v, f"{prefix}{k}.")
        elif isinstance(o, list):
            for j, v in enumerate(o):
                if isinstance(v, dict):
                    name = " ".join(str(v[k]) for k in ("case", "rpc", "concurrency", "protocol") if k in v)
                    if name:
                        out[f"{prefix}{j}"] = name
                walk(v, f"{prefix}{j}.")

    walk(obj, "")
    return out


def install_revision(rev: str, cache: Path) -> tuple[Path, Path]:
    """(worktree, site folder) for ``rev``, built once per commit."""
    sha = subprocess.run(["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True)
    sha = sha.stdout.strip()
    tree, site = cache / f"tree-{sha[:12]}", cache / f"site-{sha[:12]}"
    if not tree.is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=ROOT, check=True)
    if not site.is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
             "--target", str(site), str(tree)],
            check=True,
        )  # fmt: skip
    return tree, site


def revision_env(site: Path | None) -> dict[str, str]:
    """A child's environment: an older revision's code (``site``, from :func:`install_revision`)
    first on its path, or this checkout's alone."""
    env = child_env()
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    else:
        env.pop("PYTHONPATH", None)
    return env


def run_once(script: Path, site: Path | None, args: list[str]) -> dict:
    env = revision_env(site)
    proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    out = script.parent / "out" / f"{script.stem}.json"
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the older revision (commit, tag or branch)")
    parser.add_argument("--bench", default="bench_server", help="script name under benchmarks/ (no .py)")
    parser.add_argument("--rounds", type=int, default=3, help="old/new pairs, alternated (default 3)")
    parser.add_argument("--artifacts", type=Path, default=DEFAULT_ARTIFACTS)
    parser.add_argument("--keys", default=None, help="regex over flattened JSON keys to compare")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "towerserve-revisions")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    extra = [a for a in args.bench_args if a != "--"]
    if args.bench not in NO_ARTIFACTS:
        extra += ["--artifacts", str(args.artifacts.resolve())]
    keys = re.compile(args.keys or DEFAULT_KEYS.get(args.bench, r".*"))

    args.cache.mkdir(parents=True, exist_ok=True)
    tree, site = install_revision(args.rev, args.cache)
    sides = {
        "old": (tree / "benchmarks" / f"{args.bench}.py", site),
        "new": (ROOT / "benchmarks" / f"{args.bench}.py", None),
    }
    runs: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    labels: dict[str, str] = {}
    for r in range(args.rounds):
        for side in ("old", "new") if r % 2 == 0 else ("new", "old"):  # alternate who goes first
            script, path = sides[side]
            result = run_once(script, path, extra)
            labels.update(_labels(result))
            runs[side].append({k: v for k, v in _flatten(result).items() if keys.search(k)})
            print(f"round {r + 1} {side}: {len(runs[side][-1])} figures", flush=True)

    rows, summary = [], {}
    for key in sorted(set(runs["old"][0]) & set(runs["new"][0])):
        old = statistics.median(x[key] for x in runs["old"] if key in x)
        new = statistics.median(x[key] for x in runs["new"] if key in x)
        name = key
        for prefix, label in sorted(labels.items(), key=lambda kv: -len(kv[0])):
            if key.startswith(prefix + "."):
                name = f"{key[: len(prefix)]} [{label}]{key[len(prefix) :]}"
                break
        ratio = new / old if old else float("nan")
        rows.append([name, f"{old:.4g}", f"{new:.4g}", f"{ratio:.3f}"])
        summary[key] = {"old": old, "new": new, "new_over_old": ratio}
    print(
        f"\n{args.bench}: {args.rev} (old) vs working tree (new), median of {args.rounds} alternated rounds"
    )
    print(table(["figure", "old", "new", "new/old"], rows))
    path = write_result(f"compare_{args.bench}", {"rev": args.rev, "rounds": args.rounds, "figures": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
