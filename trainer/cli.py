"""`towerserve generate`, `baselines` and `train`: their flags and commands (the training stack loads inside)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from towerserve.server.core.cli_args import ks_list
from towerserve.server.core.tables import SUMMARY_METRICS, metrics_table

from .progress import bars_wanted

# Model kinds by name (trainer/models.KINDS is their home; this module must not import Keras, and
# tests/test_models.py checks the two agree). `--model all` trains them all.
ALL_MODELS = ("seed", "two_tower", "hybrid")


def cmd_generate(args: argparse.Namespace) -> int:
    from .synth import generator as synth

    bars = bars_wanted(args.progress, args.quiet)
    if args.latent_weight is not None and args.regime != "latent":
        print("--latent-weight applies to --regime latent only", file=sys.stderr)
        return 2
    summary = synth.generate(
        args.out,
        args.users,
        args.items,
        args.seed,
        args.density,
        args.long,
        progress=bars,
        regime=args.regime,
        latent_weight=args.latent_weight,
        sampling=args.sampling,
        pool=args.pool,
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
    from . import baselines, splits
    from .data import load_dataset
    from .evalsample import default_eval_users, sample_users

    ds = load_dataset(args.data)
    ids = ds.users["user_id"].to_numpy()
    split = (
        splits.holdout_split(ds.positives, ids, seed=args.seed)
        if args.split == "holdout"
        else splits.cold_split(ds.positives, ids, seed=args.seed)
    )
    n_eval = default_eval_users(ds.n_users, ds.n_items) if args.eval_users is None else args.eval_users
    block = baselines.OracleScores.replay_block(args.data)
    judged = sample_users(split.test, n_eval or None, args.seed, block)
    results = baselines.evaluate_baselines(split.train, split.test, args.data, args.ks, users=judged)
    if args.plot:
        from .plots import metric_bars

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
    for note in baselines.skipped_notes(results, ds.n_items):
        print(note)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .text import EncoderConfig
    from .train import PRESETS, TrainConfig, train

    if args.preset not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)} (got {args.preset!r})")
    fit = PRESETS[args.preset]
    given = (("epochs", args.epochs), ("batch_size", args.batch_size), ("sample", args.train_rows))
    overrides = {k: v for k, v in given if v is not None}
    encoder = EncoderConfig(
        model=args.encoder or "",
        pooling=args.pooling,
        threads=args.threads,
        cache_dir=None if args.no_cache else (args.cache_dir or EncoderConfig().cache_dir),
        onnx_folder=args.text_encoder,
    )
    if args.text_encoder is not None:
        from .onnx_text import read_folder

        if args.encoder:  # the folder's graphs were exported from one model: a second would be ignored
            raise ValueError("--encoder and --text-encoder: give one (the folder records its model)")
        read_folder(args.text_encoder)  # a bad folder fails now, not after the data set has loaded
    cfg = TrainConfig(
        models=ALL_MODELS if args.model == "all" else args.model,
        preset=args.preset,
        fit=replace(fit, **overrides) if overrides else None,
        encoder=encoder,
        seed=args.seed,
        embedding_dim=args.embedding_dim,
        cold=not args.no_cold,
        progress=bars_wanted(args.progress, args.quiet),
        eval_users=args.eval_users,
        hybrid_search=({},) if args.no_search else None,
        events=args.events,
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


def cmd_import_movielens(args: argparse.Namespace) -> int:
    from .movielens import import_movielens

    summary = import_movielens(args.src, args.out, min_rating=args.min_rating)
    print(summary.line(args.out))
    return 0


def model_list(text: str) -> str | tuple[str, ...]:
    """``all`` or a comma-separated list of model kinds (argparse ``type``)."""
    if text == "all":
        return text
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in ALL_MODELS] or ([] if kinds else [text])
    if bad:
        raise argparse.ArgumentTypeError(
            f"expected seed, two_tower, hybrid, a list of them or all (got {bad[0]!r})"
        )
    return kinds


def _progress_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--progress",
        action="store_true",
        help="progress bars even when stderr is not a terminal (default: bars on a terminal, "
        "plain log lines in a file or pipe)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _eval_users_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval-users",
        type=int,
        help="judge every model and baseline on this fixed, seeded sample of users (with NDCG@10's 95 %% "
        "interval); 0: every user. Default: every user up to 10^9 users x items cells, above that "
        "2x10^8 / items users, between 1000 and 10000",
    )


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", required=True, type=Path, help="folder with users.csv, items.csv and interactions"
    )


def register(sub) -> None:
    """Adds generate, baselines and train to the `towerserve` subcommands (``sub``: argparse's subparsers).

    Long because it declares the command's flags, one call each and no logic: one place to read them all.
    """
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
    p.add_argument(
        "--regime",
        choices=("latent", "content"),
        default="latent",
        help="latent (default): per-user and per-item latent tastes no attribute expresses, as in real "
        "data; content: every preference lives in texts and attributes (the original generator)",
    )
    p.add_argument(
        "--latent-weight",
        type=float,
        help="weight of the latent term in the logit (latent regime only; default 2.0)",
    )
    p.add_argument(
        "--sampling",
        choices=("dense", "pooled", "auto"),
        default="auto",
        help="dense: draw every user x item cell; pooled (--long only): draw each user's pairs from a "
        "random pool of --pool items, minutes at 10^6 x 10^6 (trainer/synth/pooled.py); auto (default): "
        "pooled for --long above 2x10^9 cells, else dense",
    )
    p.add_argument(
        "--pool",
        type=int,
        help="mean items in each user's pool (pooled sampling; default ~100 x the expected positives per "
        "user, a power of two in 1024-4096)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _progress_flags(p)
    p.set_defaults(func=cmd_generate, extra="train")

    p = sub.add_parser(
        "baselines",
        help="full-ranking metrics of Random, MostPopular, ItemKNN, EASE and Oracle on a data set",
        description="Split the data as the notebook does (or the cold split) and print full-ranking "
        "metrics of the Random, MostPopular, ItemKNN, EASE and Oracle rankers.",
    )
    _data_arg(p)
    p.add_argument(
        "--split", choices=("holdout", "cold"), default="holdout", help="which split (default holdout)"
    )
    p.add_argument(
        "--ks", type=ks_list, default=(5, 10, 20), help="cut-offs, comma-separated (default 5,10,20)"
    )
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42, the notebook's)")
    p.add_argument("--plot", type=Path, help="also write the comparison as a PNG bar chart here")
    _eval_users_arg(p)
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"random": {...}, "mostpop": {...}, "itemknn": {...}, "ease": {...}, "oracle": {...}}',
    )
    p.set_defaults(func=cmd_baselines, extra="train")

    p = sub.add_parser(
        "train",
        help="embed texts, train the models on the holdout and cold splits, write artifacts",
        description="Embed profession/personality/description/features/category with a BERT-family "
        "encoder, train the notebook's seed model and the personalised two_tower on the "
        "notebook's split (and a cold split), evaluate against the baselines and write the "
        "artifacts folder with metrics.json and a report.",
    )
    _data_arg(p)
    p.add_argument("--out", required=True, type=Path, help="artifacts folder to write (replaced atomically)")
    p.add_argument(
        "--model",
        type=model_list,
        default="all",
        help="seed, two_tower, hybrid, a comma-separated list of them, or all (default: all three; the "
        "one with the best holdout NDCG@10 is served by default)",
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
    p.add_argument(
        "--text-encoder",
        type=Path,
        help="embed texts through ONNX Runtime with this `towerserve export-encoder` folder's fastest "
        "accepted variant (int8, else fp32) instead of torch (the folder records its model: no --encoder)",
    )
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--batch-size", type=int, help="override the preset's batch size")
    p.add_argument(
        "--train-rows",
        type=int,
        help="train on the first N rows (positives and sampled negatives alike) of the seeded shuffle "
        "(default: the preset's; all rows for default). For large data sets",
    )
    _eval_users_arg(p)
    p.add_argument("--embedding-dim", type=int, default=32, help="two_tower embedding width (default 32)")
    p.add_argument(
        "--seed", type=int, default=42, help="seed for splits, sampling and initialisation (default 42)"
    )
    p.add_argument(
        "--threads",
        type=int,
        help="encoder threads, torch or ONNX Runtime (default: torch's choice; ONNX Runtime: every core)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="embedding cache (default ~/.cache/towerserve/embeddings or $TOWERSERVE_CACHE/embeddings)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-start split")
    p.add_argument(
        "--events",
        metavar="STATE_DIR|URL",
        help="a server's journal (its --state-dir, or its --catalog-url): the interactions it recorded "
        "(RecordInteractions) join the data's positives; the manifest records up to which event",
    )
    p.add_argument(
        "--no-search",
        action="store_true",
        help="train the hybrid's default recipe only, not every candidate of its recipe search (its "
        "validation split still stops the epochs and weighs the popularity column and EASE part)",
    )
    p.add_argument("--json", action="store_true", help="print metrics.json")
    _progress_flags(p)
    p.set_defaults(func=cmd_train, extra="train")

    p = sub.add_parser(
        "import",
        help="convert a public data set (MovieLens) into the seed schema",
        description="Write users.csv, items.csv and interactions.csv from a public data set's files.",
    )
    p.set_defaults(extra="train")
    sources = p.add_subparsers(dest="source", metavar="SOURCE", required=True)
    m = sources.add_parser(
        "movielens",
        help="MovieLens from GroupLens 100K files or RecBole atomic files",
        description="Users (age, occupation, gender), movies (title and year, genres, year as price) and "
        "positives (ratings >= --min-rating, with their timestamps); every user and movie is kept. "
        "The mapping is documented in trainer/movielens.py.",
    )
    m.add_argument(
        "src",
        type=Path,
        help="folder with GroupLens 100K's u.data, u.user, u.item (u.genre optional) or one RecBole "
        "triple NAME.inter, NAME.user, NAME.item",
    )
    m.add_argument("--out", required=True, type=Path, help="data set folder to write (replaced atomically)")
    m.add_argument(
        "--min-rating",
        type=float,
        default=4,
        help="ratings at or above this are positives (default 4: 'liked' on the 1-5 star scale)",
    )
    m.set_defaults(func=cmd_import_movielens)
