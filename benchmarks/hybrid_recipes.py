"""Compares hybrid recipes on the validation split, as `towerserve train` chooses among them:
`.venv/bin/python benchmarks/hybrid_recipes.py --data data/latent --try pooling=mean,attention`.

Trains only the hybrid, holdout split only, with hybrid_search set to one candidate per value of the
``--try`` field (every other field at HybridConfig's defaults, plus any ``--set`` overrides). Each
candidate fits on 90 % of every user's training positives and is judged on the other 10 %
(validation NDCG@10: what `train` would choose by); the test NDCG@10 of each candidate is printed
beside it for the record, never used to choose. Writes the artifacts to --out (report included).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, table, write_result  # noqa: E402


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "hybrid_recipes")
    parser.add_argument("--try", dest="trial", required=True, help="FIELD=V1,V2,... (a HybridConfig field)")
    parser.add_argument("--set", action="append", default=[], help="FIELD=V for every candidate")
    args = parser.parse_args()

    from towerserve.trainer.train import TrainConfig, train

    field, values = args.trial.split("=", 1)
    fixed = dict(kv.split("=", 1) for kv in args.set)
    fixed = {k: _value(v) for k, v in fixed.items()}
    search = tuple({**fixed, field: _value(v)} for v in values.split(","))
    t0 = time.perf_counter()
    train(args.data, args.out, TrainConfig(models=("hybrid",), hybrid_search=search, cold=False))
    seconds = time.perf_counter() - t0
    metrics = json.loads((args.out / "metrics.json").read_text())
    recipe = metrics["holdout"]["hybrid"]["recipe"]
    rows = [
        [s[field], f"{c['val_ndcg@10']:.4f}", f"{c['test_ndcg@10']:.4f}", c["epochs"], f"{c['seconds']:.0f}"]
        for s, c in zip(search, recipe["candidates"])
    ]
    print(f"{args.data}: hybrid candidates ({', '.join(f'{k}={v}' for k, v in fixed.items()) or 'defaults'})")
    print(table([field, "val ndcg@10 (chooses)", "test ndcg@10", "epochs", "seconds"], rows))
    print(
        f"chosen: {field}={recipe['chosen'][field]}; refit test ndcg@10 {metrics['holdout']['hybrid']['ndcg@10']:.4f}"
    )
    print(f"{seconds:.0f} s in all; artifacts {args.out}")
    write_result(
        "hybrid_recipes",
        {"data": str(args.data), "field": field, "fixed": fixed, "candidates": recipe["candidates"]},
    )


if __name__ == "__main__":
    main()
