"""The serving manifest as typed records: export writes one, the server reads and checks it before loading."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .features import TEXT, FieldSpec
from .records import FieldError, decode, encode, string_fields

SERVING_FORMAT = "towerserve-serving"
TRAIN_FORMAT = "towerserve-train"  # the training folder's manifest.json, which export reads
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SERVED_SPLIT = "holdout"  # the split whose towers and vectors answer requests (cold is for Evaluate)
FALLBACK_VARIANT = "fp32"  # the encoder variant every export has


class ArtifactError(ValueError):
    """An artifacts folder is missing, tampered with or inconsistent; the message names the file."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class _Record:
    """``from_json``/``to_json`` for the frozen dataclasses below, driven by their annotations (records.py)."""

    @classmethod
    def from_json(cls, data: Any, source: Path | str = MANIFEST_FILE):
        """Builds the record from parsed JSON; ``source`` (the file it came from) is named in errors.

        Raises:
            ArtifactError: naming ``source`` and the dotted path of the first missing or mistyped field.
        """
        try:
            return decode(cls, data)
        except FieldError as err:
            raise ArtifactError(source, str(err)) from err

    def to_json(self) -> dict[str, Any]:
        return encode(self)


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
    # What produced the vectors the towers were trained on: "torch", or "onnxruntime int8" / "... fp32"
    # (`train --text-encoder`; export then serves that very variant by default). None: older bundles.
    trained_with: str | None = None


@dataclass(frozen=True)
class TowerGraph(_Record):
    """A user or item tower: one float32 [batch, input_dim] input, one [batch, output_dim] output.

    A hybrid model's user tower also takes ids and a history (absent fields: a features-only tower):

    Attributes:
        id_input: int32 [batch] input: 1 + the user's row in the catalogue's users.csv for a known
            user, 0 for an unknown or anonymous one.
        history_input: int32 [batch, L] input (L >= 1, dynamic): 1 + a row of the catalogue's
            items.csv for each item the user interacted with, 0 for padding. A known user's history
            is their training positives in the recorded split of the same name (all of them).
        history_pooling: how the tower pools the history ("mean" or "attention"), for people.
        max_history: the most history items a request may carry.
    """

    file: str
    input: str
    output: str
    input_dim: int
    output_dim: int
    id_input: str | None = None
    history_input: str | None = None
    history_pooling: str | None = None
    max_history: int | None = None


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
class ItemIndex(_Record):
    """How Recommend searches the served split's item vectors, as export chose and measured it.

    Attributes:
        kind: "exact" (no file) or a FAISS index ("hnsw", "ivf") in ``file`` (faiss.write_index).
        search: the search-time knob export tuned (HNSW efSearch, IVF nprobe; 0 for exact).
        recall_at_10: mean recall@10 against exact search over ``queries`` sampled users.
        build_seconds: the index build alone.
        filtered_recall_at_10: recall@10 of filtered answers under the recall gate's filters, by the
            fraction of the catalogue each admits ("1%", "10%"; empty for exact and older bundles).
    """

    kind: str
    recall_at_10: float
    queries: int
    file: str | None = None
    search: int = 0
    build_seconds: float = 0.0
    filtered_recall_at_10: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class UserVectors(_Record):
    """Known users' vectors as export computed them (server/engine/towers.py: Tower.all_user_vectors).

    Attributes:
        file: float32 [n_users, output_dim]: each known user's vector with their training history.
        base_file, sums_file, table_file: a mean-pooling tower's decomposition of those vectors
            (server/engine/mean_history.py: base [n_users, d], sums [n_users, d], table [n_items, d]);
            absent for other towers, or when the graph failed the decomposition's check.
    """

    file: str
    base_file: str | None = None
    sums_file: str | None = None
    table_file: str | None = None


@dataclass(frozen=True)
class ModelSplit(_Record):
    """One model as trained on one split (holdout is served; cold is there for Evaluate)."""

    user_tower: TowerGraph
    item_tower: TowerGraph
    full: FullGraph
    item_vectors_file: str  # float32 [n_items, item_tower.output_dim]
    features: Features
    index: ItemIndex | None = None  # absent (bundles before the index existed): exact
    # Every known user's vector, computed at export by the server's own code and memory-mapped at
    # load (absent: computed at load, one tower pass over every user: 40 s at 10⁶ users).
    user_vectors: UserVectors | None = None


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
    # split -> model or baseline -> metric -> value; None where a row was skipped (the oracle of data
    # without generator truth: any real data set; EASE above its catalogue limit).
    metrics: dict[str, dict[str, dict[str, Any] | None]]


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
        """As :meth:`_Record.from_json`, plus format, version, and the names one field gives another's keys."""
        if not isinstance(data, dict):
            raise ArtifactError(source, f"must be a JSON object (got {type(data).__name__})")
        if data.get("format") != SERVING_FORMAT:
            raise ArtifactError(source, f"format is {data.get('format')!r}, expected {SERVING_FORMAT!r}")
        if data.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                source, f"format_version {data.get('format_version')} is not {FORMAT_VERSION}"
            )
        m = super().from_json(data, source)
        problem = _names_that_point_nowhere(m)
        if problem:
            raise ArtifactError(source, problem)
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
        return list(string_fields(self, lambda name: name == "file" or name.endswith("_file"), skip="files"))


def _names_that_point_nowhere(m: ServingManifest) -> str | None:
    """The first name in ``m`` that is not a key where it must be one, described; None if all are."""
    if not m.models:
        return "models is empty (expected at least one exported model)"
    if m.default_model not in m.models:
        return f"default_model {m.default_model!r} is not among models {sorted(m.models)}"
    variants = sorted(m.encoder.variants)
    # fp32 is where the server falls back when another variant fails its load-time check.
    for key, name in (("default_variant", m.encoder.default_variant), ("gpu_variant", m.encoder.gpu_variant)):
        if name not in variants:
            return f"encoder.{key} {name!r} is not among encoder.variants {variants}"
    if FALLBACK_VARIANT not in variants:
        return f"encoder.variants {variants} lack {FALLBACK_VARIANT!r}, the fall-back variant"
    if SERVED_SPLIT not in m.splits:
        return f"splits {sorted(m.splits)} lack {SERVED_SPLIT!r}, the split the server serves"
    for kind, model in m.models.items():
        where = f"models.{kind}.splits"
        if SERVED_SPLIT not in model.splits:
            return f"{where} {sorted(model.splits)} lack {SERVED_SPLIT!r}, the split the server serves"
        for split, entry in model.splits.items():
            if split not in m.splits:
                return f"{where}.{split} has no recorded split (splits has {sorted(m.splits)})"
            for side, specs in (("user", entry.features.user), ("item", entry.features.item)):
                for j, spec in enumerate(specs):
                    if spec.kind == TEXT and spec.name not in m.encoder.max_lengths:
                        return (
                            f"{where}.{split}.features.{side}[{j}] is text field {spec.name!r}, "
                            f"which encoder.max_lengths {sorted(m.encoder.max_lengths)} lacks"
                        )
    return None


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


def check_dims(path: Path | str, what: str, expected: int, got: int) -> None:
    if expected != got:
        raise ArtifactError(path, f"{what} is {got}, manifest.json says {expected}")
