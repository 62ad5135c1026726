"""ONNX Runtime sessions with explicit threads and providers, and an honest record of what was granted."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def resolve_providers(device: str) -> list[str]:
    """Providers to ask for: "cpu" -> CPU; "cuda" -> CUDA then CPU (when the build offers CUDA).

    A CUDA request on a CPU-only onnxruntime falls back to CPU with a warning; the providers a
    session really got are reported by GetModelInfo, so the fall-back is never silent.
    """
    import onnxruntime as ort

    if device == "cpu":
        return [CPU]
    if device != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda' (got {device!r})")
    available = ort.get_available_providers()
    if CUDA not in available:
        _LOGGER.warning(
            "device=cuda asked for, but this onnxruntime offers %s: falling back to CPU "
            "(install onnxruntime-gpu in place of onnxruntime)",
            available,
        )
        return [CPU]
    return [CUDA, CPU]


def make_session(path: Path | str, providers: Sequence[str] = (CPU,), threads: int = 1):
    """An InferenceSession with fixed thread counts (no thread oversubscription under gRPC's pool).

    Raises:
        ArtifactError: the file is not a loadable ONNX graph (the message names it).
    """
    import onnxruntime as ort

    from ..core.manifest import ArtifactError

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as err:  # ORT raises its own exception types (InvalidGraph, Fail, NoSuchFile, ...)
        raise ArtifactError(path, f"ONNX Runtime cannot load it ({type(err).__name__}: {err})") from err
    got = session.get_providers()
    if list(providers)[0] not in got:
        _LOGGER.warning("%s: asked for %s, running on %s", path, list(providers), got)
    return session
