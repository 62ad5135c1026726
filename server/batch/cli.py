"""`towerserve batch embed|recommend`: the serving model over a whole catalogue or every known user, on Ray.

Only argparse at the top (see server/api/cli.py): Ray, pyarrow and the engine load inside the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHARED = (
    "On a cluster every node must read --artifacts (and, for the output, write --out) at the same "
    "path: put them on shared storage (NFS, a mounted bucket) and install the same towerserve[ray] "
    "on every node."
)


def _bundle(args: argparse.Namespace):
    from .runner import Bundle, bundle_root

    return Bundle(bundle_root(args.artifacts), args.model, args.encoder_variant, args.exact)


def _report(name: str, result) -> None:
    print(
        f"{name}: {result.rows} rows -> {result.out} in {result.seconds:.1f} s "
        f"({result.rows_per_second:,.0f} rows/s, {result.actors} actors)"
    )


def cmd_embed(args: argparse.Namespace) -> int:
    from .runner import embed, ray_session

    bundle = _bundle(args)
    with ray_session(args.ray_address, args.verbose) as cpus:
        result = embed(
            bundle,
            args.items,
            args.out,
            actors=args.actors or cpus,
            batch_size=args.batch_size,
            recompute=args.recompute,
            overwrite=args.overwrite,
        )
    _report("batch embed", result)
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    from .runner import ray_session, recommend

    bundle = _bundle(args)
    with ray_session(args.ray_address, args.verbose) as cpus:
        result = recommend(
            bundle,
            args.out,
            actors=args.actors or cpus,
            top_n=args.top_n,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
        )
    _report("batch recommend", result)
    return 0


def _common(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument(
        "--artifacts",
        type=Path,
        required=True,
        help="serving folder written by `towerserve export` (A/serving; A also works), on a path every "
        "node reads",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="output: a folder of Parquet files (written, then renamed)"
    )
    p.add_argument(
        "--ray-address",
        help="Ray cluster to run on: 'auto' (this node's), HOST:6379, or ray://HOST:10001 (Ray Client); "
        "default: start a local Ray with this machine's CPUs",
    )
    p.add_argument(
        "--actors", type=int, help="actors (one CPU each, one model each; default: the cluster's CPUs)"
    )
    p.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"rows per batch (default {batch_size})"
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    p.add_argument("--model", help="model kind, one of the manifest's (default: the served one)")
    p.add_argument(
        "--encoder-variant",
        choices=("fp32", "optimized", "int8", "fp16"),
        help="text encoder graph for texts the exported tables lack (default: the server's)",
    )
    p.add_argument(
        "--exact", action="store_true", help="ignore the bundle's approximate index, as `serve --exact`"
    )


def register(sub) -> None:
    """Adds `batch` (embed, recommend) to the `towerserve` subcommands."""
    p = sub.add_parser(
        "batch",
        help="item vectors or every user's top-N with the serving model, as Ray Data jobs",
        description="Runs the exported model over a whole input as a Ray Data job: a pool of actors, "
        "each loading the serving bundle once (ONNX Runtime, one thread each), fed in batches, writing "
        "Parquet. Without --ray-address a local Ray starts with this machine's CPUs. " + SHARED,
    )
    cmds = p.add_subparsers(dest="batch_command", metavar="JOB", required=True)
    e = cmds.add_parser(
        "embed",
        help="item vectors: item_id, vector, model_version",
        description="Each item's vector as the server ranks it: the bundle's own vector for an item exported "
        "with the same attributes, else the text encoder and the item tower, as UpsertItems. " + SHARED,
    )
    e.add_argument(
        "--items",
        type=Path,
        required=True,
        help="CSV with items.csv's columns (item_id, description, "
        "features, price, category), read by this process",
    )
    e.add_argument(
        "--recompute",
        action="store_true",
        help="send exported items through the item tower too (a hybrid's exported vectors also hold a "
        "learned item-ID part, which this leaves out)",
    )
    _common(e, 256)
    e.set_defaults(func=cmd_embed)
    r = cmds.add_parser(
        "recommend",
        help="every known user's top-N: user_id, item_ids, scores, model_version",
        description="What Recommend answers each known user (exclude_seen, no filters): the table a "
        "key-value store serves offline recommendations from. " + SHARED,
    )
    r.add_argument("--top-n", type=int, default=100, help="items per user (default 100, at most 1000)")
    _common(r, 1000)
    r.set_defaults(func=cmd_recommend)
    p.set_defaults(extra="ray")
