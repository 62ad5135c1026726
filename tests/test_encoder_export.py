"""export.encoder through optimum: pooled graphs match torch for both poolings, the server reads them."""

import os

os.environ["USE_TF"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402

from towerserve.export.encoder import variants as enc_export  # noqa: E402
from towerserve.server.engine.encoder import OnnxTextEncoder  # noqa: E402
from towerserve.trainer.text import EncoderConfig, TextEncoder  # noqa: E402

MAX_LENGTH = 24
# Lengths differ a lot, so a batch carries real padding: the mask has to be honoured (mean) or
# averaged in (notebook), and a graph that got either wrong disagrees with torch by far more than atol.
TEXTS = [
    "ok",
    "a short text",
    "wireless earbuds with active noise cancelling, ideal for commuters who value quiet",
    "a novel",
    "this smartwatch features a heart-rate sensor and contactless payments, built for students",
]
ATOL = 1e-5  # fp32 graph vs torch on the same weights: reassociation error only


def _torch_vectors(bert: Path, pooling: str) -> np.ndarray:
    return TextEncoder(EncoderConfig(model=str(bert), pooling=pooling, cache_dir=None)).encode(
        TEXTS, MAX_LENGTH, progress=False
    )


def _onnx_vectors(graph: Path, out: Path, pooling: str, pad_to: int | None) -> np.ndarray:
    runner = OnnxTextEncoder(graph, out / "tokenizer.json", pooling)
    return runner.encode(TEXTS, MAX_LENGTH, pad_to)


def _op_counts(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(path).graph.node)


@pytest.mark.parametrize("pooling", ["mean", "notebook"])
def test_optimum_graph_matches_torch(bert, tmp_path, pooling):
    path, inputs, _ = enc_export.export_fp32(str(bert), pooling, tmp_path, enc_export.EncoderExportConfig())
    assert inputs == ["input_ids", "attention_mask", "token_type_ids"]
    # Only the graph and the tokenizer land in the folder (optimum's config.json stays in its scratch dir).
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["model.onnx"]
    assert not (tmp_path / "config.json").exists()
    graph = onnx.load(path)
    assert [i.name for i in graph.graph.input] == inputs
    (out,) = graph.graph.output
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert (out.name, dims) == ("embedding", ["batch_size", 32])
    assert graph.opset_import[0].version == 17

    torch_enc = TextEncoder(EncoderConfig(model=str(bert), pooling=pooling, cache_dir=None))
    pad_to = torch_enc.padded_length(TEXTS, MAX_LENGTH) if pooling == "notebook" else None
    got = _onnx_vectors(path, tmp_path, pooling, pad_to)
    np.testing.assert_allclose(got, _torch_vectors(bert, pooling), atol=ATOL)


def test_mean_and_notebook_graphs_differ_on_padded_batches(bert):
    """Guards the test above: the two poolings really give other vectors on these texts."""
    mean = _torch_vectors(bert, "mean")
    notebook = _torch_vectors(bert, "notebook")
    assert np.abs(mean - notebook).max() > 100 * ATOL


def test_optimum_and_torch_exporters_build_the_same_graph(bert, tmp_path):
    (tmp_path / "optimum").mkdir()
    (tmp_path / "torch").mkdir()
    cfg = enc_export.EncoderExportConfig()
    a, _, _ = enc_export.export_fp32(str(bert), "mean", tmp_path / "optimum", cfg)
    b, _, _ = enc_export.export_fp32(str(bert), "mean", tmp_path / "torch", cfg, backend="torch")
    assert _op_counts(a) == _op_counts(b)
    got_a = _onnx_vectors(a, tmp_path / "optimum", "mean", None)
    got_b = _onnx_vectors(b, tmp_path / "torch", "mean", None)
    np.testing.assert_allclose(got_a, got_b, atol=1e-6)


def test_ort_optimizer_through_optimum_fuses_like_ort(bert, tmp_path):
    src, _, _ = enc_export.export_fp32(str(bert), "mean", tmp_path, enc_export.EncoderExportConfig())
    via_optimum = enc_export.optimize(src, tmp_path / "model.opt.onnx", num_heads=2, hidden=32)
    via_ort = enc_export.optimize(src, tmp_path / "model.ort.onnx", num_heads=2, hidden=32, backend="ort")
    fused = _op_counts(via_optimum)
    assert fused == _op_counts(via_ort)
    # 2 layers: one fused attention each, the embedding LayerNorm fused too, no plain LayerNorm left.
    assert (fused["Attention"], fused["EmbedLayerNormalization"], fused["LayerNormalization"]) == (2, 1, 0)
    got = _onnx_vectors(via_optimum, tmp_path, "mean", None)
    np.testing.assert_allclose(got, _torch_vectors(bert, "mean"), atol=1e-4)


def test_int8_backends(bert, tmp_path):
    src, _, _ = enc_export.export_fp32(str(bert), "mean", tmp_path, enc_export.EncoderExportConfig())
    ort_q = enc_export.quantize_int8(src, tmp_path / "model.int8.onnx")
    opt_q = enc_export.quantize_int8(src, tmp_path / "model.int8o.onnx", backend="optimum")
    # quantize_dynamic quantises the 6 weight MatMuls per layer; ORTQuantizer also the attention's 2.
    assert (_op_counts(ort_q)["MatMulInteger"], _op_counts(opt_q)["MatMulInteger"]) == (12, 16)
    ref = _torch_vectors(bert, "mean")
    for path in (ort_q, opt_q):
        got = _onnx_vectors(path, tmp_path, "mean", None)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.9, (path.name, cos)


def test_unknown_backend_is_refused(bert, tmp_path):
    with pytest.raises(
        ValueError, match=r"exporter backend must be one of \('optimum', 'torch'\) \(got 'tf'\)"
    ):
        enc_export.export_fp32(str(bert), "mean", tmp_path, enc_export.EncoderExportConfig(), backend="tf")
