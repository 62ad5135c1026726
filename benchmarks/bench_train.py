"""End to end at seed scale: `towerserve train` (fresh embedding cache) then `towerserve export`, timed, with quality ratios: `.venv/bin/python benchmarks/bench_train.py` (~4-5 min; --quick: 2,000 users x 300 items, ~1-2 min).

Runs the real commands as subprocesses into a temporary folder (removed afterwards unless --keep),
with a fresh --cache-dir so the text embeddings are really computed. Generates the data first when
the --data folder is missing (--quick always generates its small data set in the temporary folder).
Reports wall times against the targets (train <= 300 s, export <= 120 s), the trainer's own phase
breakdown (manifest.json "timings") and holdout ndcg@10 ratios from metrics.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, OUT_DIR, child_env, table, towerserve_cmd, verdict, write_result  # noqa: E402

TARGET_TRAIN_S = 300.0
TARGET_EXPORT_S = 120.0


def run_step(name: str, args: list[str], log: Path) -> float:
    """Runs `towerserve ARGS`, output to ``log``; returns wall seconds. Raises on a non-zero exit."""
    cmd = [*towerserve_cmd(), *args]
    print(f"$ {' '.join(cmd)}", file=sys.stderr)
    t0 = time.perf_counter()
    with open(log, "wb") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env()).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise SystemExit(f"{name} failed with exit code {rc} after {seconds:.1f} s; log {log}:\n{tail}")
    print(f"  {name}: {seconds:.1f} s", file=sys.stderr)
    return seconds


def ndcg(metrics: dict, kind: str) -> float | None:
    m = metrics.get("holdout", {}).get(kind)
    return None if m is None else float(m["ndcg@10"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"data set folder; generated (10,000 x 1,000, seed 42) if missing (default {DEFAULT_DATA})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="generate and use 2,000 users x 300 items instead"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary artifacts folder")
    args = parser.parse_args()

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="towerserve-bench-train-"))
    steps: dict[str, float] = {}
    try:
        data = tmp / "data" if args.quick else args.data
        if args.quick or not (data / "users.csv").is_file():
            size = (
                ["--users", "2000", "--items", "300"]
                if args.quick
                else ["--users", "10000", "--items", "1000"]
            )
            steps["generate_s"] = run_step(
                "generate",
                ["generate", "--out", str(data), *size, "--seed", "42", "-q"],
                OUT_DIR / "bench_train-generate.log",
            )
        artifacts = tmp / "artifacts"
        steps["train_s"] = run_step(
            "train",
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(artifacts),
                "--model",
                "all",
                "--cache-dir",
                str(tmp / "cache"),
                "-q",
            ],
            OUT_DIR / "bench_train-train.log",
        )
        steps["export_s"] = run_step(
            "export", ["export", "--artifacts", str(artifacts)], OUT_DIR / "bench_train-export.log"
        )

        metrics = json.loads((artifacts / "metrics.json").read_text())
        manifest = json.loads((artifacts / "manifest.json").read_text())
        serving = json.loads((artifacts / "serving" / "manifest.json").read_text())
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    t = manifest["timings"]
    fit = {k: v for k, v in t.items() if k.startswith("fit_")}
    evals = {k: v for k, v in t.items() if k.startswith("eval_") or k.startswith("baselines_")}
    phases = [
        ("embed (fresh cache)", t.get("embed_s", 0.0)),
        ("splits", t.get("split_s", 0.0)),
        ("fit (all models, both splits)", sum(fit.values())),
        ("evaluate (models + baselines)", sum(evals.values())),
    ]
    accounted = sum(v for _, v in phases)
    phases.append(("rest (load, save, report)", t["total_s"] - accounted))
    phases.append(("train total (manifest)", t["total_s"]))
    phases.append(("process start + imports", steps["train_s"] - t["total_s"]))

    data_info = manifest["data"]
    scale = "quick scale (targets are set for seed scale)" if args.quick else "seed scale"
    print(
        f"\n{scale}, end to end: {data_info['users']} users x {data_info['items']} items, "
        f"{data_info['positives']} positives; encoder {manifest['encoder']['name']}"
    )
    print(
        table(
            ["step", "wall s", "target", "verdict"],
            [
                [
                    "towerserve train --model all",
                    f"{steps['train_s']:.1f}",
                    f"<= {TARGET_TRAIN_S:.0f} s",
                    verdict(steps["train_s"] <= TARGET_TRAIN_S),
                ],
                [
                    "towerserve export",
                    f"{steps['export_s']:.1f}",
                    f"<= {TARGET_EXPORT_S:.0f} s",
                    verdict(steps["export_s"] <= TARGET_EXPORT_S),
                ],
            ]
            + (
                [["towerserve generate", f"{steps['generate_s']:.1f}", "", ""]]
                if "generate_s" in steps
                else []
            ),
        )
    )
    print("\ntrain breakdown (manifest.json timings)")
    print(table(["phase", "seconds"], [[n, f"{v:.1f}"] for n, v in phases]))
    print(table(["fit", "seconds"], [[k[4:-2], f"{v:.1f}"] for k, v in sorted(fit.items())]))
    print(
        f"export: {serving.get('export_seconds', float('nan')):.1f} s inside main_export "
        f"(encoder variants built in {serving['encoder'].get('build_seconds', float('nan')):.1f} s; "
        f"variants {', '.join(serving['encoder']['variants'])}, default {serving['encoder']['default_variant']})"
    )

    kinds = ("hybrid", "two_tower", "seed", "mostpop", "itemknn", "ease", "oracle", "random")
    scores = {k: ndcg(metrics, k) for k in kinds}
    served = manifest["default_model"]
    ratios = {}
    for a, b in ((served, "mostpop"), (served, "ease"), (served, "oracle"), ("seed", "mostpop")):
        ratios[f"{a}/{b}"] = None if scores[a] is None or not scores[b] else scores[a] / scores[b]
    print("\nholdout ndcg@10")
    print(table(["model", "ndcg@10"], [[k, "-" if v is None else f"{v:.4f}"] for k, v in scores.items()]))
    print(table(["ratio", "value"], [[k, "-" if v is None else f"{v:.3f}"] for k, v in ratios.items()]))
    print(f"served default model: {manifest['default_model']}")

    path = write_result(
        "bench_train",
        {
            "quick": args.quick,
            "data": data_info,
            "steps_s": steps,
            "targets": {
                "train_s": TARGET_TRAIN_S,
                "train_pass": steps["train_s"] <= TARGET_TRAIN_S,
                "export_s": TARGET_EXPORT_S,
                "export_pass": steps["export_s"] <= TARGET_EXPORT_S,
            },
            "timings": t,
            "phases_s": dict(phases),
            "export_seconds": serving.get("export_seconds"),
            "ndcg@10": scores,
            "ratios": ratios,
            "default_model": manifest["default_model"],
            "epochs": {
                f"{k}/{s}": v["epochs"] for k, e in manifest["models"].items() for s, v in e["splits"].items()
            },
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
