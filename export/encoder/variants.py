"""Text encoder -> ONNX with pooling inside the graph, plus optimised, int8 and fp16 variants."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

os.environ["USE_TF"] = "0"  # before transformers: see trainer/text.py

_LOGGER = logging.getLogger(__name__)

ENCODER_OUTPUT = "embedding"
# A quantized variant is only offered when it stays this close to fp32 on the catalogue's texts:
# mean cosine per field, and a floor for the single worst text.
INT8_MIN_COSINE = 0.99
INT8_MIN_WORST_COSINE = 0.95


# Which implementation builds each piece (the ``backend`` argument below; the default is the one used).
# optimum's exporter and ORTOptimizer build the same graphs as torch.onnx.export and ORT's optimizer,
# so they are used. ORTQuantizer also quantises the attention's activation x activation MatMuls, which
# quantize_dynamic leaves in fp32 (MatMulConstBOnly): lower cosine to fp32 and no speed gained, so int8
# stays on quantize_dynamic. Figures: docs/benchmarks.md "Text encoder"; benchmarks/bench_encoder.py builds both.
EXPORTERS = ("optimum", "torch")
OPTIMIZERS = ("optimum", "ort")
QUANTIZERS = ("ort", "optimum")


@dataclass(frozen=True)
class EncoderExportConfig:
    """How the encoder is exported.

    Attributes:
        opset: ONNX opset. 17 has LayerNormalization and is read by every ORT >= 1.14 and Triton.
        optimize: also write a graph fused by ONNX Runtime's transformer optimizer.
        int8: also try dynamic int8 quantisation (kept only if it passes the cosine gate).
        fp16: also write an fp16 graph for GPUs.
    """

    opset: int = 17
    optimize: bool = True
    int8: bool = True
    fp16: bool = True


def _check_backend(kind: str, backend: str, allowed: tuple[str, ...]) -> None:
    if backend not in allowed:
        raise ValueError(f"{kind} backend must be one of {allowed} (got {backend!r})")


def load_reference(model_ref: str):
    """(tokenizer, torch model) in eval mode, eager attention so the optimizer can fuse it."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_ref)
    try:
        model = AutoModel.from_pretrained(model_ref, attn_implementation="eager").eval()
    except (TypeError, ValueError):  # models without the eager switch
        model = AutoModel.from_pretrained(model_ref).eval()
    return tok, model


def export_fp32(
    model_ref: str, pooling: str, out_dir: Path, cfg: EncoderExportConfig, backend: str = "optimum"
) -> tuple[Path, list[str], object]:
    """Writes ``out_dir/model.onnx`` (inputs: the tokenizer's ids/mask[/types]; output: pooled embedding)
    and the tokenizer beside it.

    Args:
        backend: "optimum" (optimum.exporters.onnx; pooling traced in by a model patcher, the result
            validated by optimum) or "torch" (torch.onnx.export of a pooled wrapper: the baseline, and a
            way out for an architecture optimum has no ONNX config for).

    Returns:
        (path, input names, tokenizer).
    """
    _check_backend("exporter", backend, EXPORTERS)
    tok, model = load_reference(model_ref)
    input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tok.model_input_names]
    path = out_dir / "model.onnx"
    if backend == "optimum":
        from .optimum import export_pooled

        export_pooled(model, pooling, input_names, path, cfg.opset)
    else:
        _torch_export(model, tok, pooling, input_names, path, cfg.opset)
    tok.save_pretrained(out_dir)
    if not (out_dir / "tokenizer.json").is_file():
        raise ValueError(f"{model_ref}: has no fast tokenizer (tokenizer.json); the server needs one")
    return path, input_names, tok


def _torch_export(model, tok, pooling: str, input_names: list[str], path: Path, opset: int) -> None:
    import torch

    from towerserve.trainer.text import pool

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            kwargs = dict(zip(input_names, inputs))
            hidden = self.model(**kwargs).last_hidden_state
            return pool(hidden, kwargs["attention_mask"], pooling)

    sample = tok(["a short text", "a somewhat longer text for the trace"], padding=True, return_tensors="pt")
    args = tuple(sample[n] for n in input_names)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in input_names}
    axes[ENCODER_OUTPUT] = {0: "batch_size"}
    with torch.inference_mode():
        # dynamo=False: the TorchScript exporter needs no onnxscript and takes dynamic_axes directly.
        torch.onnx.export(
            Pooled().eval(),
            args,
            str(path),
            input_names=input_names,
            output_names=[ENCODER_OUTPUT],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def optimize(
    src: Path,
    dst: Path,
    num_heads: int,
    hidden: int,
    use_gpu: bool = False,
    fp16: bool = False,
    backend: str = "optimum",
) -> Path:
    """ONNX Runtime's BERT fusions (attention, embedding/skip LayerNorm, bias GELU) at ORT level 1;
    fp16 keeps fp32 inputs/outputs.

    Args:
        backend: "optimum" (ORTOptimizer) or "ort" (onnxruntime.transformers.optimize_model).
    """
    _check_backend("optimizer", backend, OPTIMIZERS)
    # The optimizer logs every fusion at INFO; the parity lines are what matter to the reader.
    for name in ("onnx_model", "fusion_base", "onnx_model_bert", "fusion_utils", "onnxruntime.transformers"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if backend == "optimum":
        from .optimum import optimize as optimum_optimize

        return optimum_optimize(src, dst, num_heads, hidden, use_gpu=use_gpu, fp16=fp16)
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(
        str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden, use_gpu=use_gpu
    )
    if fp16:
        opt.convert_float_to_float16(keep_io_types=True)
    opt.save_model_to_file(str(dst))
    return dst


def quantize_int8(src: Path, dst: Path, exclude: list[str] | None = None, backend: str = "ort") -> Path:
    """Dynamic int8 with per-channel weight scales (per-tensor loses too much on MiniLM: cosine ~0.94).

    Args:
        exclude: node names left in fp32.
        backend: "ort" (quantize_dynamic: weight MatMuls only) or "optimum" (ORTQuantizer: every MatMul).
    """
    _check_backend("quantizer", backend, QUANTIZERS)
    if backend == "optimum":
        from .optimum import quantize_int8 as optimum_quantize

        return optimum_quantize(src, dst, exclude or [])
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs one INFO line per activation it leaves unquantised, on the ROOT logger (two
    # dozen lines for MiniLM that drown the parity lines); quiet the root logger for this call only.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        # Fused contrib ops (com.microsoft) defeat ONNX shape inference; their outputs are float.
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude or [],
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    return dst


def copy_tokenizer(src_dir: Path, dst_dir: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (src_dir / name).is_file():
            shutil.copy2(src_dir / name, dst_dir / name)
