"""The serving manifest: what export promises and the server checks (hashes, dims, names) before loading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

SERVING_FORMAT = "towerserve-serving"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


class ArtifactError(ValueError):
    """An artifacts folder is missing, tampered with or inconsistent; the message names the file."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(root: Path, exclude: tuple[str, ...] = (MANIFEST_FILE,)) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``root`` (posix relative paths), for the manifest."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def load_manifest(root: Path | str, verify_hashes: bool = True) -> dict:
    """Reads ``root/manifest.json`` and checks it against the files.

    Checks: format and version; every listed file exists with the listed size and (when
    ``verify_hashes``) sha256; every file the manifest points to is listed.

    Raises:
        ArtifactError: naming the first offending file.
    """
    root = Path(root)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactError(
            path, "not found: is this a serving artifacts folder written by `towerserve export`?"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(path, f"not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise ArtifactError(path, f"must be a JSON object (got {type(manifest).__name__})")
    if manifest.get("format") != SERVING_FORMAT:
        raise ArtifactError(path, f"format is {manifest.get('format')!r}, expected {SERVING_FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(path, f"format_version {manifest.get('format_version')} is not {FORMAT_VERSION}")
    _check_structure(path, manifest)
    files = manifest["files"]
    for rel, entry in files.items():
        p = root / rel
        if not p.is_file():
            raise ArtifactError(p, "listed in manifest.json but missing")
        if p.stat().st_size != entry["bytes"]:
            raise ArtifactError(
                p, f"size {p.stat().st_size} does not match manifest.json ({entry['bytes']} bytes)"
            )
        if verify_hashes and sha256_file(p) != entry["sha256"]:
            raise ArtifactError(p, "sha256 does not match manifest.json (modified or corrupted)")
    for rel in referenced_files(manifest):
        if rel not in files:
            raise ArtifactError(root / rel, "used by manifest.json but has no sha256 entry")
    return manifest


# Keys the server relies on, with their JSON types: a manifest missing one is refused by name here
# rather than failing later with a KeyError deep in the engine.
_REQUIRED: dict[str, type] = {
    "default_model": str,
    "encoder": dict,
    "models": dict,
    "catalog": dict,
    "splits": dict,
    "files": dict,
}
_REQUIRED_ENCODER = {
    "variants": dict,
    "default_variant": str,
    "gpu_variant": str,
    "tokenizer_file": str,
    "max_lengths": dict,
    "pooling": str,
    "dim": int,
    "model": str,
}
_REQUIRED_SPLIT = {"user_tower": dict, "item_tower": dict, "item_vectors_file": str, "features": dict}


def _check_structure(path: Path, m: dict) -> None:
    def need(obj: dict, spec: dict[str, type], where: str) -> None:
        for key, kind in spec.items():
            if not isinstance(obj.get(key), kind):
                raise ArtifactError(path, f"{where}{key} is missing or not a {kind.__name__}")

    need(m, _REQUIRED, "")
    need(m["encoder"], _REQUIRED_ENCODER, "encoder.")
    if not m["models"]:
        raise ArtifactError(path, "models is empty")
    for name, model in m["models"].items():
        if (
            not isinstance(model, dict)
            or not isinstance(model.get("splits"), dict)
            or "model_version" not in model
        ):
            raise ArtifactError(path, f"models.{name} needs splits and model_version")
        for split, entry in model["splits"].items():
            if not isinstance(entry, dict):
                raise ArtifactError(path, f"models.{name}.splits.{split} is not an object")
            need(entry, _REQUIRED_SPLIT, f"models.{name}.splits.{split}.")
    if m["default_model"] not in m["models"]:
        raise ArtifactError(
            path, f"default_model {m['default_model']!r} is not among models {sorted(m['models'])}"
        )


def referenced_files(manifest: dict) -> list[str]:
    """Every file path the manifest points to (strings under keys named 'file' or ending in 's_file')."""
    out: list[str] = []

    def walk(node: Any, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "files":
                    walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and (key == "file" or key.endswith("_file")):
            out.append(node)

    walk(manifest)
    return out


def check_dims(path: Path | str, what: str, expected: int, got: int) -> None:
    if expected != got:
        raise ArtifactError(path, f"{what} is {got}, manifest.json says {expected}")
