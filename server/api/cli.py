"""`towerserve serve` (the shared extras check and argument types: server/core/cli_args.py).

Only argparse at the top: `towerserve --help` imports every package's cli module, in a client-only
install too, so the heavy imports wait inside the command functions.
"""

from __future__ import annotations

import argparse
from dataclasses import Field, fields
from pathlib import Path

from ..core.config import ENV_PREFIX, GROUPS, TOKENS, ServerConfig


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    # One BLAS/OpenMP thread per process: gRPC's thread pool is where the parallelism comes from, and
    # a 1000 x 33 matrix-vector product gains nothing from more. Must precede numpy's import.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    from .app import serve

    given = {name: getattr(args, name) for name in serve_options()}
    # A store_true flag left off is "not given" (None), so the environment may still set it.
    cfg = ServerConfig.from_env(**{k: (None if v is False else v) for k, v in given.items()})
    if cfg.artifacts is None:
        raise ValueError("give --artifacts (or TOWERSERVE_ARTIFACTS): the folder `towerserve export` wrote")
    for name in TOKENS:
        if getattr(args, name):
            flag, env = name.replace("_", "-"), ENV_PREFIX + name.upper()
            logging.getLogger(__name__).warning(
                "--%s on the command line is visible to every local user (ps, /proc): prefer --%s-file "
                "or the %s environment variable",
                flag,
                flag,
                env,
            )
    return serve(cfg)


def serve_options() -> dict[str, Field]:
    """ServerConfig's fields that are `serve` flags, by name (each carries its group and help)."""
    return {f.name: f for f in fields(ServerConfig) if "help" in f.metadata}


def _flag_type(f: Field):
    """argparse's type for a field annotated ``int``, ``float | None``, ``Path | None``, ... (a string:
    the module uses postponed annotations)."""
    kinds = {"int": int, "float": float, "Path": Path, "str": str}
    name = str(f.type).split("|")[0].strip()
    return kinds[name]


def register(sub) -> None:
    """Adds `serve` to the `towerserve` subcommands (``sub`` is argparse's subparsers action), one flag
    per ServerConfig option (server/core/config.py), grouped as GROUPS says."""
    p = sub.add_parser(
        "serve",
        help="serve the Recommender gRPC service from exported artifacts",
        description="Serve towerserve.v1.Recommender (plus grpc.health.v1 and reflection) on ONNX "
        "Runtime. Every option can also come from TOWERSERVE_<OPTION> environment "
        "variables (e.g. TOWERSERVE_PORT, TOWERSERVE_TOKEN); flags win. It listens on localhost "
        "only unless --host says otherwise, and refuses a host other machines can reach without a "
        "token or client certificates (mutual TLS) unless --insecure is given. Tokens carry a right: "
        "read < write (catalogue changes) < admin (Reload); --token has them all. SIGTERM drains "
        "and exits 0; SIGHUP reloads the artifacts folder.",
    )
    groups = {name: p.add_argument_group(f"{name}: {title}") for name, title in GROUPS.items()}
    for name, f in serve_options().items():
        flag, meta = "--" + name.replace("_", "-"), f.metadata
        group = groups[meta["group"]]
        if str(f.type) == "bool":
            group.add_argument(flag, action="store_true", help=meta["help"])
        else:
            group.add_argument(flag, type=_flag_type(f), choices=meta["choices"], help=meta["help"])
    p.set_defaults(func=cmd_serve, extra="server")
