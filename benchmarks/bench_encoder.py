"""Text-encoder graphs built by hand and through optimum, side by side: throughput and cosine to torch eager, 2 threads: `.venv/bin/python benchmarks/bench_encoder.py` (~8-12 min on an idle machine; --rounds 1 --limit 256 --no-fp16 for a smoke run).

Both builders export the same encoder (the serving manifest's, else the packaged all-MiniLM-L6-v2) with
mean pooling inside the graph, into a scratch folder, untimed: "hand" is torch.onnx.export of a pooled
wrapper + onnxruntime.transformers.optimize_model + quantize_dynamic; "optimum" is optimum.exporters.onnx
with a pooling model patcher + ORTOptimizer + ORTQuantizer (export/encoder/variants.py, the ``backend``
arguments). Every graph then encodes the same texts (the item descriptions, max_length 200, batch 64)
through ``server.encoder.OnnxTextEncoder`` (threads=2); torch eager through ``trainer.text.TextEncoder``.
Runners go interleaved, round by round, so machine noise hits all alike; each figure is the median
over rounds. Cosine is per text against the torch vectors. "ships" marks the builder ``towerserve
export`` uses for that variant. The target: the shipped CPU default (int8 when it passes its gate) is
>= 1.5x torch eager at mean cosine >= 0.99.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from collections import Counter
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

from towerserve.server.core.numerics import cosine_rows  # noqa: E402

THREADS = 2
MAX_LENGTH = 200  # MAX_LENGTHS["description"]
BATCH = 64
POOLING = "mean"
TARGET_SPEEDUP = 1.5
TARGET_COSINE = 0.99
VARIANTS = ("fp32", "optimized", "int8", "fp16")
# builder -> backend per piece (export/encoder/variants.py: export_fp32 / optimize / quantize_int8)
BUILDERS = {
    "hand": {"export": "torch", "optimize": "ort", "int8": "ort"},
    "optimum": {"export": "optimum", "optimize": "optimum", "int8": "optimum"},
}
PIECE = {"fp32": "export", "optimized": "optimize", "int8": "int8", "fp16": "optimize"}


def read_descriptions(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["description"] for row in csv.DictReader(fh)]


def shipped_backends() -> dict[str, str]:
    """The backend each piece defaults to, i.e. what `towerserve export` builds with."""
    import inspect

    from towerserve.export.encoder import variants as enc_export

    def default(fn) -> str:
        return inspect.signature(fn).parameters["backend"].default

    return {
        "export": default(enc_export.export_fp32),
        "optimize": default(enc_export.optimize),
        "int8": default(enc_export.quantize_int8),
    }


def build(model_ref: str, root: Path, builder: str, fp16: bool) -> tuple[dict[str, Path], dict[str, float]]:
    """Every variant of one builder under root/builder; returns (variant -> graph, variant -> build s)."""
    from transformers import AutoConfig

    from towerserve.export.encoder import variants as enc_export

    backends = BUILDERS[builder]
    out = root / builder
    out.mkdir(parents=True)
    mcfg = AutoConfig.from_pretrained(model_ref)
    heads, hidden = int(mcfg.num_attention_heads), int(mcfg.hidden_size)
    graphs, secs = {}, {}
    t0 = time.perf_counter()
    graphs["fp32"], _, _ = enc_export.export_fp32(
        model_ref, POOLING, out, enc_export.EncoderExportConfig(), backend=backends["export"]
    )
    secs["fp32"] = time.perf_counter() - t0
    steps = {
        "optimized": lambda: enc_export.optimize(
            graphs["fp32"], out / "model.opt.onnx", heads, hidden, backend=backends["optimize"]
        ),
        "int8": lambda: enc_export.quantize_int8(
            graphs["fp32"], out / "model.int8.onnx", backend=backends["int8"]
        ),
        "fp16": lambda: enc_export.optimize(
            graphs["fp32"], out / "model.fp16.onnx", heads, hidden, fp16=True, backend=backends["optimize"]
        ),
    }
    for variant, step in steps.items():
        if variant == "fp16" and not fp16:
            continue
        t0 = time.perf_counter()
        graphs[variant] = step()
        secs[variant] = time.perf_counter() - t0
    return graphs, secs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=DEFAULT_ARTIFACTS,
        help=f"training artifacts: encoder model and items.csv from its serving/ folder (default {DEFAULT_ARTIFACTS})",
    )
    parser.add_argument(
        "--data",
        type=Path,
        help=f"read items.csv from this data folder instead, with the packaged MiniLM (e.g. {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds (default 3; median reported)"
    )
    parser.add_argument("--limit", type=int, help="only the first N descriptions (default: all)")
    parser.add_argument("--no-fp16", action="store_true", help="skip the fp16 graphs (slow on CPU)")
    args = parser.parse_args()

    import onnx
    import torch

    from towerserve.export.encoder.variants import INT8_MIN_COSINE, INT8_MIN_WORST_COSINE
    from towerserve.server.engine.encoder import OnnxTextEncoder
    from towerserve.trainer.text import EncoderConfig, TextEncoder, default_model

    if args.data:
        items_csv, model_ref = args.data / "items.csv", default_model()
    else:
        serving = serving_dir(args.artifacts)
        enc = json.loads((serving / "manifest.json").read_text())["encoder"]
        items_csv, model_ref = serving / "catalog" / "items.csv", enc["model"]
    texts = read_descriptions(items_csv)[: args.limit]
    torch.set_num_threads(THREADS)
    ships = shipped_backends()

    # ---- build both sets (not timed in the rounds), then one warm-up batch each
    scratch = tempfile.TemporaryDirectory(prefix="bench_encoder-")
    root = Path(scratch.name)
    graphs: dict[tuple[str, str], Path] = {}
    build_s: dict[tuple[str, str], float] = {}
    for builder in BUILDERS:
        g, s = build(model_ref, root, builder, fp16=not args.no_fp16)
        graphs.update({(v, builder): p for v, p in g.items()})
        build_s.update({(v, builder): x for v, x in s.items()})
        print(f"  built {builder}: " + ", ".join(f"{v} {x:.1f} s" for v, x in s.items()), file=sys.stderr)
    tokenizer = root / "hand" / "tokenizer.json"

    runners: dict[str, Callable[[list[str]], np.ndarray]] = {}
    meta: dict[str, dict] = {"torch eager": {"variant": "torch", "builder": "", "note": "reference"}}
    torch_enc = TextEncoder(
        EncoderConfig(model=model_ref, pooling=POOLING, batch_size=BATCH, threads=THREADS, cache_dir=None)
    )
    _ = torch_enc.model  # load now, outside the timed runs
    runners["torch eager"] = lambda t: torch_enc.encode(t, MAX_LENGTH, progress=False)
    for variant in VARIANTS:
        for builder, backends in BUILDERS.items():
            if (variant, builder) not in graphs:
                continue
            name, path = f"{variant} / {builder}", graphs[(variant, builder)]
            try:
                runner = OnnxTextEncoder(path, tokenizer, POOLING, threads=THREADS, batch_size=BATCH)
                runner.encode(texts[:BATCH], MAX_LENGTH)
            except Exception as err:  # noqa: BLE001 - fp16 may have no CPU kernels
                print(f"  {name}: does not run on CPU here ({type(err).__name__}: {str(err)[:120]}), skipped")
                continue
            runners[name] = lambda t, r=runner: r.encode(t, MAX_LENGTH)
            piece = PIECE[variant]
            nodes = onnx.load(path, load_external_data=False).graph.node
            meta[name] = {
                "variant": variant,
                "builder": builder,
                "ships": backends[piece] == ships[piece],
                "nodes": len(nodes),
                "ops": Counter(n.op_type for n in nodes),
                "build_s": build_s[(variant, builder)],
                "note": "not a CPU variant" if variant == "fp16" else "",
            }
    for run in runners.values():
        run(texts[:BATCH])  # warm-up: first-batch allocations, thread pools

    # ---- interleaved rounds: torch, then every graph; then again
    times: dict[str, list[float]] = {n: [] for n in runners}
    outputs: dict[str, np.ndarray] = {}
    for r in range(args.rounds):
        # Odd rounds run in reverse, so no runner always follows the same neighbour.
        for name, run in list(runners.items())[:: -1 if r % 2 else 1]:
            t0 = time.perf_counter()
            outputs[name] = run(texts)
            times[name].append(time.perf_counter() - t0)
        print(
            f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in runners),
            file=sys.stderr,
        )
    scratch.cleanup()

    ref = outputs["torch eager"]
    base, base_best = median(times["torch eager"]), min(times["torch eager"])
    rows = []
    for name in runners:
        m = meta[name]
        secs = median(times[name])
        cos = cosine_rows(ref, outputs[name])
        hand = meta.get(f"{m['variant']} / hand")
        # The same operators (type and count) as the hand-built graph: then any speed gap is noise.
        same_ops = None if m["builder"] != "optimum" or hand is None else m["ops"] == hand["ops"]
        gate = None
        if m["variant"] == "int8":
            gate = bool(cos.mean() >= INT8_MIN_COSINE and cos.min() >= INT8_MIN_WORST_COSINE)
        rows.append(
            {
                "name": name,
                "variant": m["variant"],
                "builder": m["builder"],
                "ships": m.get("ships", False),
                "nodes": m.get("nodes"),
                "same_ops_as_hand": same_ops,
                "matmul_integer": m["ops"]["MatMulInteger"] if "ops" in m else None,
                "build_s": m.get("build_s"),
                "seconds": secs,
                "texts_per_s": len(texts) / secs,
                "speedup": base / secs,
                "speedup_best_runs": base_best / min(times[name]),
                "cosine_mean": float(cos.mean()),
                "cosine_min": float(cos.min()),
                "int8_gate": gate,
                "note": m["note"],
                "runs_s": times[name],
            }
        )

    print(
        f"\ntext encoder on {len(texts)} item descriptions ({items_csv}), {model_ref}, max_length {MAX_LENGTH}, "
        f"batch {BATCH}, {POOLING} pooling, {THREADS} threads, median of {args.rounds} interleaved rounds"
    )
    headers = [
        "graph",
        "nodes",
        "ops = hand",
        "build s",
        "seconds",
        "texts/s",
        "speed-up",
        "best/best",
        "cos mean",
        "cos min",
    ]
    print(
        table(
            [*headers, "int8 gate", "ships", "note"],
            [
                [
                    r["name"],
                    r["nodes"],
                    None if r["same_ops_as_hand"] is None else ("yes" if r["same_ops_as_hand"] else "no"),
                    None if r["build_s"] is None else f"{r['build_s']:.1f}",
                    f"{r['seconds']:.2f}",
                    f"{r['texts_per_s']:.0f}",
                    f"{r['speedup']:.2f}x",
                    f"{r['speedup_best_runs']:.2f}x",
                    f"{r['cosine_mean']:.5f}",
                    f"{r['cosine_min']:.5f}",
                    None if r["int8_gate"] is None else verdict(r["int8_gate"]),
                    "yes" if r["ships"] else "",
                    r["note"],
                ]
                for r in rows
            ],
        )
    )
    print(
        "speed-up: median vs median; best/best: fastest run vs fastest run (less sensitive to a noisy neighbour);"
        f" int8 gate: cosine mean >= {INT8_MIN_COSINE} and min >= {INT8_MIN_WORST_COSINE}"
    )
    shipped = {r["variant"]: r for r in rows if r["ships"]}
    default = "int8" if shipped.get("int8", {}).get("int8_gate") else "fp32"
    d = shipped.get(default)
    if d is None:
        ok = False
        print(f"shipped default variant {default!r}: not measured here -> FAIL")
    else:
        ok = d["speedup"] >= TARGET_SPEEDUP and d["cosine_mean"] >= TARGET_COSINE
        print(
            f"shipped CPU default ({d['name']}): {d['speedup']:.2f}x torch eager at cosine mean "
            f"{d['cosine_mean']:.4f} (min {d['cosine_min']:.4f}); target >= {TARGET_SPEEDUP}x at cosine >= "
            f"{TARGET_COSINE}: {verdict(ok)}"
        )
    path = write_result(
        "bench_encoder",
        {
            "texts": len(texts),
            "source": str(items_csv),
            "model": model_ref,
            "max_length": MAX_LENGTH,
            "batch": BATCH,
            "pooling": POOLING,
            "threads": THREADS,
            "rounds": args.rounds,
            "shipped_backends": ships,
            "shipped_default_variant": default,
            "graphs": rows,
            "target": {"speedup": TARGET_SPEEDUP, "cosine_mean": TARGET_COSINE, "pass": ok},
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
