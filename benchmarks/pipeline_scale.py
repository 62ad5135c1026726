"""The whole pipeline at scale, one step after another, each step's wall time and peak RSS:
`.venv/bin/python benchmarks/pipeline_scale.py --work /tmp/p1m` (1,000,000 users x 1,000,000 items).

Steps, each a real `towerserve` command run as a child process (its log in WORK/logs/STEP.log):

1. generate       `generate --long` (pooled sampling above 2*10^9 cells: trainer/synth/pooled.py)
2. export-encoder the int8 ONNX encoder before training, with its parity gate
3. train          `train --model two_tower --text-encoder` (texts embedded through ONNX Runtime),
                  on --train-rows rows of the seeded shuffle, judged on --eval-users sampled users
4. export         towers, item vectors, the index chosen by size and its recall gate
5. serve          `serve` until SERVING, then a known user's Recommend, an unseen user's, and a
                  single-item UpsertItems with new texts, each timed at the client

Peak RSS is the child's own (``wait4``'s ru_maxrss; /proc VmHWM for the server). Goals (issue 11):
the whole pipeline <= 60 min, every step <= 16 GB. A step whose output exists is skipped unless
--force names it, so a failed step can be rerun alone; skipped steps keep the figures of the run
that made them (WORK/pipeline.json). Writes benchmarks/out/pipeline_scale.json and a PNG.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT_DIR, ServerProcess, child_env, table, towerserve_cmd, write_result  # noqa: E402

GOAL_TOTAL_S = 60 * 60
GOAL_RSS_GB = 16.0
STEPS = ("generate", "export-encoder", "train", "export", "serve")


def run_step(name: str, args: list[str], log: Path) -> dict:
    """`towerserve ARGS` as a child: wall seconds and the child's peak RSS. Raises on failure."""
    cmd = [*towerserve_cmd(), *args]
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env())
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in kB)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(
            f"{name} failed with exit code {proc.returncode} after {seconds:.0f} s; log {log}:\n{tail}"
        )
    row = {
        "step": name,
        "seconds": seconds,
        "peak_rss_gb": usage.ru_maxrss / 2**20,
        "command": " ".join(args),
    }
    print(f"  {name}: {seconds:.0f} s, peak RSS {row['peak_rss_gb']:.2f} GB", file=sys.stderr, flush=True)
    return row


def serve_step(serving: Path, data: Path, log_dir: Path) -> dict:
    """Starts `serve`, times SERVING, then one call of each kind at the client; the server's RSS."""
    from towerserve.clients.client import ItemData, RecommenderClient, User

    with open(data / "users.csv", newline="", encoding="utf-8") as fh:
        user = next(csv.DictReader(fh))
    with open(data / "items.csv", newline="", encoding="utf-8") as fh:
        item = next(csv.DictReader(fh))  # a real category; the texts below are new to the encoder
    server = ServerProcess(serving, tag="pipeline_scale")
    server.start(timeout=1800)
    calls = {}
    try:
        with RecommenderClient(server.target, timeout=30) as client:

            def timed(name, fn):
                fn()  # first call of its kind outside the timing (lazy sessions, caches)
                t0 = time.perf_counter()
                fn()
                calls[name] = (time.perf_counter() - t0) * 1e3

            timed("recommend_known_ms", lambda: client.recommend(user["user_id"], top_n=10))
            attrs = User(
                age=float(user["age"]), profession=user["profession"], personality=user["personality"]
            )
            timed("recommend_unseen_ms", lambda: client.recommend(user=attrs, top_n=10))
            n = iter(range(10**6))
            timed(
                "upsert_new_texts_ms",
                lambda: client.upsert_items(
                    [
                        ItemData(
                            item_id=f"pipeline-new-{(j := next(n))}",
                            description=f"{item['description']} (new batch {j})",
                            features=f"{item['features']}, batch {j}",
                            price=float(item["price"]),
                            category=item["category"],
                        )
                    ]
                ),
            )
        status = server.status()
    finally:
        server.stop()
    (log_dir / "serve.log").write_text(server.log_text())
    return {
        "step": "serve",
        "seconds": server.ready_seconds,
        "peak_rss_gb": status["VmHWM"] / 2**20,
        "rss_serving_gb": status["VmRSS"] / 2**20,
        "command": f"serve --artifacts {serving}",
        **calls,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for data, encoder, artifacts and logs")
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--density", type=float, default=2e-5, help="default 2e-5: ~20 positives per user")
    ap.add_argument("--train-rows", type=int, default=4_000_000, help="rows of the seeded shuffle trained on")
    ap.add_argument("--eval-users", type=int, default=2_000, help="sampled users judged per split")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--force", nargs="*", default=[], choices=STEPS, help="rerun these steps")
    ap.add_argument("--only", nargs="*", choices=STEPS, help="run only these steps (others must exist)")
    args = ap.parse_args()

    work = args.work.resolve()
    data, encoder, artifacts = work / "data", work / "encoder", work / "artifacts"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    record_path = work / "pipeline.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    commands = {
        "generate": (
            data / "users.csv",
            ["generate", "--long", "--users", str(args.users), "--items", str(args.items)]
            + ["--density", str(args.density), "--out", str(data)],
        ),
        "export-encoder": (
            encoder / "encoder.json",
            ["export-encoder", "--out", str(encoder), "--data", str(data)],
        ),
        "train": (
            artifacts / "manifest.json",
            ["train", "--data", str(data), "--out", str(artifacts), "--model", "two_tower"]
            + ["--text-encoder", str(encoder), "--train-rows", str(args.train_rows)]
            + ["--eval-users", str(args.eval_users), "--epochs", str(args.epochs)]
            # A cache of its own: a warm shared cache would skip the embedding this step measures.
            + ["--cache-dir", str(work / "embedding-cache")],
        ),
        "export": (artifacts / "serving" / "manifest.json", ["export", "--artifacts", str(artifacts)]),
    }
    for step in STEPS:
        if args.only and step not in args.only:
            continue
        if step == "serve":
            record[step] = serve_step(artifacts / "serving", data, logs)
        else:
            done, cmd = commands[step]
            if done.exists() and step not in args.force and step in record:
                print(f"  {step}: exists, skipped (figures from the run that made it)", file=sys.stderr)
                continue
            record[step] = run_step(step, cmd, logs / f"{step}.log")
        record_path.write_text(json.dumps(record, indent=2) + "\n")

    rows = [record[s] for s in STEPS if s in record]
    total = sum(r["seconds"] for r in rows)
    peak = max((r["peak_rss_gb"] for r in rows), default=float("nan"))
    print(f"\n{args.users:,} users x {args.items:,} items, density {args.density:g}")
    print(
        table(
            ["step", "wall", "peak RSS"],
            [[r["step"], _wall(r["seconds"]), f"{r['peak_rss_gb']:.2f} GB"] for r in rows]
            + [["total", _wall(total), f"{peak:.2f} GB"]],
        )
    )
    serve = record.get("serve", {})
    for key in ("recommend_known_ms", "recommend_unseen_ms", "upsert_new_texts_ms", "rss_serving_gb"):
        if key in serve:
            print(f"serve: {key} {serve[key]:.2f}")
    ok = total <= GOAL_TOTAL_S and peak <= GOAL_RSS_GB
    print(f"goals: whole pipeline <= 60 min and peak RSS <= 16 GB: {'met' if ok else 'NOT met'}")
    write_result(
        "pipeline_scale", {"users": args.users, "items": args.items, "steps": rows, "total_s": total}
    )
    _plot(rows, OUT_DIR / "pipeline_scale.png", f"{args.users:,} users x {args.items:,} items")
    return 0


def _wall(seconds: float) -> str:
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)"


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = [r["step"] for r in rows]
    a.barh(names, [r["seconds"] / 60 for r in rows], color="#4c72b0")
    a.set_xlabel("minutes")
    a.invert_yaxis()
    b.barh(names, [r["peak_rss_gb"] for r in rows], color="#dd8452")
    b.axvline(GOAL_RSS_GB, color="k", ls="--", lw=1, label="16 GB goal")
    b.set_xlabel("peak RSS (GB)")
    b.invert_yaxis()
    b.legend(loc="lower right")
    fig.suptitle(f"pipeline at scale: {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    raise SystemExit(main())
