"""The CUDA path: a visible fall-back to CPU everywhere, and real CUDA checks where onnxruntime-gpu runs."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort
import pytest

from towerserve.server.engine.engine import Engine, EngineConfig
from towerserve.server.engine.info import model_info
from towerserve.server.engine.runtime import CPU, CUDA, resolve_providers

HAS_CUDA = CUDA in ort.get_available_providers()
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA,
    reason="onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu on a CUDA machine)",
)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA: the fall-back path is not taken")
def test_cuda_request_falls_back_to_cpu_and_says_so(serving, caplog):
    caplog.set_level(logging.WARNING, logger="towerserve")
    assert resolve_providers("cuda") == [CPU]
    engine = Engine(serving, EngineConfig(model="two_tower", device="cuda"))
    # The providers really used are reported (GetModelInfo.providers), never a silent CUDA claim.
    assert engine.providers == [CPU]
    assert model_info(engine).providers == [CPU]
    assert engine.encoder_variant == engine.manifest.encoder.default_variant
    assert "falling back to CPU" in caplog.text
    cpu = Engine(serving, EngineConfig(model="two_tower", device="cpu"))
    user = engine.user_ids[0]
    assert engine.recommend(user, 5)[1:] == cpu.recommend(user, 5)[1:]


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        resolve_providers("tpu")


@pytest.mark.gpu
@needs_cuda
def test_cuda_engine_runs_on_cuda_and_matches_cpu(serving):
    gpu = Engine(serving, EngineConfig(model="two_tower", device="cuda"))
    cpu = Engine(serving, EngineConfig(model="two_tower", device="cpu"))
    assert CUDA in gpu.providers
    for user in gpu.user_ids[:20]:
        _, rows_g, probs_g = gpu.recommend(user, 10, exclude_seen=False)
        _, rows_c, probs_c = cpu.recommend(user, 10, exclude_seen=False)
        np.testing.assert_allclose(probs_g, probs_c, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_fp16_encoder_on_cuda_keeps_cosine(serving):
    engine = Engine(serving, EngineConfig(model="two_tower", device="cuda", encoder_variant="fp16"))
    assert engine.encoder_variant == "fp16", "the fp16 graph failed its load-time check on this GPU"
    table = engine.text["description"]
    texts = list(table.known)[:64]
    got = engine.encoder.encode(texts, table.max_length, table.pad_to)
    ref = table.table[[table.known[t] for t in texts]]
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.mean() >= 0.999
