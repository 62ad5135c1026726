"""Text-encoder throughput on the catalogue's item descriptions, torch eager vs ONNX Runtime variants, 2 threads: `.venv/bin/python benchmarks/bench_encoder.py` (~1.5-2.5 min; --rounds 1 --limit 256 for a smoke run).

Every variant encodes the same texts (max_length 200, batch 64, mean pooling) with 2 threads: torch
via ``trainer.text.TextEncoder`` (model loaded, no embedding cache), ONNX via ``server.encoder.
OnnxTextEncoder`` (threads=2). Variants run interleaved, round by round, so machine noise hits all of
them alike; each figure is the median over rounds. Cosine is per text against the torch vectors.
The target: the server's default CPU variant is >= 1.5x torch eager at mean cosine >= 0.99.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_ARTIFACTS,
    DEFAULT_DATA,
    OFFLINE_ENV,
    median,
    serving_dir,
    table,
    verdict,
    write_result,
)

os.environ.update(OFFLINE_ENV)

import numpy as np  # noqa: E402

THREADS = 2
MAX_LENGTH = 200  # MAX_LENGTHS["description"]
BATCH = 64
TARGET_SPEEDUP = 1.5
TARGET_COSINE = 0.99
# name -> (manifest variant, file in <serving>/encoder, remark)
ONNX_VARIANTS = {
    "ORT fp32": ("fp32", "model.onnx", ""),
    "ORT optimized": ("optimized", "model.opt.onnx", ""),
    "ORT int8": ("int8", "model.int8.onnx", ""),
    "ORT fp16": ("fp16", "model.fp16.onnx", "not a CPU variant"),
}


def read_descriptions(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["description"] for row in csv.DictReader(fh)]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        help=f"training artifacts (its serving/ folder is used; default {DEFAULT_ARTIFACTS})",
    )
    parser.add_argument(
        "--data", type=Path, help=f"read items.csv from this data folder instead (e.g. {DEFAULT_DATA})"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds (default 3; median reported)"
    )
    parser.add_argument("--limit", type=int, help="only the first N descriptions (default: all)")
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16 graph (slow on CPU)")
    args = parser.parse_args()

    import torch

    from towerserve.server.encoder import OnnxTextEncoder
    from towerserve.trainer.text import EncoderConfig, TextEncoder

    serving = serving_dir(args.artifacts)
    manifest = json.loads((serving / "manifest.json").read_text())
    enc = manifest["encoder"]
    items_csv = (args.data / "items.csv") if args.data else serving / "catalog" / "items.csv"
    texts = read_descriptions(items_csv)[: args.limit]
    torch.set_num_threads(THREADS)

    # ---- build every runner (not timed), then one warm-up batch each
    runners: dict[str, Callable[[list[str]], np.ndarray]] = {}
    remarks: dict[str, str] = {"torch eager": "reference"}
    torch_enc = TextEncoder(EncoderConfig(pooling="mean", batch_size=BATCH, threads=THREADS, cache_dir=None))
    _ = torch_enc.model  # load now, outside the timed runs
    runners["torch eager"] = lambda t: torch_enc.encode(t, MAX_LENGTH, progress=False)
    for name, (variant, file, remark) in ONNX_VARIANTS.items():
        path = serving / "encoder" / file
        if variant == "fp16" and args.no_fp16:
            continue
        if not path.is_file():
            print(f"  {name}: {path} absent, skipped")
            continue
        try:
            runner = OnnxTextEncoder(
                path, serving / enc["tokenizer_file"], enc["pooling"], threads=THREADS, batch_size=BATCH
            )
            runner.encode(texts[:BATCH], MAX_LENGTH)
        except Exception as err:  # noqa: BLE001 - fp16 may have no CPU kernels
            print(f"  {name}: does not run on CPU here ({type(err).__name__}: {str(err)[:120]}), skipped")
            continue
        runners[name] = lambda t, r=runner: r.encode(t, MAX_LENGTH)
        remarks[name] = remark
    for run in runners.values():
        run(texts[:BATCH])  # warm-up: first-batch allocations, thread pools

    # ---- interleaved rounds: torch, fp32, opt, int8[, fp16]; then again
    times: dict[str, list[float]] = {n: [] for n in runners}
    outputs: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            out = run(texts)
            times[name].append(time.perf_counter() - t0)
            outputs[name] = out
        print(
            f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in runners),
            file=sys.stderr,
        )

    default = enc["default_variant"]
    default_name = next((n for n, (v, _, _) in ONNX_VARIANTS.items() if v == default), default)
    ref = outputs["torch eager"]
    base, base_best = median(times["torch eager"]), min(times["torch eager"])
    rows = []
    for name in runners:
        secs = median(times[name])
        cos = cosine_rows(ref, outputs[name])
        rows.append(
            {
                "variant": name,
                "seconds": secs,
                "texts_per_s": len(texts) / secs,
                "speedup": base / secs,
                "speedup_best_runs": base_best / min(times[name]),
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
                "server_default": name == default_name,
                "remark": remarks.get(name, ""),
                "runs_s": times[name],
            }
        )

    print(
        f"\ntext encoder on {len(texts)} item descriptions ({items_csv}), max_length {MAX_LENGTH}, batch {BATCH}, "
        f"{THREADS} threads, median of {args.rounds} interleaved rounds"
    )
    print(
        table(
            [
                "variant",
                "seconds",
                "texts/s",
                "speed-up",
                "best/best",
                "cos mean",
                "cos min",
                "server",
                "note",
            ],
            [
                [
                    r["variant"],
                    f"{r['seconds']:.2f}",
                    f"{r['texts_per_s']:.0f}",
                    f"{r['speedup']:.2f}x",
                    f"{r['speedup_best_runs']:.2f}x",
                    f"{r['cosine_mean']:.5f}",
                    f"{r['cosine_min']:.5f}",
                    "default" if r["server_default"] else "",
                    r["remark"],
                ]
                for r in rows
            ],
        )
    )
    print(
        "speed-up: median vs median; best/best: fastest run vs fastest run (less sensitive to a noisy neighbour)"
    )
    d = next((r for r in rows if r["server_default"]), None)
    if d is None:
        ok = False
        print(f"server default variant {default!r}: not measured here -> FAIL")
    else:
        ok = d["speedup"] >= TARGET_SPEEDUP and d["cosine_mean"] >= TARGET_COSINE
        print(
            f"server default ({default_name}): {d['speedup']:.2f}x torch eager at cosine mean {d['cosine_mean']:.4f} "
            f"(min {d['cosine_min']:.4f}); target >= {TARGET_SPEEDUP}x at cosine >= {TARGET_COSINE}: {verdict(ok)}"
        )
    path = write_result(
        "bench_encoder",
        {
            "texts": len(texts),
            "source": str(items_csv),
            "max_length": MAX_LENGTH,
            "batch": BATCH,
            "threads": THREADS,
            "rounds": args.rounds,
            "server_default_variant": default,
            "variants": rows,
            "target": {"speedup": TARGET_SPEEDUP, "cosine_mean": TARGET_COSINE, "pass": ok},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
