"""Training-time embedding throughput, torch eager vs `train --text-encoder` (the exported int8 graph),
side by side, 2 threads: `.venv/bin/python benchmarks/bench_train_encoder.py --encoder-folder E`
(E from `towerserve export-encoder --out E`; ~5-8 min on an idle machine at the default 5,000 texts).

Both go through the classes `towerserve train` embeds with: trainer.text.TextEncoder (torch) and
trainer.onnx_text.OnnxEncoder (server/engine/encoder.py's OnnxTextEncoder on the folder's fastest accepted
variant), cache off, batch 64, max_length 200 (descriptions). The texts are distinct descriptions
made from the seed catalogue's (each seed description with one of the other descriptions' first
clause appended, in rotation), so their lengths spread like real ones. Runners alternate chunk by
chunk so machine noise hits both alike; texts/s is the total over all chunks. Cosine per text: the
int8 vectors against torch's.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, OFFLINE_ENV, table, write_result  # noqa: E402

os.environ.update(OFFLINE_ENV)

import numpy as np  # noqa: E402

from towerserve.server.core.numerics import cosine_rows  # noqa: E402

THREADS = 2
MAX_LENGTH = 200  # MAX_LENGTHS["description"]


def descriptions(data: Path, n: int) -> list[str]:
    """``n`` distinct descriptions varied from the seed ones (see the module docstring)."""
    with open(data / "items.csv", newline="") as fh:
        seed = [row["description"] for row in csv.DictReader(fh)]
    clauses = [d.split(",")[0].rstrip(".") for d in seed]
    out: list[str] = []
    shift = 1
    while len(out) < n:
        for j, d in enumerate(seed):
            out.append(f"{d} Also: {clauses[(j + shift) % len(seed)].lower()}.")
            if len(out) == n:
                break
        shift += 1
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-folder", type=Path, required=True, help="from `towerserve export-encoder`")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--chunks", type=int, default=5, help="alternations of torch and ONNX")
    args = parser.parse_args()

    from towerserve.trainer.onnx_text import OnnxEncoder
    from towerserve.trainer.text import EncoderConfig, TextEncoder

    cfg = EncoderConfig(cache_dir=None, threads=THREADS)
    runners = {"torch eager": TextEncoder(cfg), "onnx": OnnxEncoder(args.encoder_folder, cfg)}
    variant = runners["onnx"].variant
    texts = descriptions(args.data, args.texts)
    for r in runners.values():  # warm-up, untimed: model load, first-run allocations
        r.encode(texts[:64], MAX_LENGTH, progress=False)
    seconds = dict.fromkeys(runners, 0.0)
    vecs: dict[str, list[np.ndarray]] = {k: [] for k in runners}
    bounds = np.linspace(0, len(texts), args.chunks + 1).astype(int)
    for c, (a, b) in enumerate(zip(bounds, bounds[1:])):
        for name in runners if c % 2 == 0 else reversed(list(runners)):
            t0 = time.perf_counter()
            vecs[name].append(runners[name].encode(texts[a:b], MAX_LENGTH, progress=False))
            seconds[name] += time.perf_counter() - t0
    rate = {k: len(texts) / s for k, s in seconds.items()}
    cos = cosine_rows(np.concatenate(vecs["torch eager"]), np.concatenate(vecs["onnx"]))
    rows = [
        ["torch eager", f"{seconds['torch eager']:.1f}", f"{rate['torch eager']:.0f}", "1.00x", "1"],
        [
            f"onnx {variant}",
            f"{seconds['onnx']:.1f}",
            f"{rate['onnx']:.0f}",
            f"{rate['onnx'] / rate['torch eager']:.2f}x",
            f"mean {cos.mean():.5f}, min {cos.min():.5f}",
        ],
    ]
    print(
        f"{len(texts)} distinct descriptions, max_length {MAX_LENGTH}, {THREADS} threads, {args.chunks} chunks"
    )
    print(table(["encoder", "seconds", "texts/s", "vs torch", "cosine to torch"], rows))
    path = write_result(
        "train_encoder",
        {
            "texts": len(texts),
            "threads": THREADS,
            "variant": variant,
            "seconds": seconds,
            "texts_per_s": rate,
            "speedup": rate["onnx"] / rate["torch eager"],
            "cosine_mean": float(cos.mean()),
            "cosine_min": float(cos.min()),
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
