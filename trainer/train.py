"""`towerserve train`: embed, split, fit every model on the holdout and cold splits, evaluate, write artifacts."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from towerserve.server.core import features as feats
from towerserve.server.core.csr import CSR
from towerserve.server.core.features import MINMAX, TEXT, FieldSpec, FieldTable, save_tables
from towerserve.server.core.manifest import TRAIN_FORMAT
from towerserve.server.core.splits import save_recorded_split

from . import baselines, splits
from .artifacts import atomic_dir, package_versions, write_json
from .data import Dataset, load_dataset
from .evalsample import NEW_ITEMS_KEY, default_eval_users, evaluate_towers, new_item_ndcg, sample_users
from .fit import fit_model, tower_scores
from .onnx_text import open_encoder
from .text import MAX_LENGTHS, TextEncoder
from .train_config import (  # noqa: F401 - TrainConfig and FitConfig are part of train's interface
    FEATURE_SETS,
    ID_KINDS,
    NOTEBOOK_FIT,
    NUMERIC_FIELDS,
    PRESETS,
    SPLITS,
    FitConfig,
    TrainConfig,
)

_LOGGER = logging.getLogger(__name__)

FORMAT_VERSION = 1


def encoder_name(model_ref: str) -> str:
    """A readable encoder name for reports and GetModelInfo (the packaged default has a path)."""
    from .text import default_model

    return "all-MiniLM-L6-v2 (packaged)" if model_ref == default_model() else model_ref


def embed_fields(
    ds: Dataset, encoder: TextEncoder, fields: set[str], progress: bool
) -> tuple[dict[str, FieldTable], dict[str, int]]:
    """Embeds each text field's distinct strings once; returns tables and (notebook pooling) pad lengths."""
    tables, padded = {}, {}
    for name in sorted(fields):
        frame = ds.users if name in ds.users.columns else ds.items
        uniq, index = np.unique(frame[name].astype(str).to_numpy(), return_inverse=True)
        vecs = encoder.encode(list(uniq), MAX_LENGTHS[name], desc=f"embed {name}", progress=progress)
        tables[name] = FieldTable(uniq.astype(str), vecs, index.astype(np.int32))
        if encoder.config.pooling == "notebook":
            padded[name] = encoder.padded_length(list(uniq), MAX_LENGTHS[name])
    return tables, padded


def field_specs(
    names: tuple[str, ...], tables: dict[str, FieldTable], raw: dict[str, np.ndarray], fit_rows: np.ndarray
) -> list[FieldSpec]:
    """Specs for one side; min-max scalers are fitted on ``fit_rows`` (the split's training entities)."""
    specs = []
    for n in names:
        if n in NUMERIC_FIELDS:
            vals = raw[n][fit_rows]
            specs.append(FieldSpec(n, MINMAX, 1, lo=float(vals.min()), hi=float(vals.max())))
        else:
            specs.append(FieldSpec(n, TEXT, int(tables[n].vectors.shape[1]), max_length=MAX_LENGTHS[n]))
    return specs


def training_rows(
    split: splits.Split, recipe: FitConfig, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, items, labels): training positives then sampled negatives, shuffled as the recipe says."""
    # Parity order: the notebook concatenates its train positives (split order) and the negatives.
    pu, pi = split.train_pairs.users, split.train_pairs.items
    u = np.concatenate([pu, split.negatives.users]).astype(np.int32)
    i = np.concatenate([pi, split.negatives.items]).astype(np.int32)
    y = np.concatenate([np.ones(len(pu)), np.zeros(len(split.negatives))]).astype(np.float32)
    if recipe.sample is not None:
        # interactions.sample(frac=1, random_state=42).head(200000)
        order = np.random.RandomState(seed).permutation(len(u))[: recipe.sample]
    else:
        order = np.random.default_rng([seed, 7]).permutation(len(u))
    return u[order], i[order], y[order]


def train(data_dir: Path | str, out_dir: Path | str, cfg: TrainConfig = TrainConfig()) -> dict:
    """Runs the whole training job and writes the artifacts folder (atomically).

    Returns:
        metrics.json's content: ``{"holdout": {"seed": {...}, "two_tower": {...}, "random": ...}, "cold": ...}``.

    Long because it is one job's steps in order, each a call into its own module: read top to bottom, it is the job's outline.
    """
    import tensorflow as tf

    for kind in cfg.models:
        if kind not in FEATURE_SETS:
            raise ValueError(f"model must be one of {sorted(FEATURE_SETS)} (got {kind!r})")
    recipe = cfg.recipe()
    tf.config.experimental.enable_op_determinism()  # same seed -> same weights -> same metrics
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    ds = load_dataset(data_dir)
    events = recent = None
    if cfg.events:  # what users did since: RecordInteractions' journal joins the positives
        from .events import merge_events

        ds, events, recent = merge_events(ds, cfg.events)  # recent: each user's latest, held out
    encoder = open_encoder(cfg.encoder)  # torch, or an exported ONNX variant (--text-encoder)
    needed = {
        f for k in cfg.models for side in FEATURE_SETS[k].values() for f in side if f not in NUMERIC_FIELDS
    }
    t0 = time.perf_counter()
    tables, padded = embed_fields(ds, encoder, needed, cfg.progress)
    timings["embed_s"] = time.perf_counter() - t0

    raw_user = {"age": ds.users["age"].to_numpy(dtype=np.float64)}
    raw_item = {"price": ds.items["price"].to_numpy(dtype=np.float64)}
    ids = ds.users["user_id"].to_numpy()
    # One split alive at a time: each holds its negatives (10⁸ pairs at 1,000,000 users). split_s sums both.
    split_names = ("holdout", "cold") if cfg.cold else ("holdout",)
    make_split = {"holdout": splits.holdout_split, "cold": splits.cold_split}
    timings["split_s"] = 0.0

    metrics: dict[str, dict] = {}
    histories: dict[str, dict] = {}
    evaluation: dict[str, dict] = {}  # per split: the evaluation sample's size (None: every user)
    hybrid_choice = None  # chosen on the holdout split's validation; the cold split reuses it
    model_entries: dict[str, dict] = {k: {"kind": k, "splits": {}} for k in cfg.models}
    with atomic_dir(out_dir) as tmp:
        for split_name in split_names:
            t0 = time.perf_counter()
            split = make_split[split_name](ds.positives, ids, seed=cfg.seed)
            timings["split_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            n_eval = default_eval_users(ds.n_users, ds.n_items) if cfg.eval_users is None else cfg.eval_users
            block = baselines.OracleScores.replay_block(ds.root)
            judged = sample_users(split.test, n_eval or None, cfg.seed, block)  # one sample for every model
            evaluation[split_name] = {"sample": None if judged is None else len(judged), "seed": cfg.seed}
            metrics[split_name] = dict(
                baselines.evaluate_baselines(split.train, split.test, ds.root, cfg.ks, users=judged)
            )
            if recent is not None and recent.nnz and split_name == "holdout":
                pop = baselines.popularity(split.train)
                metrics[split_name]["mostpop"].update(
                    time_metrics(lambda u, p=pop: np.broadcast_to(p, (len(u), len(p))), recent, split.train)
                )
            pop = baselines.popularity(split.train)
            new_items = new_item_ndcg(lambda u, p=pop: np.broadcast_to(p, (len(u), len(p))), split, judged)
            if new_items is not None:  # the segment's floor: popularity knows nothing of new items
                metrics[split_name]["mostpop"][NEW_ITEMS_KEY] = new_items
            timings[f"baselines_{split_name}_s"] = time.perf_counter() - t0
            warm_users = np.setdiff1d(np.arange(ds.n_users), split.cold_users)
            warm_items = np.setdiff1d(np.arange(ds.n_items), split.cold_items)
            rows = training_rows(split, recipe, cfg.seed)
            for kind in cfg.models:
                uspec = field_specs(FEATURE_SETS[kind]["user"], tables, raw_user, warm_users)
                ispec = field_specs(FEATURE_SETS[kind]["item"], tables, raw_item, warm_items)
                if kind in ID_KINDS:  # its own loop, recipe choice and vectors: trainer/hybrid/train.py
                    from .hybrid.rows import FeatureRows
                    from .hybrid.train import fit_hybrid

                    # Rows built when a step or a block needs them, never the entities x features matrices.
                    U = FeatureRows.of_tables(uspec, tables, raw_user)
                    I = FeatureRows.of_tables(ispec, tables, raw_item)
                    desc = f"{kind}/{split_name}"
                    fitted = fit_hybrid(U, I, split, cfg, hybrid_choice, desc, uspec, users=judged)
                    model, history, secs, uvec, ivec, hybrid_choice, extra = fitted
                    t0 = time.perf_counter()
                else:
                    # Parts, not matrices: a batch's rows are gathered by id (the matrices: 7.7 GB at 10⁶ x 10⁶).
                    U = feats.feature_parts(uspec, tables, raw_user)
                    I = feats.feature_parts(ispec, tables, raw_item)
                    model, history, secs = fit_model(kind, U, I, rows, cfg, recipe, f"{kind}/{split_name}")
                    t0 = time.perf_counter()
                    uvec, ivec = tower_scores(
                        model, kind, (uspec, tables, raw_user), (ispec, tables, raw_item)
                    )
                    extra = {}
                m = evaluate_towers(uvec, ivec, split, cfg.ks, judged)
                if recent is not None and recent.nnz and split_name == "holdout":
                    m.update(time_metrics(lambda u, uv=uvec, iv=ivec: uv[u] @ iv.T, recent, split.train))
                m["train_seconds"] = secs
                m["epochs"] = len(history.get("loss", []))
                m.update(extra.get("metrics", {}))
                metrics[split_name][kind] = m
                timings[f"fit_{kind}_{split_name}_s"] = secs
                timings[f"eval_{kind}_{split_name}_s"] = time.perf_counter() - t0
                histories[f"{kind}/{split_name}"] = history
                rel = Path("models") / kind / split_name
                (tmp / rel).mkdir(parents=True, exist_ok=True)
                model.save(tmp / rel / "model.keras")
                write_json(tmp / rel / "history.json", history)
                model_entries[kind]["splits"][split_name] = {
                    "model": str(rel / "model.keras"),
                    "features": {"user": [s.to_json() for s in uspec], "item": [s.to_json() for s in ispec]},
                    "user_dim": feats.input_dim(uspec),
                    "item_dim": feats.input_dim(ispec),
                    "epochs": m["epochs"],
                    "train_seconds": secs,
                }
                model_entries[kind]["splits"][split_name].update(extra.get("entry", {}))
                _LOGGER.info(
                    "%s/%s: ndcg@10 %.4f (mostpop %.4f) in %.1f s",
                    kind,
                    split_name,
                    m.get("ndcg@10", 0),
                    metrics[split_name]["mostpop"].get("ndcg@10", 0),
                    secs,
                )
            (tmp / "splits").mkdir(exist_ok=True)
            save_recorded_split(tmp / "splits" / f"{split_name}.npz", split.recorded())
            split = rows = U = I = None  # before the next split is built

        # The served default is the best model on the holdout ranking, not on the notebook's mean score.
        default = max(cfg.models, key=lambda k: metrics["holdout"][k]["ndcg@10"])
        save_tables(tmp / "embeddings.npz", tables)
        ds.users.to_csv(tmp / "users.csv", index=False)
        ds.items.to_csv(tmp / "items.csv", index=False)
        timings["total_s"] = time.perf_counter() - t_start
        write_json(tmp / "metrics.json", metrics)
        chosen = {s: t["hybrid"]["recipe"]["chosen"] for s, t in metrics.items() if "hybrid" in t}
        manifest = {
            "format": TRAIN_FORMAT,
            "format_version": FORMAT_VERSION,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": {
                "root": str(Path(data_dir).resolve()),
                "users": ds.n_users,
                "items": ds.n_items,
                "positives": ds.positives.nnz,
                "density": ds.density,
                **({"events": events} if events is not None else {}),
            },
            "encoder": {
                "model": encoder.model_ref,
                "name": encoder_name(encoder.model_ref),
                "fingerprint": encoder.fingerprint,
                "pooling": cfg.encoder.pooling,
                "dim": encoder.dim,
                "max_lengths": {f: MAX_LENGTHS[f] for f in sorted(needed)},
                "padded_lengths": padded,
                **encoder.describe(),  # runtime (torch / onnxruntime) and, for ONNX, the variant
            },
            "recipe": {
                "preset": cfg.preset,
                "fit": asdict(recipe),
                "seed": cfg.seed,
                "embedding_dim": cfg.embedding_dim,
                "hidden": list(cfg.hidden),
                "ks": list(cfg.ks),
                **({"hybrid": chosen} if chosen else {}),
            },
            "models": model_entries,
            "default_model": default,
            "splits": {s: f"splits/{s}.npz" for s in split_names},
            "evaluation": evaluation,
            "timings": timings,
            "versions": package_versions(("numpy", "tensorflow", "keras", "torch", "transformers", "pandas")),
            "platform": platform.platform(),
        }
        write_json(tmp / "manifest.json", manifest)
        from .report import write_report

        write_report(tmp, manifest, metrics, histories)
    _LOGGER.info("wrote %s in %.1f s (default model: %s)", out_dir, timings["total_s"], default)
    return metrics


def time_metrics(scores, recent: CSR, train: CSR) -> dict[str, float]:
    """The time split: NDCG@10 and recall@10 on each user's most recent recorded interaction, held out
    of training (trainer/events.py), ranking the catalogue with the split's training positives masked."""
    from towerserve.server.core.ranking_metrics import full_ranking_metrics

    row = full_ranking_metrics(scores, recent, train, (10,))
    return {
        "time_ndcg@10": float(row["ndcg@10"]),
        "time_recall@10": float(row["recall@10"]),
        "time_users": int(row["users"]),
    }
