"""Package versions of the serving side, reported by GetModelInfo beside the exporting side's."""

from __future__ import annotations

from importlib import metadata

_PACKAGES = ("towerserve", "onnxruntime", "numpy", "grpcio", "protobuf", "tokenizers")


def serving_versions() -> dict[str, str]:
    """Installed version of each package that shapes serving results ("absent" when not installed)."""
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


# Read once: package metadata does not change while a process runs, and reading it costs milliseconds.
SERVING_VERSIONS = serving_versions()
