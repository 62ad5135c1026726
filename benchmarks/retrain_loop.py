"""The retrain loop end to end on seed-scale synthetic data: serve → record a day → retrain → judge → promote.

1. The served model: ARTIFACTS (make run's; trained here with the same recipe when missing) serves with
   a SQLite journal (``--state-dir``).
2. Day 1: every user makes Poisson(``--rate``) interactions drawn from the generator's own preference
   model (trainer/synth/stream.py), recorded through RecordInteractions.
3. The candidate: `towerserve train --events STATE` (the served recipe, day 1 merged in), exported.
4. Day 2: Poisson(``--rate-next``) more per user, recorded the same way: what neither model saw.
5. `promote` judges, on day 2: the candidate, and a damaged copy of it (its item vectors shuffled)
   against the serving model, which is judged as it serves (day 1 pooled into its users' vectors and
   left out of their rankings). The damaged copy must be refused and the candidate accepted; the
   candidate is then promoted for real and the server checked to serve it.

Prints the table, writes benchmarks/out/retrain_loop.json and benchmarks/figures/retrain_loop.png.

    python benchmarks/retrain_loop.py [--data data/seed] [--artifacts artifacts/seed] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # pipeline.shuffled_copy
import pipeline  # noqa: E402
from _common import (  # noqa: E402
    DEFAULT_ARTIFACTS,
    DEFAULT_DATA,
    NOTE,
    OUT_DIR,
    ROOT,
    ServerProcess,
    child_env,
    machine,
    table,
    towerserve_cmd,
    write_result,
)

# The served recipe (make run's): the hybrid's defaults on the holdout split.
RECIPE = ("--model", "hybrid", "--no-cold", "--no-search")
DAY0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the simulated days' clock (any fixed time would do)
BATCH = 1000  # events per RecordInteractions (its limit)


def _run(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([*towerserve_cmd(), *args], check=True, env=child_env(), cwd=ROOT)
    return time.perf_counter() - t0


def _trained(data: Path, out: Path, *extra: str) -> dict[str, float]:
    """Trains and exports the served recipe into ``out`` unless it is there; seconds per step."""
    times = {}
    if not (out / "manifest.json").exists():
        times["train_s"] = _run("train", "--data", str(data), "--out", str(out), *RECIPE, *extra)
    if not (out / "serving" / "manifest.json").exists():
        times["export_s"] = _run("export", "--artifacts", str(out))
    return times


def _record(client, user_ids, item_ids, u, i, at, day: int) -> int:
    from towerserve.clients.client import Interaction

    events = [
        Interaction(user_ids[a], item_ids[b], timestamp=float(t), kind="purchase", event_id=f"d{day}-{n}")
        for n, (a, b, t) in enumerate(zip(u, i, at))
    ]
    recorded = 0
    for s in range(0, len(events), BATCH):
        recorded += client.record_interactions(events[s : s + BATCH]).recorded
    return recorded


def _time_split(metrics_json: Path) -> dict[str, dict[str, float]]:
    """The candidate's own time split (each user's latest day-1 event held out of its training), per
    model trained: ``train --events`` writes it beside the random split's metrics."""
    holdout = json.loads(metrics_json.read_text()).get("holdout", {})
    return {
        m: {k: v for k, v in r.items() if k.startswith("time_")}
        for m, r in holdout.items()
        if isinstance(r, dict)
    }


def _plot(rows: list[tuple[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("ndcg@10", "recall@10")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(rows)
    for k, (name, m) in enumerate(rows):
        xs = np.arange(len(metrics)) + (k - (len(rows) - 1) / 2) * width
        bars = ax.bar(xs, [m.get(x, 0.0) for x in metrics], width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(np.arange(len(metrics)), metrics)
    ax.set_ylabel("on day 2 (never trained on)")
    ax.set_title("Retrain loop, seed-scale synthetic data: judged by `towerserve promote`")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument(
        "--artifacts", type=Path, default=DEFAULT_ARTIFACTS, help="the served model (trained if missing)"
    )
    p.add_argument("--work", type=Path, default=OUT_DIR / "retrain-loop")
    p.add_argument("--rate", type=float, default=3.0, help="day 1: mean events per user (default 3)")
    p.add_argument("--rate-next", type=float, default=1.0, help="day 2: mean events per user (default 1)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()

    from towerserve.clients.client import RecommenderClient
    from towerserve.clients.promote import promote
    from towerserve.server.core.csr import CSR
    from towerserve.trainer.data import load_dataset
    from towerserve.trainer.synth.stream import DAY_SECONDS, next_day

    if not (args.data / "users.csv").exists():
        _run("generate", "--out", str(args.data), "--users", "10000", "--items", "1000", "--seed", "42")
    times = _trained(args.data, args.artifacts)
    shutil.rmtree(args.work, ignore_errors=True)
    state = args.work / "state"
    ds = load_dataset(args.data)
    user_ids = list(ds.users["user_id"])
    item_ids = list(ds.items["item_id"])

    with (
        ServerProcess(
            args.artifacts / "serving",
            "--state-dir",
            str(state),
            "--bundle-root",
            str(args.work.parent),
            tag="retrain",
        ) as server,
        RecommenderClient(server.target, timeout=120) as client,
    ):
        served_version = client.model_info().model_version
        u1, i1, at1 = next_day(args.data, ds.positives, args.rate, DAY0, args.seed)
        day1 = _record(client, user_ids, item_ids, u1, i1, at1, 1)
        print(f"day 1: recorded {day1} events for {len(np.unique(u1))} users", flush=True)
        cand = args.work / "candidate"
        times |= {f"candidate_{k}": v for k, v in _trained(args.data, cand, "--events", str(state)).items()}
        seen = CSR.from_pairs(u1, i1, ds.n_users, ds.n_items)
        u2, i2, at2 = next_day(
            args.data, ds.positives, args.rate_next, DAY0 + DAY_SECONDS, args.seed + 1, seen
        )
        day2 = _record(client, user_ids, item_ids, u2, i2, at2, 2)
        print(f"day 2: recorded {day2} events for {len(np.unique(u2))} users", flush=True)

        damaged_copy = pipeline.shuffled_copy(cand / "serving", args.work / "damaged")
        damaged = promote(damaged_copy, client, str(state), dry_run=True)
        accepted = promote(cand / "serving", client, str(state))
        serving_now = client.model_info().model_version

    c, s, d = accepted.candidate, accepted.serving, damaged.candidate
    rows = [("serving (day 1 live)", s), ("candidate (day 1 trained)", c), ("damaged candidate", d)]
    print(
        table(
            ["model", "ndcg@10", "recall@10", "vs serving"],
            [
                [n, f"{m['ndcg@10']:.4f}", f"{m['recall@10']:.4f}", f"{m['ndcg@10'] / s['ndcg@10']:.3f}x"]
                for n, m in rows
            ],
        )
    )
    print(f"candidate: {accepted.reason} -> {'promoted' if accepted.promoted else 'refused'}")
    print(f"damaged:   {damaged.reason} -> {'refused' if not damaged.promoted else 'promoted'}")
    ok = (
        accepted.promoted
        and serving_now == accepted.candidate_version != served_version
        and not damaged.promoted
        and "<" in damaged.reason
        and c["ndcg@10"] > s["ndcg@10"]
    )
    figure = ROOT / "benchmarks" / "figures" / "retrain_loop.png"
    _plot(rows, figure)
    out = write_result(
        "retrain_loop",
        {
            "note": NOTE,
            "machine": machine(),
            "events": {"day1": day1, "day2": day2, "rate": args.rate, "rate_next": args.rate_next},
            "judged_pairs": accepted.pairs,
            "serving": s,
            "candidate": c,
            "damaged": d,
            "candidate_vs_serving_ndcg10": c["ndcg@10"] / s["ndcg@10"],
            "accepted": accepted.to_json(),
            "refused": damaged.to_json(),
            "candidate_time_split": _time_split(cand / "metrics.json"),
            "seconds": times,
            "ok": ok,
        },
    )
    print(f"wrote {out} and {figure}; {'OK' if ok else 'GOAL NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
