"""What every package's commands share: the extras check and argument types.

Only the standard library: `towerserve --help` imports every package's cli module, in a client-only
install too.
"""

from __future__ import annotations

import argparse
import importlib.util

# What each optional extra installs that its commands import: if one of these is missing, so is the extra.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "server": (
        "numpy",
        "onnxruntime",
        "tokenizers",
        "grpc_health",
        "grpc_reflection",
        "prometheus_client",
        "faiss",
    ),
    "train": ("numpy", "pandas", "tensorflow", "keras", "torch", "transformers", "tf2onnx", "onnx", "tqdm"),
    "ray": ("ray", "pyarrow", "numpy", "onnxruntime", "tokenizers", "faiss"),
}


def missing_extra(command: str, extra: str) -> str | None:
    """The one line to print when ``extra`` is not installed, or None when it is.

    ``find_spec`` looks for the modules without importing them (importing TensorFlow to find out
    whether it is there would cost seconds).
    """
    if any(importlib.util.find_spec(m) is None for m in EXTRA_MODULES[extra]):
        return f"towerserve {command} needs the '{extra}' extra: pip install 'towerserve[{extra}]'"
    return None


def ks_list(text: str) -> tuple[int, ...]:
    """argparse type for metric cut-offs such as ``5,10,20``."""
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 5,10,20 (got {text!r})"
        ) from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"every k must be >= 1 (got {text!r})")
    return ks
