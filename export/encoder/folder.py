"""`towerserve export-encoder`: the serving bundle's encoder folder, built before training.

Training embeds every distinct text; through the int8 graph that is several times faster than
torch. Export normally runs after training, so this writes the same encoder (fp32 and per-channel
int8 graphs, tokenizer, an encoder.json the trainer reads) on its own, behind the same gates: fp32
against torch (atol), int8 kept only if its mean cosine to torch's (= fp32's) vectors is >= 0.99 on
every text field. The texts checked are a bounded, seeded sample of a data set's distinct texts per
field, or of a tiny generated catalogue when no data set is given.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from towerserve.server.core.manifest import EncoderEntry, EncoderVariant
from towerserve.server.core.numerics import cosine_rows
from towerserve.trainer.onnx_text import FOLDER_FILE, FOLDER_FORMAT, FOLDER_FORMAT_VERSION
from towerserve.trainer.text import MAX_LENGTHS

from ..parity import ParityReport
from . import variants as enc_export

_LOGGER = logging.getLogger(__name__)

# Distinct texts per field: a steady mean; torch needs ~50 s for 1,000 descriptions on 2 busy cores.
DEFAULT_SAMPLE = 1000
USER_FIELDS = ("profession", "personality")
ITEM_FIELDS = ("description", "features", "category")


def sample_texts(data: Path | None, per_field: int, seed: int = 0) -> dict[str, list[str]]:
    """Up to ``per_field`` distinct texts of each text field of ``data`` (users.csv, items.csv), drawn
    with a fixed seed; with no data, every text of a tiny generated catalogue (seed 7)."""
    import pandas as pd

    if data is None:
        from towerserve.trainer.synth import generator as synth

        with tempfile.TemporaryDirectory() as tmp:
            synth.generate(Path(tmp), n_users=300, n_items=300, seed=7, progress=False)
            return sample_texts(Path(tmp), per_field, seed)
    texts = {}
    rng = np.random.default_rng(seed)
    for name, fields in (("users.csv", USER_FIELDS), ("items.csv", ITEM_FIELDS)):
        path = Path(data) / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: not found (--data takes the folder `towerserve train --data` reads)"
            )
        # Only the text columns: at a million items the other columns are most of the bytes.
        frame = pd.read_csv(path, usecols=fields.__contains__, dtype=str, keep_default_na=False)
        for field in fields:
            if field in frame.columns:
                uniq = np.unique(frame[field].to_numpy(dtype=str))
                pick = np.sort(rng.choice(len(uniq), size=min(per_field, len(uniq)), replace=False))
                texts[field] = [str(t) for t in uniq[pick]]
    return texts


def export_encoder_folder(
    out: Path | str,
    model_ref: str = "",
    pooling: str = "mean",
    data: Path | None = None,
    sample: int = DEFAULT_SAMPLE,
    int8: bool = True,
    opset: int = 17,
    threads: int = 2,
) -> dict:
    """Writes ``out`` (atomically; nothing replaced if fp32 fails parity) and returns its encoder.json.

    Args:
        model_ref: a model name or folder, as `train --encoder` takes it ("": the packaged MiniLM).
        pooling: inside the graph; `train --pooling` must match it.
        data: the data set whose texts the gates are checked on (None: a tiny generated one).
        sample: distinct texts per field checked.
        int8: also build the int8 graph (kept only if it passes its gate).

    Long because it is one job's steps in order, each a call into its own module: read top to bottom, it is the job's outline.
    """
    import json

    from towerserve.server.engine.encoder import OnnxTextEncoder
    from towerserve.trainer.artifacts import atomic_dir, package_versions, write_json
    from towerserve.trainer.text import EncoderConfig, TextEncoder
    from towerserve.trainer.train import encoder_name

    t0 = time.perf_counter()
    torch_enc = TextEncoder(EncoderConfig(model=model_ref, pooling=pooling, cache_dir=None, threads=threads))
    model = torch_enc.model_ref  # as torch training records it, so export re-reads the same model
    texts = sample_texts(data, sample)
    cfg = enc_export.EncoderExportConfig(opset=opset, optimize=False, int8=int8, fp16=False)
    report = ParityReport()
    with atomic_dir(out) as tmp:
        fp32, input_names, _ = enc_export.export_fp32(model, pooling, tmp, cfg)
        variants = {"fp32": {"file": "model.onnx", "precision": "fp32", "device": "cpu"}}
        if int8:
            enc_export.quantize_int8(fp32, tmp / "model.int8.onnx")
            variants["int8"] = {"file": "model.int8.onnx", "precision": "int8", "device": "cpu"}
        build_s = time.perf_counter() - t0
        # Reference: what torch training would have embedded, each field at its training length.
        refs = {
            f: torch_enc.encode(t, MAX_LENGTHS[f], desc=f"torch reference {f}", progress=False)
            for f, t in texts.items()
        }
        for name, v in variants.items():
            runner = OnnxTextEncoder(tmp / v["file"], tmp / "tokenizer.json", pooling, threads=threads)
            ok, cos_means = True, []
            for field, ref in refs.items():
                got = runner.encode(texts[field], MAX_LENGTHS[field])
                label = f"encoder {name} / {field} ({len(ref)} texts)"
                if name == "int8":
                    c = report.cosine(
                        label,
                        ref,
                        got,
                        enc_export.INT8_MIN_COSINE,
                        required=False,
                        min_worst=enc_export.INT8_MIN_WORST_COSINE,
                    )
                else:
                    c = report.allclose(label, ref, got, 1e-4)
                ok &= c.ok
                cos_means.append(float(cosine_rows(ref, got).mean()))
            v["cosine_mean"] = min(cos_means)
            v["accepted"] = bool(ok)
        report.raise_if_failed()  # fp32 disagreeing with torch: nothing is written
        if "int8" in variants and not variants["int8"]["accepted"]:  # missed its gate: not shipped
            (tmp / "model.int8.onnx").unlink()
            del variants["int8"]
        entry = EncoderEntry(
            model=model,
            name=encoder_name(model),
            fingerprint=torch_enc.fingerprint,  # the torch weights the graphs were exported from
            pooling=pooling,
            dim=torch_enc.dim,
            max_lengths=dict(MAX_LENGTHS),
            inputs=tuple(input_names),
            output=enc_export.ENCODER_OUTPUT,
            tokenizer_file="tokenizer.json",
            opset=opset,
            variants={n: EncoderVariant(**v) for n, v in variants.items()},
            default_variant="int8" if "int8" in variants else "fp32",
            gpu_variant="fp32",
            build_seconds=build_s,
        )
        meta = {
            "format": FOLDER_FORMAT,
            "format_version": FOLDER_FORMAT_VERSION,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "encoder": entry.to_json(),
            "sample": {
                "data": None if data is None else str(Path(data).resolve()),
                "texts": {f: len(t) for f, t in texts.items()},
            },
            "parity": [c.to_json() for c in report.checks],
            "versions": package_versions(
                ("onnx", "onnxruntime", "optimum", "torch", "transformers", "tokenizers")
            ),
        }
        write_json(tmp / FOLDER_FILE, meta)
    _LOGGER.info("wrote encoder folder %s in %.1f s", out, time.perf_counter() - t0)
    return json.loads((Path(out) / FOLDER_FILE).read_text())
