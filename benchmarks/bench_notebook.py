"""The notebook's way (Keras model.predict per user / per pair) vs the server, same seed model, same machine: `.venv/bin/python benchmarks/bench_notebook.py` (~30 s; --quick for a smoke run).

Notebook side: the trained Keras ``seed`` model (ARTIFACTS/models/seed/holdout/model.keras) on the
feature matrices training built (embeddings.npz tables + manifest feature specs + raw age/price).
(a) ``recommend_for_user``: one ``model.predict`` over [the user's vector tiled, every unseen item],
then argsort; (b) ``evaluate_holdout_one_per_user``: one ``model.predict`` on a (1, .) pair per user
(``get_score``), timed on --pairs users and extrapolated to every user with a holdout pair.
Server side: `towerserve serve --model seed` over gRPC, Recommend for the same users and one
Evaluate (protocol notebook) over all users; Score on the same pairs checks both give the same mean.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_ARTIFACTS,
    OFFLINE_ENV,
    ServerProcess,
    median,
    pct,
    serving_dir,
    table,
    verdict,
    write_result,
)

os.environ.update(OFFLINE_ENV)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

TOP_N = 10
NOTEBOOK_COLAB = "the notebook evaluated 10,000 users in 19 min 20 s on Colab (context only, another machine)"
TARGET_EVAL_SPEEDUP = 1000.0
MEAN_TOLERANCE = 1e-3


def feature_matrices(artifacts: Path, kind: str = "seed") -> tuple[np.ndarray, np.ndarray]:
    """(U [n_users, du], I [n_items, di]) exactly as training built them for ``kind``'s holdout model."""
    import pandas as pd

    from towerserve.server.core.features import FieldSpec, feature_matrix, load_tables

    manifest = json.loads((artifacts / "manifest.json").read_text())
    feats = manifest["models"][kind]["splits"]["holdout"]["features"]
    tables = load_tables(artifacts / "embeddings.npz")
    raw = {
        "age": pd.read_csv(artifacts / "users.csv")["age"].to_numpy(np.float64),
        "price": pd.read_csv(artifacts / "items.csv")["price"].to_numpy(np.float64),
    }

    def build(side: str) -> np.ndarray:
        return feature_matrix([FieldSpec.from_json(d) for d in feats[side]], tables, raw)

    return build("user"), build("item")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        help=f"training artifacts with models/seed and serving/ (default {DEFAULT_ARTIFACTS})",
    )
    parser.add_argument(
        "--users", type=int, default=20, help="users for the Recommend comparison (default 20)"
    )
    parser.add_argument(
        "--pairs", type=int, default=200, help="holdout pairs scored one by one (default 200)"
    )
    parser.add_argument("--quick", action="store_true", help="5 users, 40 pairs")
    args = parser.parse_args()
    if args.quick:
        args.users, args.pairs = 5, 40

    import grpc

    from towerserve.clients.loadtest import read_ids
    from towerserve.server.core.splits import load_recorded_split
    from towerserve.v1 import recommender_pb2 as pb
    from towerserve.v1 import recommender_pb2_grpc

    serving = serving_dir(args.artifacts)
    model_path = args.artifacts / "models" / "seed" / "holdout" / "model.keras"
    if not model_path.is_file():
        raise SystemExit(f"{model_path}: missing (train with --model all or --model seed)")
    U, I = feature_matrices(args.artifacts)
    user_ids, item_ids = (
        read_ids(serving / "catalog" / "users.csv"),
        read_ids(serving / "catalog" / "items.csv", "item_id"),
    )
    item_row = {x: j for j, x in enumerate(item_ids)}
    split = load_recorded_split(serving / "splits" / "holdout.npz")
    seen = split.train.union(split.test)  # what the server's exclude_seen drops
    nb_users, nb_items = split.notebook_users, split.notebook_items
    rng = np.random.default_rng(0)
    rec_users = [int(u) for u in rng.choice(len(user_ids), size=args.users, replace=False)]
    pairs = list(zip(nb_users[: args.pairs].tolist(), nb_items[: args.pairs].tolist()))

    t0 = time.perf_counter()
    import keras

    model = keras.saving.load_model(model_path)
    keras_load_s = time.perf_counter() - t0
    print(
        f"Keras {keras.__version__}: loaded {model_path} in {keras_load_s:.1f} s (TensorFlow import included); "
        f"U {U.shape}, I {I.shape}"
    )

    # ---------------------------------------------------------------- the notebook's way
    def recommend_for_user(u: int) -> list[int]:
        cand = np.setdiff1d(np.arange(len(I)), seen.row(u))
        scores = model.predict([np.tile(U[u], (len(cand), 1)), I[cand]], verbose=0).reshape(-1)
        return cand[np.argsort(-scores, kind="stable")[:TOP_N]].tolist()

    def get_score(u: int, i: int) -> float:
        return float(model.predict([U[u : u + 1], I[i : i + 1]], verbose=0)[0][0])

    recommend_for_user(rec_users[0])  # warm-up: predict traces its function once
    get_score(*pairs[0])
    nb_rec_s, nb_top = [], {}
    for u in rec_users:
        t0 = time.perf_counter()
        nb_top[u] = recommend_for_user(u)
        nb_rec_s.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    nb_scores = np.array([get_score(u, i) for u, i in pairs])
    nb_eval_s = time.perf_counter() - t0
    per_pair_s = nb_eval_s / len(pairs)
    print(
        f"notebook: recommend_for_user median {median(nb_rec_s) * 1e3:.1f} ms/user over {len(rec_users)} users; "
        f"get_score {per_pair_s * 1e3:.1f} ms/pair over {len(pairs)} pairs",
        file=sys.stderr,
    )

    # ---------------------------------------------------------------- the server
    server = ServerProcess(serving, "--model", "seed", tag="bench_notebook")
    try:
        server.start()
        with grpc.insecure_channel(server.target) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            for j in range(50):  # warm-up: connection, first calls
                stub.Recommend(
                    pb.RecommendRequest(user_id=user_ids[j % len(user_ids)], top_n=TOP_N), timeout=10
                )
            srv_wall, srv_compute, srv_top = [], [], {}
            for _ in range(10):  # the same users, 10 times each: a stable median of a sub-ms call
                for u in rec_users:
                    t0 = time.perf_counter()
                    resp, call = stub.Recommend.with_call(
                        pb.RecommendRequest(user_id=user_ids[u], top_n=TOP_N), timeout=10
                    )
                    srv_wall.append(time.perf_counter() - t0)
                    timing = dict(call.trailing_metadata() or ()).get("server-timing", "")
                    srv_compute.append(float(timing.split("dur=")[1].split(",")[0]) / 1e3)
                    srv_top[u] = [item_row[x.item_id] for x in resp.items]
                    model_version = resp.model_version
            ev_wall, ev_server, ev_users = [], [], 0
            for _ in range(3):
                t0 = time.perf_counter()
                ev = stub.Evaluate(
                    pb.EvaluateRequest(split=pb.SPLIT_HOLDOUT, protocol=pb.PROTOCOL_NOTEBOOK), timeout=60
                )
                ev_wall.append(time.perf_counter() - t0)
                ev_server.append(ev.seconds)
                ev_users = ev.users
            score = stub.Score(
                pb.ScoreRequest(
                    pairs=[pb.ScorePair(user_id=user_ids[u], item_id=item_ids[i]) for u, i in pairs]
                ),
                timeout=30,
            )
    finally:
        rc = server.stop()
    srv_scores = np.array(score.scores, dtype=np.float64)

    # ---------------------------------------------------------------- report
    rec_speedup = median(nb_rec_s) / median(srv_wall)
    same_top = sum(nb_top[u] == srv_top[u] for u in rec_users)
    overlap = np.mean([len(set(nb_top[u]) & set(srv_top[u])) / TOP_N for u in rec_users])
    print(f"\n(a) Recommend top-{TOP_N}, {len(rec_users)} users, seed model ({model_version})")
    print(
        table(
            ["way", "median ms", "p99 ms", "speed-up"],
            [
                [
                    "notebook: model.predict over unseen items + argsort",
                    f"{median(nb_rec_s) * 1e3:.2f}",
                    f"{pct(nb_rec_s, 0.99) * 1e3:.2f}",
                    "1.0x",
                ],
                [
                    "server: Recommend over gRPC (client wall)",
                    f"{median(srv_wall) * 1e3:.3f}",
                    f"{pct(srv_wall, 0.99) * 1e3:.3f}",
                    f"{rec_speedup:.0f}x",
                ],
                [
                    "server: of which compute (server-timing)",
                    f"{median(srv_compute) * 1e3:.4f}",
                    f"{pct(srv_compute, 0.99) * 1e3:.4f}",
                    f"{median(nb_rec_s) / median(srv_compute):.0f}x",
                ],
            ],
        )
    )
    print(
        f"same top-{TOP_N} list for {same_top}/{len(rec_users)} users; mean overlap {overlap:.3f} "
        "(float32 Keras vs the exported towers can swap near-ties)"
    )

    n_eval = ev_users
    extrapolated = per_pair_s * n_eval
    ev_s = median(ev_wall)
    eval_speedup = extrapolated / ev_s
    ok_speed = eval_speedup >= TARGET_EVAL_SPEEDUP
    nb_mean, srv_mean = float(nb_scores.mean()), float(srv_scores.mean())
    ok_mean = abs(nb_mean - srv_mean) <= MEAN_TOLERANCE
    print("\n(b) Evaluate, notebook protocol (mean score of one holdout positive per user)")
    print(
        table(
            ["way", "users", "seconds", "speed-up"],
            [
                [
                    f"notebook: get_score per pair ({per_pair_s * 1e3:.1f} ms x {n_eval}, from {len(pairs)} timed)",
                    n_eval,
                    f"{extrapolated:.1f}",
                    "1x",
                ],
                [
                    "server: Evaluate RPC over gRPC (wall, median of 3)",
                    n_eval,
                    f"{ev_s:.4f}",
                    f"{eval_speedup:,.0f}x",
                ],
                [
                    "server: of which Evaluate's own seconds field",
                    n_eval,
                    f"{median(ev_server):.4f}",
                    f"{extrapolated / median(ev_server):,.0f}x",
                ],
            ],
        )
    )
    print(
        f"context: {NOTEBOOK_COLAB} = {1160 / 10_000 * 1e3:.0f} ms/pair there vs {per_pair_s * 1e3:.1f} ms/pair here"
    )
    print(f"speed-up {eval_speedup:,.0f}x; target >= {TARGET_EVAL_SPEEDUP:,.0f}x: {verdict(ok_speed)}")
    print(
        f"mean score on the {len(pairs)} pairs: notebook {nb_mean:.6f}, server Score {srv_mean:.6f}, "
        f"|diff| {abs(nb_mean - srv_mean):.2e} (max per pair {np.abs(nb_scores - srv_scores).max():.2e}); "
        f"within {MEAN_TOLERANCE:g}: {verdict(ok_mean)}"
    )
    print(f"server exit code after SIGTERM: {rc}")
    path = write_result(
        "bench_notebook",
        {
            "artifacts": str(args.artifacts),
            "model_version": model_version,
            "keras_load_s": keras_load_s,
            "recommend": {
                "users": len(rec_users),
                "notebook_ms": [x * 1e3 for x in nb_rec_s],
                "notebook_median_ms": median(nb_rec_s) * 1e3,
                "server_wall_median_ms": median(srv_wall) * 1e3,
                "server_wall_p99_ms": pct(srv_wall, 0.99) * 1e3,
                "server_compute_median_ms": median(srv_compute) * 1e3,
                "speedup_wall": rec_speedup,
                "same_top_lists": int(same_top),
                "mean_overlap": float(overlap),
            },
            "evaluate": {
                "pairs_timed": len(pairs),
                "notebook_per_pair_ms": per_pair_s * 1e3,
                "users": n_eval,
                "notebook_extrapolated_s": extrapolated,
                "server_wall_s": ev_wall,
                "server_wall_median_s": ev_s,
                "server_seconds_field": ev_server,
                "speedup": eval_speedup,
                "target_speedup": TARGET_EVAL_SPEEDUP,
                "pass": ok_speed,
                "context": NOTEBOOK_COLAB,
            },
            "mean_score": {
                "notebook": nb_mean,
                "server": srv_mean,
                "abs_diff": abs(nb_mean - srv_mean),
                "max_pair_diff": float(np.abs(nb_scores - srv_scores).max()),
                "tolerance": MEAN_TOLERANCE,
                "pass": ok_mean,
            },
            "server_exit_code": rc,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
