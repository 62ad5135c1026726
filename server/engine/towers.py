"""The model on ONNX Runtime: user and item tower sessions, the text encoder and its text-vector caches."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..core.csr import CSR
from ..core.features import FieldSpec, FieldTable
from ..core.manifest import (
    FALLBACK_VARIANT,
    MANIFEST_FILE,
    SERVED_SPLIT,
    ArtifactError,
    EncoderEntry,
    ModelSplit,
    TowerGraph,
    UserVectors,
    check_dims,
)
from ..core.numerics import cosine_rows
from .deadline import Check, never
from .encoder import OnnxTextEncoder
from .history import DEFAULT_MAX_HISTORY, known_ids, padded_rows
from .mean_history import MeanHistory
from .runtime import CUDA, make_session

_LOGGER = logging.getLogger(__name__)

# Load-time check of an encoder variant: its vectors for a sample of catalogue texts against the
# training-time ones. int8/fp16 graphs that pass export's gate sit well above this.
SELF_CHECK_SAMPLE = 32
SELF_CHECK_MIN_COSINE = 0.999
WARM_UP_LENGTH = 16
# Rows per tower run when a request's rows are checked against its deadline between runs (a tower
# is a small MLP: 4,096 rows take a few ms).
TOWER_ROWS = 4096
# Known users' vectors read from the bundle are checked against the tower on this many sampled users
# at load, to export's parity tolerance: a file that does not belong to the graph beside it (a tower
# replaced after export, a file from another bundle) is refused, not served.
STORED_CHECK_USERS = 64
STORED_ATOL = STORED_RTOL = 1e-4


def _graph_inputs(path: Path, sess, graph: TowerGraph) -> dict[str, np.dtype]:
    """The integer inputs' dtypes by name, after checking the graph has exactly the inputs the manifest
    names (features, and a hybrid user tower's ids and history) and the feature width it records."""
    args = {a.name: a for a in sess.get_inputs()}
    named = [n for n in (graph.input, graph.id_input, graph.history_input) if n]
    if sorted(args) != sorted(named):
        raise ArtifactError(path, f"has inputs {sorted(args)}, manifest.json names {sorted(named)}")
    check_dims(path, "input width", graph.input_dim, int(args[graph.input].shape[1]))
    return {n: np.dtype(np.int64 if "int64" in args[n].type else np.int32) for n in named[1:]}


class Tower:
    """One (model, split) pair of ONNX towers with its feature specs and exported item vectors.

    A hybrid user tower also reads the user's id (``id_input``) and interaction history
    (``history_input``); either may be absent (None), and a features-only tower reads neither.
    """

    def __init__(self, root: Path, entry: ModelSplit, providers: Sequence[str], threads: int, split: str):
        self.split = split
        self.user_specs: list[FieldSpec] = list(entry.features.user)
        self.item_specs: list[FieldSpec] = list(entry.features.item)
        u, i = entry.user_tower, entry.item_tower
        self.user_session = make_session(root / u.file, providers, threads)
        self.item_session = make_session(root / i.file, providers, threads)
        self.user_in, self.user_out = u.input, u.output
        self.item_in, self.item_out = i.input, i.output
        self.id_input, self.history_input = u.id_input, u.history_input
        self.history_pooling = u.history_pooling
        # Known users' history requests without a tower pass (mean pooling, checked at load): see
        # mean_history.py. Built with the known users' vectors; None: every such request runs the tower.
        self.mean_history: MeanHistory | None = None
        self.int_types = _graph_inputs(root / u.file, self.user_session, u)
        # The item tower is fed features only (a hybrid's ID part is in the precomputed vectors).
        _graph_inputs(root / i.file, self.item_session, replace(i, id_input=None, history_input=None))
        for spec, graph in ((self.user_specs, u), (self.item_specs, i)):
            check_dims(root / graph.file, "feature spec width", graph.input_dim, sum(s.dim for s in spec))
        # Most history items a request may send (0: this tower reads no history).
        self.max_history = (u.max_history or DEFAULT_MAX_HISTORY) if u.history_input else 0
        self.dim = u.output_dim
        vec_path = root / entry.item_vectors_file
        try:
            self.item_vectors = np.load(vec_path).astype(np.float32)
        except (ValueError, OSError, EOFError) as err:  # truncated or not an .npy at all
            raise ArtifactError(vec_path, f"unreadable ({type(err).__name__}: {err})") from err
        check_dims(vec_path, "vector width", self.dim, int(self.item_vectors.shape[1]))
        self.root, self.stored = root, entry.user_vectors
        self._all_users: np.ndarray | None = None
        self._lock = threading.Lock()

    @property
    def providers(self) -> set[str]:
        return set(self.user_session.get_providers()) | set(self.item_session.get_providers())

    def users(
        self,
        features: np.ndarray,
        ids: np.ndarray | None = None,
        history: np.ndarray | None = None,
        check: Check | None = None,
    ) -> np.ndarray:
        """User vectors float32 [n, dim] from user-tower inputs [n, input_dim], plus, for a tower that
        reads them, ids [n] (1 + users.csv row; 0 or None: unknown) and history [n, L] (1 + exported
        item row, 0 padding; None: empty). A features-only tower ignores both.

        ``check``: run in blocks of TOWER_ROWS rows, calling it before each (a request's deadline).
        """
        if check is not None:
            return _in_blocks(
                len(features),
                check,
                lambda a, b: self.users(
                    features[a:b],
                    None if ids is None else ids[a:b],
                    None if history is None else history[a:b],
                ),
            )
        feed = {self.user_in: features}
        n = len(features)
        if self.id_input:
            dtype = self.int_types[self.id_input]
            feed[self.id_input] = np.zeros(n, dtype) if ids is None else ids.astype(dtype, copy=False)
        if self.history_input:
            dtype = self.int_types[self.history_input]
            feed[self.history_input] = (
                np.zeros((n, 1), dtype) if history is None else history.astype(dtype, copy=False)
            )
        return self.user_session.run([self.user_out], feed)[0]

    def items(self, features: np.ndarray, check: Check | None = None) -> np.ndarray:
        """Item vectors float32 [n, dim] from item-tower inputs [n, input_dim]; ``check``: as
        :meth:`users`."""
        if check is not None:
            return _in_blocks(len(features), check, lambda a, b: self.items(features[a:b]))
        return self.item_session.run([self.item_out], {self.item_in: features})[0]

    def all_user_vectors(
        self,
        build_features: Callable[[list[FieldSpec], np.ndarray], np.ndarray],
        n_users: int,
        train: CSR | None = None,
    ) -> np.ndarray:
        """Every known user's vector, reused by Recommend, Score and Evaluate (a known user's
        attributes never change while served): memory-mapped from the bundle when export stored them
        (checked on sampled users), else one batched user-tower pass, once.

        A hybrid tower gets each user's id (1 + row; 0 without training positives) and history: their
        positives in ``train`` (the training positives of this tower's split, so Evaluate never sees a
        held-out item), padded per batch.

        Raises:
            ArtifactError: stored vectors of the wrong shape, or that the tower does not reproduce.
        """
        if self._all_users is not None:
            return self._all_users
        with self._lock:
            if self._all_users is None:
                # Requests only reach the served split's tower (the cold one is for Evaluate).
                pooled = self.split == SERVED_SPLIT and self.history_input and self.history_pooling == "mean"
                pooled = pooled and train is not None

                def features(rows: np.ndarray) -> np.ndarray:
                    return build_features(self.user_specs, rows)

                if self.stored is not None:
                    out = self._stored_users(features, n_users, train)
                    arrays = self._stored_mean_history(n_users, train) if pooled else None
                    if arrays is not None:
                        self.mean_history = MeanHistory.stored(self.users, features, out, *arrays, train)
                    elif pooled:
                        self.mean_history = MeanHistory.build(self.users, features, out, train)
                else:
                    out = np.empty((n_users, self.dim), dtype=np.float32)
                    for start in range(0, n_users, TOWER_ROWS):
                        rows = np.arange(start, min(n_users, start + TOWER_ROWS))
                        out[rows] = self._known_users(features, rows, train)
                    if pooled:
                        self.mean_history = MeanHistory.build(self.users, features, out, train)
                self._all_users = out  # published last: readers check it without the lock
            return self._all_users

    def _known_users(self, features: Callable, rows: np.ndarray, train: CSR | None) -> np.ndarray:
        """Known users ``rows``' vectors with their training histories: one tower run."""
        history = padded_rows(train, rows) if train is not None and self.history_input else None
        return self.users(features(rows), known_ids(train, rows), history)

    def _load_stored(self, rel: str, rows: int) -> np.ndarray:
        """A stored float32 [rows, dim] array, memory-mapped read-only (pages load as users ask)."""
        path = self.root / rel
        try:
            out = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as err:
            raise ArtifactError(path, f"unreadable ({type(err).__name__}: {err})") from err
        if out.dtype != np.float32 or out.ndim != 2:
            raise ArtifactError(path, f"holds {out.dtype} of shape {out.shape}, not float32 [n, {self.dim}]")
        check_dims(path, "rows", rows, out.shape[0])
        check_dims(path, "vector width", self.dim, out.shape[1])
        return out

    def _stored_users(self, features: Callable, n_users: int, train: CSR | None) -> np.ndarray:
        """The bundle's known-user vectors, after the tower reproduces them on sampled users."""
        stored: UserVectors = self.stored
        out = self._load_stored(stored.file, n_users)
        rows = np.sort(
            np.random.default_rng(0).choice(n_users, size=min(STORED_CHECK_USERS, n_users), replace=False)
        )
        want = self._known_users(features, rows, train)
        if not np.allclose(out[rows], want, STORED_RTOL, STORED_ATOL):
            raise ArtifactError(
                self.root / stored.file,
                f"differs from what its user tower computes for sampled users (max |diff| "
                f"{np.abs(out[rows] - want).max():.2e}): the file and the graph are not from one export",
            )
        return out

    def _stored_mean_history(self, n_users: int, train: CSR) -> tuple[np.ndarray, ...] | None:
        """(base, sums, table) from the bundle, or None when export stored none."""
        s: UserVectors = self.stored
        if not (s.base_file and s.sums_file and s.table_file):
            return None
        return (
            self._load_stored(s.base_file, n_users),
            self._load_stored(s.sums_file, n_users),
            self._load_stored(s.table_file, train.n_cols),
        )


def _in_blocks(n: int, check: Check, run: Callable[[int, int], np.ndarray]) -> np.ndarray:
    """``run(a, b)`` over blocks of TOWER_ROWS rows of ``n``, stacked; ``check()`` before each block."""
    parts = []
    for a in range(0, max(n, 1), TOWER_ROWS):
        check()
        parts.append(run(a, min(n, a + TOWER_ROWS)))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _digest(text: str) -> bytes:
    """The cache key of a text: 16 bytes however long the text (a 5,000-character description
    holds up to 20 kB as a str; 10,000 of them per field kept as keys would be 200 MB)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class TextVectors:
    """Text -> vector for one field: the exported table first, then the ONNX encoder (LRU-cached
    by the text's digest, so the cache holds ``cache_size`` vectors and no texts).

    Safe to share across request threads: the cache is guarded by a lock, encoding runs outside it.
    """

    def __init__(self, table: FieldTable, max_length: int, pad_to: int | None, cache_size: int = 10_000):
        self.known = {str(t): r for r, t in enumerate(table.texts)}
        self.table = table.vectors
        self.max_length = max_length
        self.pad_to = pad_to
        self.cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()

    @property
    def truncation(self) -> int:
        """Tokens the encoder keeps for this field."""
        return min(self.max_length, self.pad_to) if self.pad_to else self.max_length

    def new(self, texts: Sequence[str]) -> set[str]:
        """The distinct ``texts`` the exported table lacks (cached or not: what a request may cost)."""
        return set(texts).difference(self.known)

    def get(self, texts: Sequence[str], encoder: OnnxTextEncoder, check: Check = never) -> np.ndarray:
        """float32 [len(texts), dim]; ``check`` runs between the encoder's graph runs."""
        out = np.empty((len(texts), self.table.shape[1]), dtype=np.float32)
        missing: list[int] = []
        keys: dict[str, bytes] = {}
        for t in texts:
            if t not in self.known and t not in keys:
                keys[t] = _digest(t)  # hashed outside the lock
        with self.lock:
            for j, t in enumerate(texts):
                r = self.known.get(t)
                if r is not None:
                    out[j] = self.table[r]
                elif (v := self.cache.get(keys[t])) is not None:
                    self.cache.move_to_end(keys[t])
                    out[j] = v
                else:
                    missing.append(j)
        if missing:
            uniq = sorted({texts[j] for j in missing})
            vecs = dict(zip(uniq, encoder.encode(uniq, self.max_length, self.pad_to, check)))
            with self.lock:
                for t, v in vecs.items():
                    self.cache[keys[t]] = v
                    if len(self.cache) > self.cache_size:
                        self.cache.popitem(last=False)
            for j in missing:
                out[j] = vecs[texts[j]]
        return out


def text_vectors(tables: dict[str, FieldTable], enc: EncoderEntry, path: Path) -> dict[str, TextVectors]:
    """One TextVectors per text field, with the lengths the manifest's encoder section records.

    Raises:
        ArtifactError: ``path`` (the tables' file) has a field the manifest gives no length.
    """
    unknown = sorted(set(tables) - set(enc.max_lengths))
    if unknown:
        raise ArtifactError(
            path,
            f"has text fields {unknown} that manifest.json's encoder.max_lengths {sorted(enc.max_lengths)} lacks",
        )
    return {f: TextVectors(tables[f], enc.max_lengths[f], enc.padded_lengths.get(f)) for f in tables}


def load_encoder(
    root: Path,
    enc: EncoderEntry,
    variant: str | None,
    providers: Sequence[str],
    threads: int,
    text: dict[str, TextVectors],
) -> tuple[OnnxTextEncoder, str]:
    """The text encoder to serve with, and its variant.

    Args:
        root: the artifacts folder; enc: the manifest's encoder section.
        variant: fp32 / optimized / int8 / fp16 (None: the manifest's choice for the device).
        providers, threads: ONNX Runtime execution providers and threads.
        text: the text fields, whose lengths are prepared now and whose tables check the variant.

    Raises:
        ArtifactError: the variant is not in the manifest, or its graph's width is wrong.
    """
    variant = variant or (enc.gpu_variant if CUDA in providers else enc.default_variant)
    if variant not in enc.variants:
        raise ArtifactError(
            root / MANIFEST_FILE, f"has no encoder variant {variant!r} (has {sorted(enc.variants)})"
        )
    lengths = {t.truncation for t in text.values()} | {WARM_UP_LENGTH}
    encoder = _open(root, enc, variant, providers, threads, lengths)
    if not enc.variants[variant].accepted or CUDA in encoder.providers:
        # Export checks variants on its own machine (often CPU only); a variant it could not
        # check, or any graph now running on CUDA, is checked here on the device that runs it,
        # against the training-time vectors, with a fall-back to fp32 if it disagrees.
        ok, detail = _self_check(encoder, text)
        if not ok:
            _LOGGER.warning(
                "encoder variant %s failed its load-time check (%s); using fp32 instead", variant, detail
            )
            variant = FALLBACK_VARIANT
            encoder = _open(root, enc, variant, providers, threads, lengths)
    return encoder, variant


def _open(
    root: Path, enc: EncoderEntry, variant: str, providers: Sequence[str], threads: int, lengths: set[int]
) -> OnnxTextEncoder:
    path = root / enc.variants[variant].file
    encoder = OnnxTextEncoder(
        path, root / enc.tokenizer_file, enc.pooling, providers, threads, lengths=sorted(lengths)
    )
    width = int(encoder.session.get_outputs()[0].shape[1] or enc.dim)
    check_dims(path, "embedding width", enc.dim, width)
    return encoder


def _self_check(encoder: OnnxTextEncoder, text: dict[str, TextVectors]) -> tuple[bool, str]:
    """(passed, detail): cosine of fresh encodings with the exported vectors of the field with the most texts."""
    field_name = max(text, key=lambda f: len(text[f].known))
    field = text[field_name]
    texts = list(field.known)[:SELF_CHECK_SAMPLE]
    rows = [field.known[t] for t in texts]
    try:
        got = encoder.encode(texts, field.max_length, field.pad_to)
    except Exception as err:  # an ORT kernel missing on this device, for instance
        return False, f"{type(err).__name__}: {err}"
    cos = cosine_rows(got, field.table[rows])
    return bool(
        cos.mean() >= SELF_CHECK_MIN_COSINE
    ), f"cosine mean {cos.mean():.5f} on {len(texts)} {field_name} texts"
