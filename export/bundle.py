"""`towerserve export`: train artifacts -> a verified serving folder (ONNX, vectors, catalogue, manifest)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from towerserve.server.core.features import FieldSpec, feature_matrix, input_dim, load_tables
from towerserve.server.core.manifest import (
    FORMAT_VERSION,
    SERVED_SPLIT,
    SERVING_FORMAT,
    TRAIN_FORMAT,
    ArtifactError,
    Catalog,
    EncoderEntry,
    EncoderVariant,
    Features,
    FullGraph,
    ModelEntry,
    ModelSplit,
    ServingManifest,
    SplitFile,
    TowerGraph,
    Training,
    file_entries,
    sha256_file,
)
from towerserve.server.core.numerics import cosine_rows, sigmoid

from .encoder import trained
from .encoder import variants as enc_export
from .index import DEFAULT_MIN_RECALL, export_index
from .parity import ParityReport, parity_rows
from .towers import ITEM_OUTPUT, SCORE_OUTPUT, USER_OUTPUT, catalogue_vectors, export_model
from .users import export_user_vectors

_LOGGER = logging.getLogger(__name__)

SERVING_DIR = "serving"


@dataclass(frozen=True)
class ExportConfig:
    """What `towerserve export` writes and checks.

    Attributes:
        encoder: which encoder variants to build (see EncoderExportConfig).
        parity_users: users checked per tower (the notebook-scale acceptance asks for 1,000).
        atol: fp32 tolerance for every parity line.
        out: serving folder (default ARTIFACTS/serving).
        triton: also write a Triton model repository here.
        index: the served split's item index: auto (by catalogue size), exact, hnsw or ivf.
        min_recall: the index's recall@10 floor against exact search (0: accept any).
    """

    encoder: enc_export.EncoderExportConfig = enc_export.EncoderExportConfig()
    parity_users: int = 1000
    atol: float = 1e-4
    out: Path | None = None
    triton: Path | None = None
    index: str = "auto"
    min_recall: float = DEFAULT_MIN_RECALL


def read_train_manifest(artifacts: Path) -> dict:
    path = artifacts / "manifest.json"
    if not path.is_file():
        raise ArtifactError(path, "not found: run `towerserve train --out ARTIFACTS` first")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != TRAIN_FORMAT:
        raise ArtifactError(path, f"format is {manifest.get('format')!r}, expected {TRAIN_FORMAT!r}")
    return manifest


def _raw(artifacts: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    import pandas as pd

    users = pd.read_csv(artifacts / "users.csv", dtype={"user_id": str})
    items = pd.read_csv(artifacts / "items.csv", dtype={"item_id": str})
    return {"age": users["age"].to_numpy(np.float64)}, {"price": items["price"].to_numpy(np.float64)}


def export_encoder(tmp: Path, train: dict, tables, cfg: ExportConfig, report: ParityReport) -> EncoderEntry:
    """Builds encoder variants in tmp/encoder and checks each against the training-time torch vectors.

    Long because it is one job's steps in order, each a call into its own module: read top to bottom, it is the job's outline.
    """
    import onnxruntime as ort

    from towerserve.server.engine.encoder import OnnxTextEncoder

    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    enc = train["encoder"]
    out = tmp / "encoder"
    out.mkdir()
    t0 = time.perf_counter()
    fp32, input_names, _ = enc_export.export_fp32(enc["model"], enc["pooling"], out, cfg.encoder)
    from transformers import AutoConfig

    mcfg = AutoConfig.from_pretrained(enc["model"])
    heads, hidden = int(mcfg.num_attention_heads), int(mcfg.hidden_size)
    variants = {"fp32": {"file": "encoder/model.onnx", "precision": "fp32", "device": "cpu"}}
    if cfg.encoder.optimize:
        enc_export.optimize(fp32, out / "model.opt.onnx", heads, hidden)
        variants["optimized"] = {"file": "encoder/model.opt.onnx", "precision": "fp32", "device": "cpu"}
    if cfg.encoder.int8 or trained.trained_variant(enc) == "int8":  # the towers' encoder is always built
        enc_export.quantize_int8(fp32, out / "model.int8.onnx")
        variants["int8"] = {"file": "encoder/model.int8.onnx", "precision": "int8", "device": "cpu"}
    if cfg.encoder.fp16:
        enc_export.optimize(fp32, out / "model.fp16.onnx", heads, hidden, use_gpu=gpu, fp16=True)
        variants["fp16"] = {"file": "encoder/model.fp16.onnx", "precision": "fp16", "device": "cuda"}
    trained.adopt_training_graph(enc, tmp, variants)  # the very graph training ran, when it is there
    build_s = time.perf_counter() - t0

    # Reference: the vectors training computed (torch, or the ONNX variant) for every distinct text.
    padded = enc.get("padded_lengths", {})
    for name, v in variants.items():
        # fp16 is meant for CUDA; where there is none, ORT's CPU kernels can still run it for the check.
        providers = (
            ("CUDAExecutionProvider", "CPUExecutionProvider")
            if v["device"] == "cuda" and gpu
            else ("CPUExecutionProvider",)
        )
        try:
            runner = OnnxTextEncoder(
                tmp / v["file"], out / "tokenizer.json", enc["pooling"], providers=providers, threads=2
            )
        except Exception as err:  # noqa: BLE001 - a graph this machine cannot run is checked where it runs
            report.skip(
                f"encoder {name}", f"cannot run here ({type(err).__name__}); the server checks it at load"
            )
            v["parity"] = "skipped: the exporting machine cannot run it"
            continue
        ok = True
        cos_means = []
        for field in sorted(enc["max_lengths"]):
            rows = parity_rows(len(tables[field].texts))
            ref, texts = tables[field].vectors[rows], [str(tables[field].texts[r]) for r in rows]
            got = runner.encode(texts, enc["max_lengths"][field], padded.get(field))
            label = f"encoder {name} / {field} ({len(ref)} of {len(tables[field].texts)} texts)"
            c = trained.check(report, label, name, v["precision"], ref, got, cfg.atol, enc)
            ok &= c.ok
            cos_means.append(float(cosine_rows(ref, got).mean()))
        v["cosine_mean"] = min(cos_means)  # the worst field's mean cosine to the torch vectors
        v["accepted"] = bool(ok)
    for optional in ("int8", "fp16"):  # variants that miss their gate are dropped, not shipped
        if optional in variants and variants[optional].get("accepted") is False:
            (tmp / variants[optional]["file"]).unlink()
            del variants[optional]
    default = trained.default_variant(enc, variants)  # the towers' own encoder, when ONNX trained them
    return EncoderEntry(
        model=enc["model"],
        name=enc.get("name", enc["model"]),
        fingerprint=enc["fingerprint"],
        pooling=enc["pooling"],
        dim=enc["dim"],
        max_lengths=enc["max_lengths"],
        padded_lengths=padded,
        inputs=tuple(input_names),
        output="embedding",
        tokenizer_file="encoder/tokenizer.json",
        opset=cfg.encoder.opset,
        variants={name: EncoderVariant(**v) for name, v in variants.items()},
        default_variant=default,
        gpu_variant="fp16" if "fp16" in variants else "fp32",
        build_seconds=build_s,
        trained_with=trained.served_trained_with(enc),
    )


def export_models(
    artifacts: Path,
    tmp: Path,
    train: dict,
    tables,
    raw_user,
    raw_item,
    cfg: ExportConfig,
    report: ParityReport,
) -> dict[str, ModelEntry]:
    """Converts every (model, split) to ONNX, checks parity on real inputs, saves item vectors.

    Long because it is one job's steps in order, each a call into its own module: read top to bottom, it is the job's outline.
    """
    import onnxruntime as ort

    from towerserve.server.core.splits import load_recorded_split
    from towerserve.trainer.models import ids_and_history, user_independent

    from . import hybrid

    entries = {}
    rng = np.random.default_rng(0)
    for kind, info in train["models"].items():
        splits = {}
        for split, s in info["splits"].items():
            rel = Path("models") / kind / split
            paths = export_model(artifacts / s["model"], kind, tmp / rel, cfg.encoder.opset)
            model, user_k, item_k = paths.pop("keras")
            uspec = [FieldSpec.from_json(d) for d in s["features"]["user"]]
            ispec = [FieldSpec.from_json(d) for d in s["features"]["item"]]
            n_users, n_items = len(raw_user["age"]), len(raw_item["price"])
            users = np.sort(rng.choice(n_users, size=min(cfg.parity_users, n_users), replace=False))
            sess = {
                k: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for k, p in paths.items()
            }
            ref, io = catalogue_vectors(sess["item_tower"], item_k, ispec, tables, raw_item, n_items)
            report.allclose(f"{kind}/{split} item_tower (all {n_items} items)", ref, io, cfg.atol)
            ids = {}
            if ids_and_history(kind):
                # Ids and histories: their own parity cases; catalogue vectors gain the ID rows.
                recorded = load_recorded_split(artifacts / train["splits"][s.get("history_split", split)])
                uo, io = hybrid.check_split(
                    f"{kind}/{split}",
                    model,
                    sess,
                    feature_matrix(uspec, tables, raw_user, users),
                    functools.partial(feature_matrix, ispec, tables, raw_item),
                    n_items,
                    recorded,
                    users,
                    io,
                    cfg.atol,
                    report,
                    rng,
                )
                ids = {
                    "id_input": hybrid.ID_INPUT,
                    "history_input": hybrid.HISTORY_INPUT,
                    "history_pooling": s.get("history_pooling", "mean"),
                    "max_history": int(s.get("max_history", 100)),
                }
            else:  # only the sampled users' and items' feature rows, as for the hybrid
                Uu = feature_matrix(uspec, tables, raw_user, users)
                uo = sess["user_tower"].run([USER_OUTPUT], {"user_features": Uu})[0]
                report.allclose(
                    f"{kind}/{split} user_tower ({len(users)} users)",
                    np.asarray(user_k(Uu)),
                    uo,
                    cfg.atol,
                )
                pairs_i = rng.integers(0, n_items, size=len(users))
                Ii = feature_matrix(ispec, tables, raw_item, pairs_i)
                ref = np.asarray(model([Uu, Ii])).reshape(-1)
                full = (
                    sess["full"]
                    .run([SCORE_OUTPUT], {"user_features": Uu, "item_features": Ii})[0]
                    .reshape(-1)
                )
                report.allclose(f"{kind}/{split} full model ({len(users)} pairs)", ref, full, cfg.atol)
                dot = sigmoid(np.einsum("nd,nd->n", uo, io[pairs_i]))
                report.allclose(f"{kind}/{split} sigmoid(user . item) vs Keras model", ref, dot, cfg.atol)
            np.save(tmp / rel / "item_vectors.npy", io.astype(np.float32))
            splits[split] = ModelSplit(
                user_tower=TowerGraph(
                    file=str(rel / "user_tower.onnx"),
                    input="user_features",
                    output=USER_OUTPUT,
                    input_dim=input_dim(uspec),
                    output_dim=int(uo.shape[1]),
                    **ids,
                ),
                item_tower=TowerGraph(
                    file=str(rel / "item_tower.onnx"),
                    input="item_features",
                    output=ITEM_OUTPUT,
                    input_dim=input_dim(ispec),
                    output_dim=int(io.shape[1]),
                ),
                full=hybrid.full_graph(rel)
                if ids
                else FullGraph(
                    file=str(rel / "full.onnx"),
                    inputs=("user_features", "item_features"),
                    output=SCORE_OUTPUT,
                ),
                item_vectors_file=str(rel / "item_vectors.npy"),
                features=Features(user=tuple(uspec), item=tuple(ispec)),
                # Only the served split is searched per request; a user-independent model walks one order.
                index=export_index(tmp, rel, cfg.index, io, uo, cfg.min_recall)
                if split == SERVED_SPLIT and not user_independent(kind)
                else None,
            )
            # Last: it runs the server's own code on the graphs and vectors just written.
            recorded_train = load_recorded_split(artifacts / train["splits"][split]).train
            vectors = export_user_vectors(
                tmp, rel, splits[split], split, tables, raw_user, n_users, recorded_train
            )
            splits[split] = dataclasses.replace(splits[split], user_vectors=vectors)
        # The version changes when any tower of any split changes (Evaluate serves the cold split too).
        digest = hashlib.sha256()
        for split in sorted(splits):
            for tower in (splits[split].user_tower, splits[split].item_tower):
                digest.update(sha256_file(tmp / tower.file).encode())
        entries[kind] = ModelEntry(
            kind=kind,
            user_independent=user_independent(kind),
            splits=splits,
            model_version=f"{kind}-{digest.hexdigest()[:10]}",
        )
    return entries


TRITON_README = """# towerserve Triton model repository

Written by `towerserve export --triton`. Serve it with
`tritonserver --model-repository=<this folder>`.

- `text_encoder` (fp32) / `text_encoder_fp16` (GPU): inputs are token ids, attention mask and
  token type ids from the tokenizer in `{tokenizer}` (truncate per field: {lengths}); the output is
  the pooled ({pooling}) sentence embedding.
- `user_tower` / `item_tower`: the `{model}` model's towers. Inputs are the feature vectors
  described in the serving manifest (`features`); a pair's score is `sigmoid(user_vector . item_vector)`.
  Precomputed item vectors for the catalogue are in `{vectors}`.

Ranking (dot products, masking seen items, top-k) happens in the caller; towerserve's own gRPC
server does all of it in one request.
"""


def main_export(artifacts: Path | str, cfg: ExportConfig = ExportConfig()) -> ServingManifest:
    """Builds ARTIFACTS/serving (or cfg.out) atomically; raises ParityError before replacing anything.

    Long because it is one job's steps in order, each a call into its own module: read top to bottom, it is the job's outline.
    """
    from towerserve.trainer.artifacts import atomic_dir, package_versions, write_json

    artifacts = Path(artifacts)
    train = read_train_manifest(artifacts)
    for name in ("embeddings.npz", "users.csv", "items.csv", *train["splits"].values()):
        if not (artifacts / name).is_file():
            raise ArtifactError(artifacts / name, "missing from the training artifacts")
    t0 = time.perf_counter()
    tables = load_tables(artifacts / "embeddings.npz")
    raw_user, raw_item = _raw(artifacts)
    report = ParityReport()
    out = Path(cfg.out) if cfg.out else artifacts / SERVING_DIR
    with atomic_dir(out) as tmp:
        encoder = export_encoder(tmp, train, tables, cfg, report)
        models = export_models(artifacts, tmp, train, tables, raw_user, raw_item, cfg, report)
        report.raise_if_failed()  # before the rename: a failed export replaces nothing
        (tmp / "catalog").mkdir()
        for name in ("users.csv", "items.csv", "embeddings.npz"):
            shutil.copy2(artifacts / name, tmp / "catalog" / name)
        (tmp / "splits").mkdir()
        for _split, rel in train["splits"].items():
            shutil.copy2(artifacts / rel, tmp / "splits" / Path(rel).name)
        metrics = (
            json.loads((artifacts / "metrics.json").read_text())
            if (artifacts / "metrics.json").is_file()
            else {}
        )
        manifest = ServingManifest(
            format=SERVING_FORMAT,
            format_version=FORMAT_VERSION,
            created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            default_model=train["default_model"],
            encoder=encoder,
            models=models,
            catalog=Catalog(
                users_file="catalog/users.csv",
                items_file="catalog/items.csv",
                embeddings_file="catalog/embeddings.npz",
                users=train["data"]["users"],
                items=train["data"]["items"],
            ),
            splits={s: SplitFile(file=f"splits/{Path(rel).name}") for s, rel in train["splits"].items()},
            training=Training(data=train["data"], recipe=train["recipe"], metrics=metrics),
            parity=tuple(report.checks),
            export_seconds=time.perf_counter() - t0,
            versions=package_versions(
                (
                    "numpy",
                    "onnx",
                    "onnxruntime",
                    "tf2onnx",
                    "tensorflow",
                    "keras",
                    "torch",
                    "transformers",
                    "tokenizers",
                )
            ),
            files=file_entries(tmp),  # every file is in place: manifest.json itself is not listed
        )
        write_json(tmp / "manifest.json", manifest.to_json())
    if cfg.triton:
        default = manifest.models[manifest.default_model].splits[SERVED_SPLIT]
        repo = {
            "text_encoder": (out / "encoder" / "model.onnx", 256),
            "user_tower": (out / default.user_tower.file, 1024),
            "item_tower": (out / default.item_tower.file, 4096),
        }
        if "fp16" in encoder.variants:
            repo["text_encoder_fp16"] = (out / encoder.variants["fp16"].file, 512)
        readme = TRITON_README.format(
            tokenizer=out / "encoder" / "tokenizer.json",
            lengths=encoder.max_lengths,
            pooling=encoder.pooling,
            model=manifest.default_model,
            vectors=out / default.item_vectors_file,
        )
        from .triton import write_repository

        with atomic_dir(cfg.triton) as ttmp:
            write_repository(ttmp, repo, readme)
    _LOGGER.info("exported %s in %.1f s", out, time.perf_counter() - t0)
    return manifest
