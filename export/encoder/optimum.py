"""The text encoder through optimum: ONNX export with pooling inside, ORT fusion and int8 via optimum.onnxruntime."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

os.environ["USE_TF"] = "0"  # before transformers (optimum imports it): see trainer/text.py

from optimum.exporters.onnx import OnnxConfig, onnx_export_from_model  # noqa: E402
from optimum.exporters.onnx.model_patcher import ModelPatcher  # noqa: E402
from optimum.exporters.tasks import TasksManager  # noqa: E402

from towerserve.trainer.text import pool  # noqa: E402

_LOGGER = logging.getLogger(__name__)

OUTPUT = "embedding"
TASK = "feature-extraction"
# optimum's own tolerance for BERT's last_hidden_state is 1e-4; the pooled output is an average of it.
VALIDATION_ATOL = 1e-4


class PoolingPatcher(ModelPatcher):
    """Makes the traced forward return ``{"embedding": pool(last_hidden_state, attention_mask)}``.

    The pooling is ``trainer.text.pool``, the function training embedded every text with, traced into the
    graph: one implementation, so the served vectors cannot drift from the trained ones. optimum's
    validation runs the reference model through this same patcher, so it checks the pooled output.
    """

    def __init__(self, config: OnnxConfig, model, model_kwargs: dict | None = None):
        super().__init__(config, model, model_kwargs)
        forward = self.orig_forward
        pooling = config.pooling

        def patched_forward(input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            hidden = forward(**kwargs).last_hidden_state
            return {OUTPUT: pool(hidden, attention_mask, pooling)}

        self.patched_forward = patched_forward


def pooled_onnx_config(model, pooling: str, input_names: list[str]) -> OnnxConfig:
    """optimum's ONNX config for this architecture's feature extraction, with the pooled embedding as the
    one output and only the inputs the tokenizer produces."""
    default = TasksManager.get_exporter_config_constructor(
        "onnx", model=model, task=TASK, library_name="transformers"
    )(model.config, task=TASK)
    missing = [n for n in input_names if n not in default.inputs]
    if missing:
        raise ValueError(
            f"optimum's {type(default).__name__} takes inputs {list(default.inputs)}; "
            f"the tokenizer also produces {missing}"
        )

    class PooledOnnxConfig(type(default)):
        _MODEL_PATCHER = PoolingPatcher
        ATOL_FOR_VALIDATION = VALIDATION_ATOL

        @property
        def inputs(self) -> dict[str, dict[int, str]]:
            return {k: v for k, v in super().inputs.items() if k in input_names}

        @property
        def outputs(self) -> dict[str, dict[int, str]]:
            return {OUTPUT: {0: "batch_size"}}

    cfg = PooledOnnxConfig(model.config, task=TASK)
    cfg.pooling = pooling
    return cfg


def export_pooled(model, pooling: str, input_names: list[str], dst: Path, opset: int) -> Path:
    """Writes the pooled encoder to ``dst`` with optimum's exporter (TorchScript, dynamic batch/sequence),
    validated by optimum against the torch model on padded dummy inputs.

    optimum logs that opset 17 is below its generic recommendation (18, the base OnnxConfig's default,
    not BERT's); 17 is kept: LayerNormalization is all a BERT encoder needs past 14, and Triton reads it.
    """
    cfg = pooled_onnx_config(model, pooling, input_names)
    # optimum also writes config.json and the tokenizer beside the graph; the bundle wants the graph only.
    with tempfile.TemporaryDirectory(prefix="optimum-", dir=dst.parent) as work:
        onnx_export_from_model(
            model,
            work,
            opset=opset,
            task=TASK,
            custom_onnx_configs={"model": cfg},
            atol=VALIDATION_ATOL,
            do_validation=True,
        )
        shutil.move(Path(work) / "model.onnx", dst)
    return dst


def _bert_config(num_heads: int, hidden: int):
    """What ORTOptimizer reads from a model config: the fusion family and the attention shape. ORT's
    fusions are BERT's for every BERT-family encoder."""
    from transformers import BertConfig

    return BertConfig(num_attention_heads=num_heads, hidden_size=hidden)


def optimize(
    src: Path, dst: Path, num_heads: int, hidden: int, use_gpu: bool = False, fp16: bool = False
) -> Path:
    """ORTOptimizer with the fusions ORT's optimize_model applies to BERT by default (ORT level 1, then
    attention, embedding/skip LayerNorm, bias GELU); fp16 keeps fp32 inputs/outputs."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    cfg = OptimizationConfig(
        optimization_level=1,
        enable_transformers_specific_optimizations=True,
        # optimum leaves the embedding LayerNorm unfused by default; ORT fuses it (8 nodes fewer on MiniLM).
        disable_embed_layer_norm_fusion=False,
        optimize_for_gpu=use_gpu,
        fp16=fp16,
    )
    with tempfile.TemporaryDirectory(prefix="ortopt-", dir=dst.parent) as work:
        ORTOptimizer([Path(src)], config=_bert_config(num_heads, hidden)).optimize(
            cfg, work, file_suffix="optimized"
        )
        shutil.move(Path(work) / f"{Path(src).stem}_optimized.onnx", dst)
    return dst


def quantize_int8(src: Path, dst: Path, exclude: list[str]) -> Path:
    """ORTQuantizer, dynamic int8 with per-channel weight scales: u8 activations x s8 weights, full range.
    Unlike quantize_dynamic it also quantises MatMuls whose both inputs are activations (attention)."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import PretrainedConfig

    qcfg = AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True, nodes_to_exclude=exclude)
    with tempfile.TemporaryDirectory(prefix="ortq-", dir=dst.parent) as work:
        # A config is only copied beside the result; an empty one spares the "could not load" warning.
        ORTQuantizer(Path(src), config=PretrainedConfig()).quantize(qcfg, work, file_suffix="quantized")
        shutil.move(Path(work) / f"{Path(src).stem}_quantized.onnx", dst)
    return dst
