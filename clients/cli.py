"""The `towerserve` command: a thin argparse layer over typed functions, heavy imports made lazily."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from towerserve.export import cli as export_cli
from towerserve.server.api import cli as server_cli
from towerserve.server.batch import cli as batch_cli
from towerserve.server.catalog import cli as catalog_cli
from towerserve.server.core.cli_args import ks_list, missing_extra
from towerserve.server.core.tables import SUMMARY_METRICS, format_table
from towerserve.trainer import cli as trainer_cli

# ---------------------------------------------------------------------------------------------- client


# Any gRPC target string, passed to gRPC as given (never split here: IPv6 and lists hold colons).
TARGET_FORMS = (
    "host:port, dns:///host:port (every address the name resolves to), "
    "ipv4:IP:PORT,IP:PORT,... or ipv6:[IP]:PORT,..., unix:PATH"
)


def _connection_args(p: argparse.ArgumentParser, balanced: bool = True) -> None:
    import os

    spread = (
        "; calls are spread round-robin over its addresses, and a read or upsert that gets UNAVAILABLE "
        "from one replica is retried on the next"
        if balanced
        else "; each generator spreads its calls round-robin over its addresses, without retries (a load "
        "test counts every failure)"
    )
    p.add_argument(
        "--target",
        default=os.environ.get("TOWERSERVE_TARGET", "localhost:50051"),
        help=f"gRPC target: {TARGET_FORMS}{spread} (default $TOWERSERVE_TARGET or localhost:50051)",
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
    with _client(args) as client:
        rec = client.recommend(
            **_user_arg(args),
            top_n=args.n,
            exclude_seen=not args.include_seen,
            price_min=args.price_min,
            price_max=args.price_max,
            categories=args.category or (),
            exclude_item_ids=args.exclude or (),
            history=_history_arg(args.history),
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
    if args.history:
        print(f"history: the model used {rec.history_used} of {len(_history_arg(args.history))} items")
    return 0


def _history_arg(text: str | None) -> list[str] | None:
    """--history "a,b,c" -> ["a", "b", "c"] (blanks dropped); None when the flag is absent."""
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def cmd_score(args: argparse.Namespace) -> int:
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
    print(format_table(["metric", "value"], [[k, ev.metrics[k]] for k in sorted(ev.metrics)]))
    print(
        f"{ev.split} split, {ev.protocol} protocol, {ev.users} users, {ev.seconds * 1000:.1f} ms server-side, "
        f"model {ev.model_version}"
    )
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    from .client import Interaction

    events = []
    for spec in args.event:
        user, sep, rest = spec.partition(":")
        item, _, kind = rest.partition(":")
        if not sep or not user or not item:
            raise ValueError(f"--event takes USER_ID:ITEM_ID[:KIND] (got {spec!r})")
        events.append(Interaction(user, item, kind=kind, weight=args.weight or 0.0))
    with _client(args) as client:
        got = client.record_interactions(events, create_users=args.create_users)
    if args.json:
        _print_json(got)
        return 0
    print(
        f"recorded {got.recorded} (duplicates {got.duplicates}, users created {got.created_users}) "
        f"at journal sequence {got.sequence}; model {got.model_version}"
    )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from .promote import promote

    with _client(args) as client:
        decision = promote(
            args.candidate, client, args.events, args.margin, args.force, args.dry_run, args.reload_path
        )
    if args.json:
        _print_json(decision.to_json())
        return 0 if decision.promoted or args.dry_run else 3
    rows = [
        [name, decision.candidate.get(name), decision.serving.get(name)]
        for name in sorted(set(decision.candidate) | set(decision.serving))
        if name in ("ndcg@10", "recall@10", "hitrate@10", "map@10")
    ]
    print(format_table(["metric", "candidate", "serving"], rows))
    print(
        f"{decision.pairs} interactions recorded since the candidate's training (sequence > {decision.after}; "
        f"{decision.skipped} of users or items it lacks left out)"
    )
    verdict = "PROMOTED" if decision.promoted else "NOT PROMOTED"
    print(f"{verdict}: {decision.reason} ({decision.candidate_version} vs {decision.serving_version})")
    return 0 if decision.promoted or args.dry_run else 3


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
        if args.rpc in ("score", "record_interactions") and (args.items or args.users)
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


def register(sub) -> None:
    """Adds the client commands to the `towerserve` subcommands (``sub``: argparse's subparsers action).

    Long because it declares the command's flags, one call each and no logic: one place to read them all.
    """
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
    p.add_argument(
        "--history",
        help="items the user interacted with, most recent first, comma-separated (item_1,item_2); "
        "read by models whose GetModelInfo.max_history > 0",
    )
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
    p.add_argument(
        "--ks", type=ks_list, default=(5, 10, 20), help="cut-offs, comma-separated (default 5,10,20)"
    )
    p.add_argument(
        "--protocol",
        choices=("full", "notebook"),
        default="full",
        help="full ranking metrics (default) or only the notebook's mean holdout score",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "record",
        help="record what users did (RecordInteractions): their next Recommend reflects it",
        description="Call RecordInteractions: the events are journaled, pooled into the users' served "
        "histories and left out of their results; `towerserve train --events` retrains on them.",
    )
    _connection_args(p)
    p.add_argument("--event", action="append", required=True, help="USER_ID:ITEM_ID[:KIND] (repeatable)")
    p.add_argument("--weight", type=float, help="how much each event counts (default 1)")
    p.add_argument(
        "--create-users", action="store_true", help="unknown user ids become users (else NOT_FOUND)"
    )
    p.set_defaults(func=cmd_record)

    p = sub.add_parser(
        "promote",
        help="reload the target with a candidate model only if it is not worse on recent interactions",
        description="Champion/challenger: judge the candidate serving folder and the model the target "
        "serves on the interactions recorded (RecordInteractions) since the candidate was trained, and "
        "reload the target with the candidate when its NDCG@10 is within --margin of the serving "
        "model's. Exit code 3 when it is not promoted.",
    )
    _connection_args(p)
    p.add_argument("--candidate", type=Path, required=True, help="the candidate's serving folder (A/serving)")
    p.add_argument(
        "--events",
        required=True,
        metavar="STATE_DIR|URL",
        help="the servers' journal: --state-dir or --catalog-url",
    )
    p.add_argument(
        "--margin", type=float, default=0.01, help="relative NDCG@10 the candidate may lose (default 0.01)"
    )
    p.add_argument("--force", action="store_true", help="promote whatever the scores (still reported)")
    p.add_argument("--dry-run", action="store_true", help="judge and report, do not reload")
    p.add_argument("--reload-path", help="the candidate's path as the server sees it (default: --candidate)")
    p.set_defaults(func=cmd_promote)

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
    _connection_args(p, balanced=False)
    p.add_argument(
        "--rpc",
        choices=("recommend", "score", "evaluate", "record_interactions", "health"),
        default="recommend",
    )
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


def _build() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="towerserve",
        description="Content-based two-tower recommender: generate data, train, export to ONNX, serve over gRPC, "
        "and call or load-test the server.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    # Each package owns its commands; their modules import only argparse, so every command is listed
    # (and its --help works) in a client-only install too.
    for add in (
        trainer_cli.register,
        export_cli.register,
        server_cli.register,
        catalog_cli.register,
        batch_cli.register,
        register,
    ):
        add(sub)
    return parser, sub.choices


def build_parser() -> argparse.ArgumentParser:
    return _build()[0]


def _missing_extra(commands: dict[str, argparse.ArgumentParser], argv: list[str]) -> str | None:
    """The one-line message when the command's extra is not installed, checked before argparse so
    `towerserve train` says what to install rather than which flags it lacks."""
    if "-h" in argv or "--help" in argv:
        return None
    # The top-level parser takes no option values, so the first bare word is the command.
    command = next((a for a in argv if not a.startswith("-")), None)
    extra = commands[command].get_default("extra") if command in commands else None
    return missing_extra(command, extra) if extra else None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, commands = _build()
    line = _missing_extra(commands, argv)
    if line:
        print(line, file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
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
