"""The `towerserve` command: a thin argparse layer over typed functions, heavy imports made lazily."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .tables import metrics_table

SUMMARY_METRICS = ("ndcg@10", "recall@10", "hitrate@10", "map@10", "mrr", "auc", "coverage@10")


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 5,10,20 (got {text!r})"
        ) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"every k must be >= 1 (got {text!r})")
    return ks


# ---------------------------------------------------------------------------------------------- data


def cmd_generate(args: argparse.Namespace) -> int:
    from towerserve.trainer import synth

    summary = synth.generate(
        args.out, args.users, args.items, args.seed, args.density, args.long, progress=not args.quiet
    )
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(
            f"wrote {args.out}: {summary['users']} users x {summary['items']} items, "
            f"{summary['positives']} positives ({100 * summary['density']:.2f} %), {summary['form']} form"
        )
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from towerserve.trainer import baselines, splits
    from towerserve.trainer.data import load_dataset

    ds = load_dataset(args.data)
    ids = ds.users["user_id"].to_numpy()
    split = (
        splits.holdout_split(ds.positives, ids, seed=args.seed)
        if args.split == "holdout"
        else splits.cold_split(ds.positives, ids, seed=args.seed)
    )
    results = baselines.evaluate_baselines(split.train, split.test, args.data, args.ks)
    if args.plot:
        from towerserve.trainer.plots import metric_bars

        metric_bars(
            results,
            ["ndcg@10", "recall@10", "hitrate@10", "mrr"],
            args.plot,
            title=f"baselines on {Path(args.data).name} ({args.split} split)",
        )
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return 0
    print(
        f"{args.split} split of {args.data}: {ds.n_users} users x {ds.n_items} items, "
        f"{split.train.nnz} train / {split.test.nnz} test positives"
    )
    print(metrics_table(results, SUMMARY_METRICS))
    if results.get("oracle") is None:
        print("oracle: skipped (no true_probabilities.npy or generator.json beside the data)")
    return 0


# ---------------------------------------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from towerserve.trainer.text import EncoderConfig
    from towerserve.trainer.train import PRESETS, TrainConfig, train

    if args.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)} (got {args.preset!r})")
    fit = PRESETS[args.preset]
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v is not None}
    encoder = EncoderConfig(
        model=args.encoder or "",
        pooling=args.pooling,
        threads=args.threads,
        cache_dir=None if args.no_cache else (args.cache_dir or EncoderConfig().cache_dir),
    )
    cfg = TrainConfig(
        models=("seed", "two_tower") if args.model == "all" else (args.model,),
        preset=args.preset,
        fit=replace(fit, **overrides) if overrides else None,
        encoder=encoder,
        seed=args.seed,
        embedding_dim=args.embedding_dim,
        cold=not args.no_cold,
        progress=not args.quiet,
    )
    metrics = train(args.data, args.out, cfg)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
        return 0
    for split, table in metrics.items():
        print(f"\n{split} split")
        print(metrics_table(table, SUMMARY_METRICS + ("notebook_score",)))
    print(f"\nartifacts: {args.out} (report: {Path(args.out) / 'report' / 'report.md'})")
    return 0


# ---------------------------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from towerserve.export.bundle import ExportConfig, main_export
    from towerserve.export.encoder import EncoderExportConfig

    cfg = ExportConfig(
        encoder=EncoderExportConfig(
            opset=args.opset, optimize=not args.no_optimize, int8=not args.no_int8, fp16=not args.no_fp16
        ),
        parity_users=args.parity_users,
        out=args.out,
        triton=args.triton,
    )
    manifest = main_export(args.artifacts, cfg)
    enc = manifest["encoder"]
    print(f"\nserving artifacts: {args.out or Path(args.artifacts) / 'serving'}")
    print(
        f"default model: {manifest['default_model']} ({manifest['models'][manifest['default_model']]['model_version']}); "
        f"encoder variant: {enc['default_variant']} (of {', '.join(enc['variants'])})"
    )
    if args.triton:
        print(f"triton model repository: {args.triton}")
    return 0


# ---------------------------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    # One BLAS/OpenMP thread per process: gRPC's thread pool is where the parallelism comes from, and
    # a 1000 x 33 matrix-vector product gains nothing from more. Must precede numpy's import.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from towerserve.server.app import ServerConfig, serve

    cfg = ServerConfig.from_env(
        artifacts=args.artifacts,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        token=args.token,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_port=args.metrics_port,
        grace=args.grace,
        device=args.device,
        model=args.model,
        encoder_variant=args.encoder_variant,
    )
    if cfg.artifacts is None:
        raise ValueError("give --artifacts (or TOWERSERVE_ARTIFACTS): the folder `towerserve export` wrote")
    return serve(cfg)


# ---------------------------------------------------------------------------------------------- client


def _connection_args(p: argparse.ArgumentParser) -> None:
    import os

    p.add_argument(
        "--target",
        default=os.environ.get("TOWERSERVE_TARGET", "localhost:50051"),
        help="server host:port (default $TOWERSERVE_TARGET or localhost:50051)",
    )
    p.add_argument(
        "--token", default=os.environ.get("TOWERSERVE_TOKEN"), help="bearer token (default $TOWERSERVE_TOKEN)"
    )
    p.add_argument("--tls", action="store_true", help="use TLS with the system's trusted certificates")
    p.add_argument("--tls-ca", type=Path, help="use TLS, trusting this CA certificate (PEM)")
    p.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS (PEM)")
    p.add_argument("--tls-key", type=Path, help="client key for mutual TLS (PEM)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-call deadline in seconds (default 30)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _client(args: argparse.Namespace):
    from .client import TLS, RecommenderClient

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    use_tls = args.tls or args.tls_ca or args.tls_cert
    tls = TLS(args.tls_ca, args.tls_cert, args.tls_key) if use_tls else None
    return RecommenderClient(args.target, tls=tls, token=args.token, timeout=args.timeout)


def _user_arg(args: argparse.Namespace):
    from .client import User

    if args.user and (args.age is not None or args.profession or args.personality):
        raise ValueError("give --user ID or --age/--profession[/--personality], not both")
    if args.user:
        return {"user_id": args.user}
    if args.age is None or not args.profession:
        raise ValueError("give --user ID, or --age and --profession (and --personality) for an unseen user")
    return {"user": User(args.age, args.profession, args.personality or "")}


def _print_json(obj) -> None:
    from dataclasses import asdict, is_dataclass

    print(json.dumps(asdict(obj) if is_dataclass(obj) else obj, indent=2, sort_keys=True))


def cmd_recommend(args: argparse.Namespace) -> int:
    from .tables import format_table

    with _client(args) as client:
        rec = client.recommend(
            **_user_arg(args),
            top_n=args.n,
            exclude_seen=not args.include_seen,
            price_min=args.price_min,
            price_max=args.price_max,
            categories=args.category or (),
            exclude_item_ids=args.exclude or (),
        )
    if args.json:
        _print_json(rec)
        return 0
    rows = [
        [j + 1, it.item_id, round(it.score, 4), f"{it.price:,.2f}", it.category, _clip(it.description, 70)]
        for j, it in enumerate(rec.items)
    ]
    print(format_table(["#", "item_id", "score", "price", "category", "description"], rows))
    print(f"model {rec.model_version}")
    return 0


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_score(args: argparse.Namespace) -> int:
    from .tables import format_table

    pairs = []
    for spec in args.pair:
        user, sep, item = spec.partition(":")
        if not sep or not user or not item:
            raise ValueError(f"--pair takes USER_ID:ITEM_ID (got {spec!r})")
        pairs.append((user, item))
    with _client(args) as client:
        scores = client.score(pairs)
    if args.json:
        _print_json(scores)
        return 0
    print(
        format_table(
            ["user_id", "item_id", "score"], [[u, i, round(s, 4)] for (u, i), s in zip(pairs, scores.scores)]
        )
    )
    print(f"model {scores.model_version}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        ev = client.evaluate(split=args.split, ks=args.ks, protocol=args.protocol)
    if args.json:
        _print_json(ev)
        return 0
    from .tables import format_table

    print(format_table(["metric", "value"], [[k, ev.metrics[k]] for k in sorted(ev.metrics)]))
    print(
        f"{ev.split} split, {ev.protocol} protocol, {ev.users} users, {ev.seconds * 1000:.1f} ms server-side, "
        f"model {ev.model_version}"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _client(args) as client:
        health = client.health()
        if health != "SERVING":  # GetModelInfo would only answer UNAVAILABLE while the model loads
            print(
                json.dumps({"health": health})
                if args.json
                else f"health {health}: the model is not loaded yet"
            )
            return 1
        info = client.model_info()
    if args.json:
        from dataclasses import asdict

        _print_json({**asdict(info), "health": health})
        return 0
    from .tables import format_table

    rows = [
        ["health", health],
        ["model_version", info.model_version],
        ["model_kind", info.model_kind],
        ["user_independent_ranking", str(info.user_independent_ranking)],
        ["items", info.item_count],
        ["users", info.user_count],
        ["providers", ", ".join(info.providers)],
        ["encoder", f"{info.encoder} ({info.encoder_variant})"],
        ["vector_dim", info.vector_dim],
        ["user_fields", ", ".join(info.user_fields)],
        ["item_fields", ", ".join(info.item_fields)],
        ["artifacts", info.artifacts],
        ["loaded_at", info.loaded_at],
        [
            "limits",
            f"top_n {info.max_top_n}, score pairs {info.max_score_pairs}, upsert {info.max_upsert_items}",
        ],
    ]
    rows += [[f"training {k}", v] for k, v in sorted(info.training_metrics.items()) if k in SUMMARY_METRICS]
    print(format_table(["field", "value"], rows))
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from .loadtest import LoadTestConfig, parse_duration, read_ids, result_json, run_loadtest

    users = read_ids(args.users) if args.users else ()
    items = (
        read_ids(args.items or args.users, "item_id")
        if args.rpc == "score" and (args.items or args.users)
        else ()
    )
    cfg = LoadTestConfig(
        target=args.target,
        rpc=args.rpc,
        concurrency=args.concurrency,
        duration=parse_duration(args.duration),
        rate=args.rate,
        warmup=parse_duration(args.warmup),
        user_ids=users,
        item_ids=items,
        top_n=args.top_n,
        procs=args.procs,
        token=args.token,
        tls_root=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        timeout=args.timeout,
        evaluate_protocol=args.evaluate_protocol,
        progress=not args.json,
    )
    result = run_loadtest(cfg)
    if args.out:
        Path(args.out).write_text(result_json(result) + "\n")
    print(result_json(result) if args.json else result.table())
    return 0 if result.ok else 1


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="towerserve",
        description="Content-based two-tower recommender: generate data, train, export to ONNX, serve over gRPC, "
        "and call or load-test the server.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser(
        "generate",
        help="write a synthetic data set in the seed schema (with its true probabilities)",
        description="Write users.csv, items.csv and user_product_rating_matrix.csv (or interactions.csv "
        "with --long) from a generative model with a known oracle; same seed, same bytes.",
    )
    p.add_argument("--out", required=True, type=Path, help="folder to write (created if missing)")
    p.add_argument(
        "--users", type=int, default=10_000, help="number of users (default 10000, the notebook's)"
    )
    p.add_argument("--items", type=int, default=1_000, help="number of items (default 1000, the notebook's)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument(
        "--density", type=float, default=0.0966, help="target share of positive cells (default 0.0966)"
    )
    p.add_argument(
        "--long",
        action="store_true",
        help="write long-form interactions.csv (user_id,item_id) block by block, never a dense matrix; "
        "for large scales",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "baselines",
        help="full-ranking metrics of Random, MostPopular and Oracle on a data set",
        description="Split the data as the notebook does (or the cold split) and print full-ranking "
        "metrics of the Random, MostPopular and Oracle rankers.",
    )
    p.add_argument(
        "--data", required=True, type=Path, help="folder with users.csv, items.csv and interactions"
    )
    p.add_argument(
        "--split", choices=("holdout", "cold"), default="holdout", help="which split (default holdout)"
    )
    p.add_argument("--ks", type=_ks, default=(5, 10, 20), help="cut-offs, comma-separated (default 5,10,20)")
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42, the notebook's)")
    p.add_argument("--plot", type=Path, help="also write the comparison as a PNG bar chart here")
    p.add_argument(
        "--json", action="store_true", help='print {"random": {...}, "mostpop": {...}, "oracle": {...}}'
    )
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser(
        "train",
        help="embed texts, train the models on the holdout and cold splits, write artifacts",
        description="Embed profession/personality/description/features/category with a BERT-family "
        "encoder, train the notebook's seed model and the personalised two_tower on the "
        "notebook's split (and a cold split), evaluate against the baselines and write the "
        "artifacts folder with metrics.json and a report.",
    )
    p.add_argument(
        "--data", required=True, type=Path, help="folder with users.csv, items.csv and interactions"
    )
    p.add_argument("--out", required=True, type=Path, help="artifacts folder to write (replaced atomically)")
    p.add_argument(
        "--model", choices=("seed", "two_tower", "all"), default="all", help="which model(s) (default all)"
    )
    p.add_argument(
        "--preset",
        choices=("default", "notebook"),
        default="default",
        help="default: all training rows, batch 4096, early stopping; notebook: the notebook's 200,000-row "
        "sample, 10 epochs, batch 32",
    )
    p.add_argument(
        "--encoder",
        help="BERT-family model name or folder (default: packaged all-MiniLM-L6-v2); "
        "e.g. bert-base-uncased if it is in your Hugging Face cache",
    )
    p.add_argument(
        "--pooling",
        choices=("mean", "notebook"),
        default="mean",
        help="mean: average real tokens only (default); notebook: average padding in, as the notebook did",
    )
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument("--embedding-dim", type=int, default=32, help="two_tower embedding width (default 32)")
    p.add_argument(
        "--seed", type=int, default=42, help="seed for splits, sampling and initialisation (default 42)"
    )
    p.add_argument("--threads", type=int, help="torch threads for the encoder (default: torch's choice)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="embedding cache (default ~/.cache/towerserve/embeddings or $TOWERSERVE_CACHE/embeddings)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-start split")
    p.add_argument("--json", action="store_true", help="print metrics.json")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        help="convert the encoder and towers to ONNX with parity checks (and Triton)",
        description="Convert the text encoder (pooling inside the graph; optimised, int8 and fp16 "
        "variants) and every trained model's towers to ONNX, check each against its "
        "torch/Keras reference on real inputs, precompute item vectors and write "
        "ARTIFACTS/serving with a sha256 manifest. Nothing is replaced if a check fails.",
    )
    p.add_argument("--artifacts", required=True, type=Path, help="the folder `towerserve train --out` wrote")
    p.add_argument("--out", type=Path, help="serving folder to write (default ARTIFACTS/serving)")
    p.add_argument("--triton", type=Path, help="also write a Triton Inference Server model repository here")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--parity-users", type=int, default=1000, help="users checked per tower (default 1000)")
    p.add_argument("--no-optimize", action="store_true", help="skip the ORT transformer-optimised encoder")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 encoder")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 (GPU) encoder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "serve",
        help="serve the Recommender gRPC service from exported artifacts",
        description="Serve towerserve.v1.Recommender (plus grpc.health.v1 and reflection) on ONNX "
        "Runtime. Every option can also come from TOWERSERVE_<OPTION> environment "
        "variables (e.g. TOWERSERVE_PORT); flags win. SIGTERM drains and exits 0; SIGHUP "
        "reloads the artifacts folder.",
    )
    p.add_argument(
        "--artifacts", type=Path, help="serving folder written by `towerserve export` (ARTIFACTS/serving)"
    )
    p.add_argument("--host", help="listen address (default [::])")
    p.add_argument("--port", type=int, help="port (default 50051; 0 picks a free one)")
    p.add_argument("--workers", type=int, help="processes sharing the port via SO_REUSEPORT (default 1)")
    p.add_argument("--threads", type=int, help="gRPC handler threads per process (default 16)")
    p.add_argument("--max-concurrent-rpcs", type=int, help="beyond this, RESOURCE_EXHAUSTED (default 256)")
    p.add_argument("--token", help="require 'authorization: Bearer TOKEN' on every RPC but health")
    p.add_argument("--tls-cert", type=Path, help="TLS certificate chain (PEM)")
    p.add_argument("--tls-key", type=Path, help="TLS private key (PEM)")
    p.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates signed by this CA (mutual TLS)"
    )
    p.add_argument(
        "--metrics-port", type=int, help="Prometheus metrics over HTTP on this port (+ worker index)"
    )
    p.add_argument("--grace", type=float, help="seconds to drain in-flight RPCs on SIGTERM (default 10)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="ONNX Runtime device (default cpu; cuda falls back to cpu with a warning when unavailable)",
    )
    p.add_argument(
        "--model", choices=("seed", "two_tower"), help="model to serve (default: best holdout NDCG@10)"
    )
    p.add_argument(
        "--encoder-variant",
        choices=("fp32", "optimized", "int8", "fp16"),
        help="text encoder graph (default: int8 on CPU when it passed its gate, fp16 on CUDA)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "recommend",
        help="top-N items for a user (by id, or by attributes for a new user)",
        description="Call Recommend and print the items as a table (or JSON).",
    )
    _connection_args(p)
    p.add_argument("--user", help="known user id, e.g. tec_0001")
    p.add_argument("--age", type=float, help="unseen user: age")
    p.add_argument("--profession", help="unseen user: profession")
    p.add_argument("--personality", help="unseen user: personality (when the model reads it)")
    p.add_argument("-n", type=int, default=10, help="how many items (default 10)")
    p.add_argument(
        "--include-seen", action="store_true", help="do not drop items the user already interacted with"
    )
    p.add_argument("--price-min", type=float, help="only items at or above this price")
    p.add_argument("--price-max", type=float, help="only items at or below this price")
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.add_argument("--exclude", action="append", help="never return this item id (repeatable)")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser(
        "score", help="scores for (user, item) pairs", description="Call Score for USER_ID:ITEM_ID pairs."
    )
    _connection_args(p)
    p.add_argument("--pair", action="append", required=True, help="USER_ID:ITEM_ID (repeatable)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser(
        "evaluate",
        help="ranking metrics of the served model, computed by the server",
        description="Call Evaluate on a split recorded in the served artifacts.",
    )
    _connection_args(p)
    p.add_argument("--split", choices=("holdout", "cold"), default="holdout", help="default holdout")
    p.add_argument("--ks", type=_ks, default=(5, 10, 20), help="cut-offs, comma-separated (default 5,10,20)")
    p.add_argument(
        "--protocol",
        choices=("full", "notebook"),
        default="full",
        help="full ranking metrics (default) or only the notebook's mean holdout score",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "info",
        help="what the server is serving (model, providers, versions, limits)",
        description="Call GetModelInfo and the health Check.",
    )
    _connection_args(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "loadtest",
        help="load-test one RPC: closed loop (--concurrency) or open loop (--rate)",
        description="Drive one RPC with N requests in flight (closed loop) or Poisson arrivals at "
        "--rate per second (open loop), user ids drawn from a data set, and report QPS, "
        "p50/p90/p99/max latency and errors by status code. --rpc health hits the "
        "server's standard health Check: its empty-RPC ceiling.",
    )
    _connection_args(p)
    p.add_argument("--rpc", choices=("recommend", "score", "evaluate", "health"), default="recommend")
    p.add_argument("--concurrency", type=int, default=32, help="requests in flight, closed loop (default 32)")
    p.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    p.add_argument("--duration", default="30s", help="measured time, e.g. 30s, 2m (default 30s)")
    p.add_argument("--warmup", default="2s", help="unmeasured start (default 2s)")
    p.add_argument("--users", type=Path, help="users.csv, or a data/artifacts folder holding one")
    p.add_argument("--items", type=Path, help="items.csv for --rpc score (default: beside --users)")
    p.add_argument("--top-n", type=int, default=10, help="Recommend top_n (default 10)")
    p.add_argument("--evaluate-protocol", choices=("notebook", "full"), default="notebook")
    p.add_argument("--procs", type=int, default=1, help="generator processes (default 1)")
    p.add_argument("--out", type=Path, help="also write the JSON result here")
    p.set_defaults(func=cmd_loadtest)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as err:
        from .client import TowerserveError

        if not isinstance(err, (ValueError, FileNotFoundError, ConnectionError, TowerserveError)):
            raise
        # Data and argument errors carry their own message (file, line, column); a traceback adds nothing.
        if args.verbose:
            raise
        print(f"towerserve {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
