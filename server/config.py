"""How the engine loads an artifacts folder: one frozen dataclass, filled by the server from its flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from .validation import Limits


@dataclass(frozen=True)
class EngineConfig:
    """How an artifacts folder is loaded.

    Attributes:
        model: model kind to serve (None: the manifest's default, the best holdout NDCG@10).
        device: "cpu" or "cuda" (falls back to CPU, visibly, where CUDA is not available).
        encoder_variant: fp32 / optimized / int8 / fp16 (None: int8 on CPU when it passed its gate,
            fp16 on CUDA).
        tower_threads: ORT threads per tower session; 1, because parallelism comes from gRPC's pool.
        encoder_threads: ORT threads for the text encoder.
        verify_hashes: check every file's sha256 against the manifest at load.
        candidates: per known user, the exact top-M unseen items kept with each catalogue snapshot
            (0: off). Requests that M answers never touch numpy; see Engine.recommend.
        limits: request size limits.
    """

    model: str | None = None
    device: str = "cpu"
    encoder_variant: str | None = None
    tower_threads: int = 1
    encoder_threads: int = 1
    verify_hashes: bool = True
    candidates: int = 128
    limits: Limits = field(default_factory=Limits)
