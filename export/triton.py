"""A Triton Inference Server model repository (one folder per model, config.pbtxt + version 1)."""

from __future__ import annotations

import shutil
from pathlib import Path

_ONNX_TYPES = {
    "tensor(float)": "TYPE_FP32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(int32)": "TYPE_INT32",
}


def _tensor_block(tensors) -> str:
    rows = []
    for t in tensors:
        # Triton's dims exclude the batch axis when max_batch_size > 0; other dynamic axes are -1.
        dims = [d if isinstance(d, int) and d > 0 else -1 for d in t.shape[1:]]
        rows.append(
            f'  {{ name: "{t.name}" data_type: {_ONNX_TYPES[t.type]} dims: [ {", ".join(map(str, dims))} ] }}'
        )
    return ",\n".join(rows)


def config_pbtxt(name: str, onnx_path: Path, max_batch_size: int) -> str:
    """config.pbtxt text for an ONNX graph whose first axis is the batch, read from the graph itself."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input [\n{_tensor_block(sess.get_inputs())}\n]\n"
        f"output [\n{_tensor_block(sess.get_outputs())}\n]\n"
        "dynamic_batching { }\n"
    )


def write_repository(out: Path, models: dict[str, tuple[Path, int]], readme: str) -> Path:
    """Writes ``out/<name>/config.pbtxt`` and ``out/<name>/1/model.onnx`` for each (path, max batch)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, (path, max_batch) in models.items():
        (out / name / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, out / name / "1" / "model.onnx")
        (out / name / "config.pbtxt").write_text(config_pbtxt(name, path, max_batch))
    (out / "README.md").write_text(readme)
    return out
