"""Which encoder variant the towers were trained on, and the parity gate each exported variant meets.

Training embeds with torch (the default) or, with `train --text-encoder`, with an exported ONNX
variant (trainer/onnx_text.py; the training manifest records runtime "onnxruntime" and the variant).
The towers learnt that variant's vectors, so the bundle must serve the same graph: export copies
the very file training ran (when it is still there and its sha256 matches), checks it against the
training vectors, and makes it the default. Other variants are judged against those vectors at the
int8 gate, since an int8-trained reference sits ~0.99 cosine from fp32 by construction.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import numpy as np

from towerserve.server.core.manifest import ParityCheck

from ..parity import ParityReport
from .variants import INT8_MIN_COSINE, INT8_MIN_WORST_COSINE

_LOGGER = logging.getLogger(__name__)

# The graph training ran, run again on the same texts in the same batches: only ORT's dynamic int8
# activation scales can move (they follow each batch's values), far inside these.
SAME_GRAPH_MIN_COSINE = 0.999
SAME_GRAPH_MIN_WORST_COSINE = 0.99
FP16_MIN_COSINE = 0.999  # fp16 against fp32 training vectors (torch or ONNX fp32)


def trained_variant(enc: dict) -> str | None:
    """The ONNX variant the training vectors came from (the training manifest's encoder section);
    None when torch produced them."""
    return enc.get("variant") if enc.get("runtime") == "onnxruntime" else None


def served_trained_with(enc: dict) -> str:
    """For the serving manifest: what produced the vectors the towers were trained on."""
    variant = trained_variant(enc)
    return "torch" if variant is None else f"onnxruntime {variant}"


def adopt_training_graph(enc: dict, tmp: Path, variants: dict[str, dict]) -> None:
    """Replaces the freshly built graph of the trained variant by the file training ran, when that
    file is still where training found it with the same sha256; otherwise the rebuilt graph stays
    and the parity gate (same-graph cosine) decides whether it is the same."""
    variant = trained_variant(enc)
    if variant is None:
        return
    if variant not in variants:
        raise ValueError(
            f"training embedded with the {variant} encoder, which this export does not build "
            f"(drop --no-{variant})"
        )
    folder = Path(enc.get("folder", ""))
    src = folder / variants[variant]["file"].removeprefix("encoder/")
    if src.is_file() and _sha256(src) == enc.get("graph_sha256"):
        shutil.copy2(src, tmp / variants[variant]["file"])
        _LOGGER.info("encoder %s: the graph training embedded with (%s)", variant, src)
    else:
        _LOGGER.warning(
            "encoder %s: %s is gone or changed since training; serving a rebuilt graph if it matches "
            "the training vectors",
            variant,
            src,
        )


def default_variant(enc: dict, variants: dict[str, dict]) -> str:
    """Served on CPU: the trained variant, else int8 when it passed its gate, else fp32."""
    return trained_variant(enc) or ("int8" if "int8" in variants else "fp32")


def check(
    report: ParityReport,
    label: str,
    name: str,
    precision: str,
    ref: np.ndarray,
    got: np.ndarray,
    atol: float,
    enc: dict,
) -> ParityCheck:
    """One variant on one field against the training vectors, at its gate.

    Torch-trained: fp32 graphs within ``atol`` (required); int8 at mean cosine 0.99, worst 0.95 and
    fp16 at 0.999 (optional: dropped when missed). ONNX-trained: the trained variant is required to
    match at SAME_GRAPH_* (fp32-trained: as torch-trained); every other variant is compared at the int8 gate,
    required for fp32 graphs (the fall-back), optional for the rest.
    """
    trained = trained_variant(enc)
    if trained in (None, "fp32"):  # fp32 ONNX vectors are torch's within atol: torch's gates hold
        if precision == "int8":
            return report.cosine(
                label, ref, got, INT8_MIN_COSINE, required=False, min_worst=INT8_MIN_WORST_COSINE
            )
        if precision == "fp16":
            return report.cosine(label, ref, got, FP16_MIN_COSINE, required=False)
        return report.allclose(label, ref, got, atol)
    if name == trained:
        return report.cosine(
            label, ref, got, SAME_GRAPH_MIN_COSINE, required=True, min_worst=SAME_GRAPH_MIN_WORST_COSINE
        )
    return report.cosine(
        label, ref, got, INT8_MIN_COSINE, required=precision == "fp32", min_worst=INT8_MIN_WORST_COSINE
    )


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
