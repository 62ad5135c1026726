"""`towerserve serve` (the shared extras check and argument types: server/core/cli_args.py).

Only argparse at the top: `towerserve --help` imports every package's cli module, in a client-only
install too, so the heavy imports wait inside the command functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    # One BLAS/OpenMP thread per process: gRPC's thread pool is where the parallelism comes from, and
    # a 1000 x 33 matrix-vector product gains nothing from more. Must precede numpy's import.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from .app import ServerConfig, serve

    cfg = ServerConfig.from_env(
        artifacts=args.artifacts,
        host=args.host,
        port=args.port,
        workers=args.workers,
        threads=args.threads,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        max_probe_rpcs=args.max_probe_rpcs,
        max_watch_streams=args.max_watch_streams,
        token=args.token,
        token_file=args.token_file,
        insecure=args.insecure or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_port=args.metrics_port,
        grace=args.grace,
        device=args.device,
        model=args.model,
        encoder_variant=args.encoder_variant,
        exact=args.exact or None,
        candidate_budget_mb=args.candidate_budget_mb,
        state_dir=args.state_dir,
        catalog_url=args.catalog_url,
        max_connection_age=args.max_connection_age,
    )
    if cfg.artifacts is None:
        raise ValueError("give --artifacts (or TOWERSERVE_ARTIFACTS): the folder `towerserve export` wrote")
    if args.token:
        logging.getLogger(__name__).warning(
            "--token on the command line is visible to every local user (ps, /proc): prefer --token-file "
            "or the TOWERSERVE_TOKEN environment variable"
        )
    return serve(cfg)


def register(sub) -> None:
    """Adds `serve` to the `towerserve` subcommands (``sub`` is argparse's subparsers action).

    Long because it declares the command's flags, one call each and no logic: one place to read them all.
    """
    p = sub.add_parser(
        "serve",
        help="serve the Recommender gRPC service from exported artifacts",
        description="Serve towerserve.v1.Recommender (plus grpc.health.v1 and reflection) on ONNX "
        "Runtime. Every option can also come from TOWERSERVE_<OPTION> environment "
        "variables (e.g. TOWERSERVE_PORT, TOWERSERVE_TOKEN); flags win. It listens on localhost "
        "only unless --host says otherwise, and refuses a host other machines can reach without a "
        "token or TLS unless --insecure is given. SIGTERM drains and exits 0; SIGHUP "
        "reloads the artifacts folder.",
    )
    p.add_argument(
        "--artifacts",
        type=Path,
        help="serving folder written by `towerserve export` (ARTIFACTS/serving); "
        "the training folder ARTIFACTS itself also works",
    )
    p.add_argument(
        "--host",
        help="listen address (default localhost: this machine only; [::] or 0.0.0.0 for every interface, "
        "which needs a token, TLS or --insecure)",
    )
    p.add_argument("--port", type=int, help="port (default 50051; 0 picks a free one)")
    p.add_argument("--workers", type=int, help="processes sharing the port via SO_REUSEPORT (default 1)")
    p.add_argument(
        "--threads",
        type=int,
        help="worker pool threads per process for heavy work (default: the CPU count, >= 2)",
    )
    p.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        help="authenticated RPCs in flight; beyond this, RESOURCE_EXHAUSTED (default 256; health calls "
        "and calls refused for their token do not count)",
    )
    p.add_argument(
        "--max-probe-rpcs",
        type=int,
        help="health Check/Watch calls and calls refused for their token in flight, a separate cap so they "
        "cannot take the slots of authenticated RPCs (default 64)",
    )
    p.add_argument(
        "--max-watch-streams",
        type=int,
        help="open health Watch streams, each also holding a probe slot (default 16; gRPC client-side "
        "health checking holds one per client connection)",
    )
    p.add_argument(
        "--token",
        help="require 'authorization: Bearer TOKEN' on every RPC but health. Visible to every local user "
        "in ps: prefer --token-file or the TOWERSERVE_TOKEN environment variable",
    )
    p.add_argument(
        "--token-file",
        type=Path,
        help="read the bearer token from this file (surrounding whitespace stripped; an empty file is "
        "refused); keep it chmod 600",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host with neither a token nor TLS (refused otherwise; logs a warning)",
    )
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
        "--model", help="model kind to serve, one of the manifest's (default: best holdout NDCG@10)"
    )
    p.add_argument(
        "--encoder-variant",
        choices=("fp32", "optimized", "int8", "fp16"),
        help="text encoder graph (default: int8 on CPU when it passed its gate, fp16 on CUDA)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="score every item, ignoring the bundle's approximate index (a reference, or a way out)",
    )
    p.add_argument(
        "--candidate-budget-mb",
        type=float,
        help="memory for known users' precomputed top-128 lists (default 1024; beyond it, none are kept)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="journal catalogue changes (UpsertItems, DeleteItems) here before acknowledging them, and "
        "replay them at start and on Reload (default: none, changes are lost on restart)",
    )
    p.add_argument(
        "--catalog-url",
        help="journal catalogue changes in PostgreSQL (postgresql://USER@HOST/DB; the 'postgres' extra), "
        "shared by every replica: each applies the others' changes within a second; wins over --state-dir. "
        "Prefer TOWERSERVE_CATALOG_URL: a password in a flag is visible in ps",
    )
    p.add_argument(
        "--max-connection-age",
        type=float,
        help="seconds before a client connection is asked to reconnect, so dns:/// clients find new "
        "replicas (default 300; 0: never)",
    )
    p.set_defaults(func=cmd_serve, extra="server")
