"""The serving manifest as typed records: export writes one, the server reads and checks it before loading."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import reprlib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .features import FieldSpec

SERVING_FORMAT = "towerserve-serving"
TRAIN_FORMAT = "towerserve-train"  # the training folder's manifest.json, which export reads
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"


class ArtifactError(ValueError):
    """An artifacts folder is missing, tampered with or inconsistent; the message names the file."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


# --------------------------------------------------------------------------------------- JSON <-> records


class _Record:
    """``from_json``/``to_json`` for the frozen dataclasses below, driven by their type annotations.

    Supported annotations: str, int, float (an int is accepted: JSON writes 3.0 as 3), bool, Any,
    ``X | None``, ``tuple[X, ...]`` (a JSON list), ``dict[str, X]`` and nested dataclasses. A field
    with a default may be absent; ``None`` fields are left out of the JSON, so an optional key that was
    absent stays absent. Unknown keys are ignored, so a newer exporter's extra facts do not break an
    older server.
    """

    @classmethod
    def from_json(cls, data: Any, source: Path | str = MANIFEST_FILE):
        """Builds the record from parsed JSON; ``source`` (the file it came from) is named in errors.

        Raises:
            ArtifactError: naming ``source`` and the dotted path of the first missing or mistyped field.
        """
        return _decode(cls, data, "", source)

    def to_json(self) -> dict[str, Any]:
        return _encode(self)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(tp: Any, top: bool = True) -> str:
    """How an error names an annotation: int, str or null, list[str], dict[str, TowerGraph], an object (Catalog)."""
    if tp is Any:
        return "any value"
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType):
        return " or ".join(_type_name(a, top) for a in args)
    if typing.get_origin(tp) is tuple:
        return f"list[{_type_name(args[0], False)}]"
    if typing.get_origin(tp) is dict:
        return f"dict[str, {_type_name(args[1], False)}]"
    if dataclasses.is_dataclass(tp):
        return f"an object ({tp.__name__})" if top else tp.__name__
    return "null" if tp is type(None) else tp.__name__


def _got(value: Any) -> str:
    return f"{type(value).__name__} {reprlib.repr(value)}"  # reprlib: long strings and lists shortened


def _decode(tp: Any, value: Any, where: str, source: Path | str, shown: Any = None) -> Any:
    def wrong() -> ArtifactError:
        return ArtifactError(
            source, f"{where or 'the manifest'} must be {_type_name(shown or tp)} (got {_got(value)})"
        )

    if tp is Any:
        return copy.deepcopy(value)  # a free-form part: the record must not share it with the caller
    if isinstance(tp, types.UnionType):  # only ``X | None`` is used
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(inner, value, where, source, shown=tp)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, list):
            raise wrong()
        item = typing.get_args(tp)[0]
        return tuple(_decode(item, v, f"{where}[{j}]", source) for j, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise wrong()
        item = typing.get_args(tp)[1]
        return {k: _decode(item, v, _join(where, k), source) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise wrong()
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _decode(hints[f.name], value[f.name], _join(where, f.name), source)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ArtifactError(
                    source, f"{_join(where, f.name)} is missing (expected {_type_name(hints[f.name])})"
                )
        return tp(**kwargs)
    # bool is a subclass of int in Python, never in JSON: true is not a dimension.
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, tp) and (tp is bool or not isinstance(value, bool)):
        return value
    raise wrong()


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {
            f.name: _encode(v) for f in dataclasses.fields(value) if (v := getattr(value, f.name)) is not None
        }
    if isinstance(value, (tuple, list)):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------------------- the records


@dataclass(frozen=True)
class FileEntry(_Record):
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ParityCheck(_Record):
    """One reference-vs-ONNX comparison export made (export/parity.py prints and gates on these)."""

    name: str
    ok: bool
    detail: str
    required: bool = True  # optional variants (int8, fp16) are dropped on failure instead of failing export


@dataclass(frozen=True)
class EncoderVariant(_Record):
    """One ONNX build of the text encoder.

    Attributes:
        accepted: passed its parity gate on the exporting machine; None when that machine could not
            run it (the server then checks it against the training vectors at load).
        cosine_mean: the worst field's mean cosine to the training-time torch vectors.
        parity: why no parity was measured, when none was.
    """

    file: str
    precision: str  # fp32 / int8 / fp16
    device: str  # cpu / cuda: where it is meant to run
    accepted: bool | None = None
    cosine_mean: float | None = None
    parity: str | None = None


@dataclass(frozen=True)
class EncoderEntry(_Record):
    """The text encoder: its variants, tokenizer and the pooling/truncation training used."""

    model: str  # the Hugging Face model (name or folder) it was exported from
    pooling: str
    dim: int
    max_lengths: dict[str, int]  # tokens kept per text field
    tokenizer_file: str
    variants: dict[str, EncoderVariant]
    default_variant: str  # served on CPU
    gpu_variant: str  # served on CUDA
    inputs: tuple[str, ...]
    output: str
    opset: int
    fingerprint: str
    build_seconds: float
    name: str | None = None  # a display name; the model's folder name when absent
    # Notebook pooling pads each field to the longest text training saw; a batch must pad the same.
    padded_lengths: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TowerGraph(_Record):
    """A user or item tower: one float32 [batch, input_dim] input, one [batch, output_dim] output."""

    file: str
    input: str
    output: str
    input_dim: int
    output_dim: int


@dataclass(frozen=True)
class FullGraph(_Record):
    """The whole Keras model as one graph (user and item features -> score), for Triton and checks."""

    file: str
    inputs: tuple[str, ...]
    output: str


@dataclass(frozen=True)
class Features(_Record):
    """Which fields make up each tower's input vector, in order."""

    user: tuple[FieldSpec, ...]
    item: tuple[FieldSpec, ...]


@dataclass(frozen=True)
class ModelSplit(_Record):
    """One model as trained on one split (holdout is served; cold is there for Evaluate)."""

    user_tower: TowerGraph
    item_tower: TowerGraph
    full: FullGraph
    item_vectors_file: str  # float32 [n_items, item_tower.output_dim]
    features: Features


@dataclass(frozen=True)
class ModelEntry(_Record):
    kind: str
    model_version: str  # changes when any tower of any split changes
    user_independent: bool  # every user gets the same ranking (the seed model)
    splits: dict[str, ModelSplit]


@dataclass(frozen=True)
class Catalog(_Record):
    users_file: str
    items_file: str
    embeddings_file: str  # the text fields' distinct strings and their vectors
    users: int
    items: int


@dataclass(frozen=True)
class SplitFile(_Record):
    file: str  # a recorded evaluation split (.npz)


@dataclass(frozen=True)
class Training(_Record):
    """What training recorded, kept for GetModelInfo and for people; the server does not depend on it."""

    data: dict[str, Any]
    recipe: dict[str, Any]
    metrics: dict[str, dict[str, dict[str, Any]]]  # split -> model or baseline -> metric -> value


@dataclass(frozen=True)
class ServingManifest(_Record):
    """``manifest.json`` of a serving folder."""

    format: str
    format_version: int
    default_model: str
    encoder: EncoderEntry
    models: dict[str, ModelEntry]
    catalog: Catalog
    splits: dict[str, SplitFile]
    files: dict[str, FileEntry]  # every other file in the folder, by posix path
    created_utc: str | None = None
    export_seconds: float | None = None
    parity: tuple[ParityCheck, ...] = ()
    training: Training | None = None
    versions: dict[str, str] = field(default_factory=dict)  # package -> version at export

    @classmethod
    def from_json(cls, data: Any, source: Path | str = MANIFEST_FILE) -> ServingManifest:
        """As :meth:`_Record.from_json`, plus the checks that span fields (format, default model)."""
        if not isinstance(data, dict):
            raise ArtifactError(source, f"must be a JSON object (got {type(data).__name__})")
        if data.get("format") != SERVING_FORMAT:
            raise ArtifactError(source, f"format is {data.get('format')!r}, expected {SERVING_FORMAT!r}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                source, f"format_version {data.get('format_version')} is not {FORMAT_VERSION}"
            )
        m: ServingManifest = _decode(cls, data, "", source)
        if not m.models:
            raise ArtifactError(source, "models is empty (expected at least one exported model)")
        if m.default_model not in m.models:
            raise ArtifactError(
                source, f"default_model {m.default_model!r} is not among models {sorted(m.models)}"
            )
        for key, name in (
            ("default_variant", m.encoder.default_variant),
            ("gpu_variant", m.encoder.gpu_variant),
        ):
            if name not in m.encoder.variants:
                raise ArtifactError(
                    source,
                    f"encoder.{key} {name!r} is not among encoder.variants {sorted(m.encoder.variants)}",
                )
        return m

    @classmethod
    def load(cls, root: Path | str, verify_hashes: bool = True) -> ServingManifest:
        """Reads ``root/manifest.json`` and checks it against the files.

        Checks: format and version; every field the server uses, by name and type; every listed file
        exists with the listed size and (when ``verify_hashes``) sha256; every file the manifest points
        to is listed.

        Raises:
            ArtifactError: naming the manifest and the field, or the first offending file.
        """
        root = Path(root)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise ArtifactError(
                path, "not found: is this a serving artifacts folder written by `towerserve export`?"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArtifactError(path, f"not valid JSON ({err})") from err
        manifest = cls.from_json(data, path)
        for rel, entry in manifest.files.items():
            p = root / rel
            if not p.is_file():
                raise ArtifactError(p, "listed in manifest.json but missing")
            if p.stat().st_size != entry.bytes:
                raise ArtifactError(
                    p, f"size {p.stat().st_size} does not match manifest.json ({entry.bytes} bytes)"
                )
            if verify_hashes and sha256_file(p) != entry.sha256:
                raise ArtifactError(p, "sha256 does not match manifest.json (modified or corrupted)")
        for rel in manifest.referenced_files():
            if rel not in manifest.files:
                raise ArtifactError(root / rel, "used by manifest.json but has no sha256 entry")
        return manifest

    def referenced_files(self) -> list[str]:
        """Every file the manifest points to: the values of fields named ``file`` or ``*_file``."""
        return list(_file_fields(self))


def _file_fields(node: Any) -> Iterator[str]:
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if f.name == "files":  # the hash list itself
                continue
            if isinstance(value, str) and (f.name == "file" or f.name.endswith("_file")):
                yield value
            else:
                yield from _file_fields(value)
    elif isinstance(node, Mapping):
        for v in node.values():
            yield from _file_fields(v)
    elif isinstance(node, (tuple, list)):
        for v in node:
            yield from _file_fields(v)


# ------------------------------------------------------------------------------------- files and hashes


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(root: Path, exclude: tuple[str, ...] = (MANIFEST_FILE,)) -> dict[str, FileEntry]:
    """sha256 and size of every file under ``root`` (posix relative paths), for the manifest."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = FileEntry(sha256=sha256_file(p), bytes=p.stat().st_size)
    return out


def load_manifest(root: Path | str, verify_hashes: bool = True) -> dict[str, Any]:
    """The checked manifest as plain JSON, for the engine until it reads :class:`ServingManifest`."""
    return ServingManifest.load(root, verify_hashes).to_json()


def check_dims(path: Path | str, what: str, expected: int, got: int) -> None:
    if expected != got:
        raise ArtifactError(path, f"{what} is {got}, manifest.json says {expected}")
