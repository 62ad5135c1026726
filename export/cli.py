"""`towerserve export`: its flags and its command (only argparse here; the exporters load inside)."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    from .bundle import ExportConfig, main_export
    from .encoder.variants import EncoderExportConfig

    cfg = ExportConfig(
        encoder=EncoderExportConfig(
            opset=args.opset, optimize=not args.no_optimize, int8=not args.no_int8, fp16=not args.no_fp16
        ),
        parity_users=args.parity_users,
        out=args.out,
        triton=args.triton,
        index=args.index,
        min_recall=args.min_recall,
    )
    manifest = main_export(args.artifacts, cfg)
    enc, default = manifest.encoder, manifest.default_model
    print(f"\nserving artifacts: {args.out or Path(args.artifacts) / 'serving'}")
    print(
        f"default model: {default} ({manifest.models[default].model_version}); "
        f"encoder variant: {enc.default_variant} (of {', '.join(enc.variants)})"
    )
    if args.triton:
        print(f"triton model repository: {args.triton}")
    return 0


def cmd_export_encoder(args: argparse.Namespace) -> int:
    from .encoder.folder import export_encoder_folder

    meta = export_encoder_folder(
        args.out,
        model_ref=args.encoder or "",
        pooling=args.pooling,
        data=args.data,
        sample=args.sample,
        int8=not args.no_int8,
        opset=args.opset,
        threads=args.threads,
    )
    enc = meta["encoder"]
    print(f"\nencoder folder: {args.out}")
    print(
        f"variants: {', '.join(enc['variants'])}; `towerserve train --text-encoder {args.out}` embeds "
        f"with {enc['default_variant']}"
    )
    return 0


def register(sub) -> None:
    """Adds `export` and `export-encoder` to the `towerserve` subcommands (``sub`` is argparse's subparsers action)."""
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
    p.add_argument(
        "--index",
        choices=("auto", "exact", "hnsw", "ivf"),
        default="auto",
        help="how Recommend searches the items: auto (exact up to 50,000 items; above, IVF and HNSW both "
        "tuned to --min-recall, the faster one kept), or force one",
    )
    p.add_argument(
        "--min-recall",
        type=float,
        default=0.95,
        help="refuse an approximate index whose recall@10 vs exact stays below this (default 0.95; 0: any)",
    )
    p.add_argument("--no-optimize", action="store_true", help="skip the ORT transformer-optimised encoder")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 encoder")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 (GPU) encoder")
    p.set_defaults(func=cmd_export, extra="train")

    p = sub.add_parser(
        "export-encoder",
        help="export only the text encoder (fp32 and int8 ONNX), for `train --text-encoder`",
        description="Export the text encoder to ONNX before training: fp32 (checked against torch, "
        "atol 1e-4) and per-channel int8 (kept only if its mean cosine to torch is >= 0.99 on every "
        "text field), the tokenizer and encoder.json, the same graphs the serving bundle has. "
        "`towerserve train --text-encoder OUT` then embeds with the fastest variant that passed.",
    )
    p.add_argument("--out", required=True, type=Path, help="encoder folder to write (replaced atomically)")
    p.add_argument(
        "--encoder",
        help="BERT-family model name or folder, as `train --encoder` takes it (default: packaged "
        "all-MiniLM-L6-v2)",
    )
    p.add_argument(
        "--pooling",
        choices=("mean", "notebook"),
        default="mean",
        help="pooling traced into the graph; `train --pooling` must match (default mean)",
    )
    p.add_argument(
        "--data",
        type=Path,
        help="check the gates on this data set's texts (users.csv, items.csv; default: a tiny generated one)",
    )
    p.add_argument("--sample", type=int, default=1000, help="distinct texts checked per field (default 1000)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    p.add_argument(
        "--no-int8", action="store_true", help="skip the int8 encoder (train then embeds with fp32)"
    )
    p.set_defaults(func=cmd_export_encoder, extra="train")
