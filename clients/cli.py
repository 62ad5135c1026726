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
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 5,10,20 (got {text!r})") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"every k must be >= 1 (got {text!r})")
    return ks


# ---------------------------------------------------------------------------------------------- data


def cmd_generate(args: argparse.Namespace) -> int:
    from towerserve.trainer import synth

    summary = synth.generate(args.out, args.users, args.items, args.seed, args.density, args.long, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"wrote {args.out}: {summary['users']} users x {summary['items']} items, "
              f"{summary['positives']} positives ({100 * summary['density']:.2f} %), {summary['form']} form")
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from towerserve.trainer import baselines, splits
    from towerserve.trainer.data import load_dataset

    ds = load_dataset(args.data)
    ids = ds.users["user_id"].to_numpy()
    split = (splits.holdout_split(ds.positives, ids, seed=args.seed) if args.split == "holdout"
             else splits.cold_split(ds.positives, ids, seed=args.seed))
    results = baselines.evaluate_baselines(split.train, split.test, args.data, args.ks)
    if args.plot:
        from towerserve.trainer.plots import metric_bars

        metric_bars(results, ["ndcg@10", "recall@10", "hitrate@10", "mrr"], args.plot,
                    title=f"baselines on {Path(args.data).name} ({args.split} split)")
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return 0
    print(f"{args.split} split of {args.data}: {ds.n_users} users x {ds.n_items} items, "
          f"{split.train.nnz} train / {split.test.nnz} test positives")
    print(metrics_table(results, SUMMARY_METRICS))
    if results.get("oracle") is None:
        print("oracle: skipped (no true_probabilities.npy or generator.json beside the data)")
    return 0


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="towerserve",
        description="Content-based two-tower recommender: generate data, train, export to ONNX, serve over gRPC, "
                    "and call or load-test the server.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("generate", help="write a synthetic data set in the seed schema (with its true probabilities)",
                       description="Write users.csv, items.csv and user_product_rating_matrix.csv (or interactions.csv "
                                   "with --long) from a generative model with a known oracle; same seed, same bytes.")
    p.add_argument("--out", required=True, type=Path, help="folder to write (created if missing)")
    p.add_argument("--users", type=int, default=10_000, help="number of users (default 10000, the notebook's)")
    p.add_argument("--items", type=int, default=1_000, help="number of items (default 1000, the notebook's)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--density", type=float, default=0.0966, help="target share of positive cells (default 0.0966)")
    p.add_argument("--long", action="store_true",
                   help="write long-form interactions.csv (user_id,item_id) block by block, never a dense matrix; "
                        "for large scales")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("baselines", help="full-ranking metrics of Random, MostPopular and Oracle on a data set",
                       description="Split the data as the notebook does (or the cold split) and print full-ranking "
                                   "metrics of the Random, MostPopular and Oracle rankers.")
    p.add_argument("--data", required=True, type=Path, help="folder with users.csv, items.csv and interactions")
    p.add_argument("--split", choices=("holdout", "cold"), default="holdout", help="which split (default holdout)")
    p.add_argument("--ks", type=_ks, default=(5, 10, 20), help="cut-offs, comma-separated (default 5,10,20)")
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42, the notebook's)")
    p.add_argument("--plot", type=Path, help="also write the comparison as a PNG bar chart here")
    p.add_argument("--json", action="store_true", help='print {"random": {...}, "mostpop": {...}, "oracle": {...}}')
    p.set_defaults(func=cmd_baselines)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as err:
        # Data and argument errors carry their own message (file, line, column); a traceback adds nothing.
        if args.verbose:
            raise
        print(f"towerserve {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
