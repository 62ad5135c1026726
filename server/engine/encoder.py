"""The text encoder at serving time: Rust tokenizer + ONNX Runtime graph with pooling inside."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..core.manifest import ArtifactError
from .deadline import Check, never
from .runtime import make_session

_LOGGER = logging.getLogger(__name__)
# Most tokens (rows x padded width) one graph run takes: 64 texts of up to 64 tokens in one run.
TOKENS_PER_RUN = 4096


class OnnxTextEncoder:
    """Embeds texts with an exported encoder graph; matches trainer.text.TextEncoder's output.

    Args:
        model_path: the ONNX graph (inputs input_ids, attention_mask[, token_type_ids]; output embedding).
        tokenizer_path: tokenizer.json saved beside it.
        pooling: "mean" or "notebook". Notebook pooling averages padding in, so callers pass the
            length the training run padded that field to (``pad_to``; manifest ``padded_lengths``).
        providers, threads: passed to :func:`make_session`.
        batch_size: texts per graph run.
        lengths: truncation lengths to prepare now (others are prepared on first use).

    Thread safety: a Rust tokenizer raises "Already borrowed" when one thread reconfigures it while
    another encodes with it, so no tokenizer is ever reconfigured after it is published. There is one
    per truncation length, configured before anyone else can see it; encoding only reads it.
    """

    def __init__(
        self,
        model_path: Path | str,
        tokenizer_path: Path | str,
        pooling: str = "mean",
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int = 1,
        batch_size: int = 64,
        lengths: Iterable[int] = (),
    ):
        from tokenizers import Tokenizer

        self.session = make_session(model_path, providers, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        try:
            self._tokenizer_json = Tokenizer.from_file(str(tokenizer_path)).to_str()
        except Exception as err:  # the Rust library raises its own Exception type for a bad file
            raise ArtifactError(tokenizer_path, f"unreadable tokenizer ({err})") from err
        self._tokenizers: dict[int, Tokenizer] = {}
        self._tokenizers_lock = threading.Lock()
        self.pad_id = self._tokenizer(0).token_to_id("[PAD]") or 0
        self.pooling = pooling
        self.batch_size = batch_size
        for length in lengths:
            self._tokenizer(length)

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _tokenizer(self, max_length: int):
        """The tokenizer that truncates to ``max_length`` tokens (0: never), built once and then only read."""
        tok = self._tokenizers.get(max_length)
        if tok is None:
            from tokenizers import Tokenizer

            with self._tokenizers_lock:
                tok = self._tokenizers.get(max_length)
                if tok is None:
                    tok = Tokenizer.from_str(self._tokenizer_json)
                    tok.no_padding()
                    if max_length:
                        tok.enable_truncation(max_length)
                    else:
                        tok.no_truncation()
                    self._tokenizers[max_length] = tok  # published fully configured
        return tok

    def tokenize(
        self, texts: Sequence[str], max_length: int, pad_to: int | None = None
    ) -> dict[str, np.ndarray]:
        """Token ids, mask and type ids [b, t] as int64, truncated to max_length, padded to the batch
        max (or to ``pad_to`` under notebook pooling)."""
        tokenizer = self._tokenizer(min(max_length, pad_to) if pad_to else max_length)
        encs = tokenizer.encode_batch(list(texts))
        width = pad_to if (pad_to and self.pooling == "notebook") else max(len(e.ids) for e in encs)
        ids = np.full((len(encs), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), width), dtype=np.int64)
        types = np.zeros((len(encs), width), dtype=np.int64)
        for r, e in enumerate(encs):
            n = min(len(e.ids), width)
            ids[r, :n] = e.ids[:n]
            mask[r, :n] = 1
            types[r, :n] = e.type_ids[:n]
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def encode(
        self, texts: Sequence[str], max_length: int, pad_to: int | None = None, check: Check = never
    ) -> np.ndarray:
        """float32 [len(texts), dim]. Similar lengths are batched together to waste little on padding.

        ``check`` runs before each graph run (at most TOKENS_PER_RUN tokens: tens of ms on a CPU
        core) and may raise to abandon the rest, e.g. when the client's deadline has passed.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.session.get_outputs()[0].shape[-1] or 0), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(texts), self.batch_size):
            idx = order[start : start + self.batch_size]
            feeds = self.tokenize([texts[j] for j in idx], max_length, pad_to)
            # Long texts run in slices of the padded batch, so no single run (and no wait for the
            # next check) grows with the text length: 64 texts of 200 tokens take ~0.5 s as one run.
            rows = max(1, TOKENS_PER_RUN // feeds["input_ids"].shape[1])
            for a in range(0, len(idx), rows):
                check()
                vecs = self.session.run([self.output_name], {k: v[a : a + rows] for k, v in feeds.items()})[0]
                if out is None:
                    out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
                out[idx[a : a + rows]] = vecs
        return out
