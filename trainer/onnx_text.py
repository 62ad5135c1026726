"""Training-time text embeddings through an exported ONNX encoder folder (`towerserve export-encoder`).

The torch encoder embeds ~200 texts/s on two cores; the int8 graph the server encodes new texts with
is several times faster and passed the same parity gate, so `train --text-encoder FOLDER` embeds with
it. ONNX Runtime encoding has one home, server/engine/encoder.py's OnnxTextEncoder: training, export's
parity checks and serving tokenise, truncate, batch and pool the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .progress import steps
from .text import EncoderConfig, TextEncoder, encode_cached

FOLDER_FILE = "encoder.json"
FOLDER_FORMAT = "towerserve-encoder"
FOLDER_FORMAT_VERSION = 1
RUNTIME = "onnxruntime"
# Fastest first: int8 when it passed its gate at export, else fp32 (always there, checked against torch).
VARIANT_ORDER = ("int8", "fp32")


class EncoderFolderError(ValueError):
    """A --text-encoder folder that is missing, incomplete or not from `towerserve export-encoder`."""

    def __init__(self, folder: Path | str, problem: str):
        super().__init__(
            f"--text-encoder {folder}: {problem} (write one with `towerserve export-encoder --out {folder}`)"
        )


def read_folder(folder: Path | str) -> dict:
    """The folder's encoder.json after checking its format and that the files it names exist.

    Raises:
        EncoderFolderError: naming the folder and what is wrong with it.
    """
    from towerserve.server.core.manifest import ArtifactError, EncoderEntry

    folder = Path(folder)
    meta_path = folder / FOLDER_FILE
    if not folder.is_dir():
        raise EncoderFolderError(folder, "not a folder")
    if not meta_path.is_file():
        raise EncoderFolderError(folder, f"has no {FOLDER_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise EncoderFolderError(folder, f"{FOLDER_FILE} is not JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != FOLDER_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise EncoderFolderError(folder, f"{FOLDER_FILE} format is {got!r}, expected {FOLDER_FORMAT!r}")
    try:
        entry = EncoderEntry.from_json(meta.get("encoder"), meta_path)
    except ArtifactError as err:
        raise EncoderFolderError(folder, str(err)) from err
    for rel in [entry.tokenizer_file, *(v.file for v in entry.variants.values())]:
        if not (folder / rel).is_file():
            raise EncoderFolderError(folder, f"{rel} is missing")
    meta["entry"] = entry
    return meta


def pick_variant(folder: Path | str, entry) -> str:
    """The fastest variant present that passed its parity gate at export."""
    for name in VARIANT_ORDER:
        v = entry.variants.get(name)
        if v is not None and v.accepted:
            return name
    raise EncoderFolderError(folder, f"no variant of {list(VARIANT_ORDER)} passed its parity gate")


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class OnnxEncoder:
    """Embeds texts with an exported encoder variant; the interface train.embed_fields uses of
    trainer.text.TextEncoder (encode, padded_length, dim, fingerprint, model_ref, config, describe).

    Args:
        folder: written by `towerserve export-encoder`.
        config: batch size, threads (None: every core os.cpu_count() reports), cache; its pooling must
            be the folder's, since the pooling is inside the graph.
    """

    def __init__(self, folder: Path | str, config: EncoderConfig):
        self.folder = Path(folder)
        self.config = config
        meta = read_folder(self.folder)
        self.entry = entry = meta["entry"]
        if entry.pooling != config.pooling:
            raise EncoderFolderError(
                folder, f"was exported with {entry.pooling} pooling, training asks for {config.pooling}"
            )
        self.variant = pick_variant(self.folder, entry)
        self.graph = self.folder / entry.variants[self.variant].file
        self.graph_sha256 = _sha256(self.graph)
        # The cache key: this graph's bytes and its tokenizer, never the torch model's fingerprint, so
        # torch, fp32 and int8 vectors never mix in the cache even for the same texts and lengths.
        tok = _sha256(self.folder / entry.tokenizer_file)
        digest = hashlib.sha256(f"{self.graph_sha256}|{tok}".encode()).hexdigest()[:16]
        self.fingerprint = f"ort-{self.variant}-{digest}"
        self.model_ref = entry.model  # the torch model the graph was exported from (export re-reads it)
        self.dim = int(entry.dim)
        self._runner = None

    @property
    def runner(self):
        """server/engine/encoder.py's OnnxTextEncoder on this variant (loaded on first use: a cache hit needs none)."""
        if self._runner is None:
            from towerserve.server.engine.encoder import OnnxTextEncoder

            threads = self.config.threads or os.cpu_count() or 1
            self._runner = OnnxTextEncoder(
                self.graph,
                self.folder / self.entry.tokenizer_file,
                self.entry.pooling,
                threads=threads,
                batch_size=self.config.batch_size,
            )
        return self._runner

    def describe(self) -> dict:
        """What the training manifest records: export serves this variant, checked against these vectors."""
        return {
            "runtime": RUNTIME,
            "variant": self.variant,
            "folder": str(self.folder.resolve()),
            "graph_sha256": self.graph_sha256,
        }

    def padded_length(self, texts: Sequence[str], max_length: int) -> int:
        """Notebook pooling's pad length: the longest tokenised text, capped at max_length (as torch's)."""
        texts = list(texts)
        # In slices: the padded id arrays of 825k texts at once would be gigabytes.
        widths = [
            self.runner.tokenize(texts[a : a + 4096], max_length)["input_ids"].shape[1]
            for a in range(0, len(texts), 4096)
        ]
        return int(max(widths, default=1))

    def encode(
        self, texts: Sequence[str], max_length: int, desc: str = "embed", progress: bool = True
    ) -> np.ndarray:
        """float32 [len(texts), dim]; each distinct text is embedded once and cached (see TextEncoder)."""
        return encode_cached(self, texts, max_length, desc, progress)

    def _embed(
        self, texts: list[str], max_length: int, pad_to: int | None, desc: str, progress: bool
    ) -> np.ndarray:
        # Sorted by length here, so each step is one batch of similar lengths (little padding) and the
        # bar moves per batch; OnnxTextEncoder.encode keeps a sorted batch as it is.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        bs = self.config.batch_size
        batches = range(0, len(texts), bs)
        for start in steps(batches, len(batches), desc, "batch", bars=progress):
            idx = order[start : start + bs]
            out[idx] = self.runner.encode([texts[j] for j in idx], max_length, pad_to)
        return out


def open_encoder(config: EncoderConfig):
    """The encoder training embeds with: torch's TextEncoder, or an exported ONNX folder's variant."""
    if config.onnx_folder is not None:
        return OnnxEncoder(config.onnx_folder, config)
    return TextEncoder(config)
