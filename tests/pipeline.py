"""Builds small, real artifacts for tests: tiny BERT, tiny data, real training, real export (cached per path)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

os.environ["USE_TF"] = "0"

N_USERS, N_ITEMS = 240, 48


def tiny_bert(path: Path) -> Path:
    """A 2-layer, 32-wide BERT with seeded random weights and MiniLM's real tokenizer, saved to ``path``."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from towerserve.trainer.text import default_model

    tok = BertTokenizerFast.from_pretrained(default_model())
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_data(path: Path, seed: int = 3) -> Path:
    if (path / "users.csv").is_file():
        return path
    from towerserve.trainer.synth import generator as synth

    synth.generate(path, N_USERS, N_ITEMS, seed=seed, progress=False)
    return path


def tiny_train(path: Path, data: Path, encoder: Path, models=("seed", "two_tower"), seed: int = 42) -> Path:
    """Trains on tiny data with the tiny BERT (a few seconds); no embedding cache so tests stay hermetic."""
    if (path / "manifest.json").is_file():
        return path
    from towerserve.trainer.text import EncoderConfig
    from towerserve.trainer.train import FitConfig, TrainConfig, train

    cfg = TrainConfig(
        models=tuple(models),
        fit=FitConfig(epochs=3, batch_size=256, patience=0),
        encoder=EncoderConfig(model=str(encoder), cache_dir=None),
        seed=seed,
        embedding_dim=8,
        hidden=(16,),
        progress=False,
    )
    train(data, path, cfg)
    return path


def tiny_export(artifacts: Path) -> Path:
    """Exports with every encoder variant (the tiny graph makes that quick); returns the serving folder."""
    serving = artifacts / "serving"
    if (serving / "manifest.json").is_file():
        return serving
    from towerserve.export.bundle import ExportConfig, main_export

    main_export(artifacts, ExportConfig(parity_users=200))
    return serving


def copy_serving(serving: Path, dst: Path) -> Path:
    """A private copy a test may tamper with."""
    shutil.copytree(serving, dst)
    return dst


def build_all(base: Path) -> dict[str, Path]:
    """The whole tiny pipeline under ``base/pipeline``; idempotent. Tests take it from conftest's
    session fixtures (``built``, ``serving``, ``bert``), which pass the session's base temp folder."""
    root = Path(base) / "pipeline"
    root.mkdir(parents=True, exist_ok=True)
    bert = tiny_bert(root / "bert")
    data = tiny_data(root / "data")
    artifacts = tiny_train(root / "artifacts", data, bert)
    return {"bert": bert, "data": data, "artifacts": artifacts, "serving": tiny_export(artifacts)}


@contextlib.contextmanager
def running_server(serving: Path, load: bool = True, registry=None, **overrides) -> Iterator:
    """A real server on 127.0.0.1:0, stopped on exit; ``overrides`` go to ServerConfig.

    Each server gets its own metrics registry (``registry`` or a new one), so several servers can
    live in one test process.
    """
    from prometheus_client import CollectorRegistry

    from towerserve.server.api.app import ServerConfig, create_server

    running = create_server(
        ServerConfig(artifacts=serving, host="127.0.0.1", port=0, **overrides),
        metrics_registry=registry if registry is not None else CollectorRegistry(),
    )
    try:
        if load:
            running.load()
        yield running
    finally:
        running.stop(0)


# "Personalises": users who differ in profession or personality get different top-10 lists, for at
# least this share of the attribute groups (the tiny pipeline's two_tower: every one of its 67; a
# model that cannot personalise: one list for all, share 1/67).
PERSONAL_SHARE = 0.8


def personal_share(lists_by_group: dict) -> float:
    """Distinct top-10 lists per attribute group (1: every group its own list)."""
    return len(set(lists_by_group.values())) / len(lists_by_group)


def ivf_copy(serving: Path, dst: Path, model: str = "two_tower", search: int = 1) -> Path:
    """A copy of a bundle whose ``model`` serves through an IVF index (as `export --index ivf` writes
    one, untuned: nprobe ``search``)."""
    import json

    import faiss
    import numpy as np

    from towerserve.export.index import INDEX_FILE, build

    copy_serving(serving, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    split = manifest["models"][model]["splits"]["holdout"]
    rel = str(Path(split["item_vectors_file"]).parent / INDEX_FILE)
    faiss.write_index(build(np.load(dst / split["item_vectors_file"]), "ivf"), str(dst / rel))
    split["index"] = {"kind": "ivf", "file": rel, "search": search, "recall_at_10": 1.0, "queries": 0}
    (dst / "manifest.json").write_text(json.dumps(manifest))
    rehash(dst, rel)
    return dst


def rehash(copy: Path, rel: str) -> None:
    """A bundle copy's manifest made to vouch for its changed file ``rel`` (size and sha256), so only the
    content is wrong: what a damaged (or deliberately altered) bundle looks like past the hash check."""
    import hashlib
    import json

    manifest = json.loads((copy / "manifest.json").read_text())
    data = (copy / rel).read_bytes()
    manifest["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (copy / "manifest.json").write_text(json.dumps(manifest))


def shuffled_copy(serving: Path, dst: Path) -> Path:
    """A copy of a bundle whose served model's item vectors are permuted (the manifest rehashed):
    loadable, and wrong; a deliberately damaged candidate."""
    import json

    import numpy as np

    copy = copy_serving(serving, dst)
    default = json.loads((copy / "manifest.json").read_text())["default_model"]
    rel = f"models/{default}/holdout/item_vectors.npy"
    vectors = np.load(copy / rel)
    np.save(copy / rel, vectors[np.random.default_rng(0).permutation(len(vectors))])
    rehash(copy, rel)
    return copy


def serve_process(serving: Path, *extra: str) -> tuple:
    """`towerserve serve --artifacts serving --host 127.0.0.1 --port 0 [extra]` in a process of its own
    (what kill -9 and per-process limits need), once it logs SERVING: (the Popen, its target). Its
    stderr is a pipe: close it after waiting for the process."""
    import re
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("TOWERSERVE_")}
    cmd = [sys.executable, "-m", "towerserve.clients.cli", "serve", "--artifacts", str(serving)]
    cmd += ["--host", "127.0.0.1", "--port", "0", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    log: list[str] = []
    deadline = time.monotonic() + 120
    while not any(" SERVING " in line for line in log):
        line = proc.stderr.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("".join(log)[-3000:])
        log.append(line)
    port = re.search(r"listening on 127\.0\.0\.1:(\d+)", "".join(log)).group(1)
    return proc, f"127.0.0.1:{port}"


@contextlib.contextmanager
def server_and_channel(serving: Path, load: bool = True, **overrides) -> Iterator:
    """:func:`running_server` plus an insecure channel to it: yields (running, channel)."""
    import grpc

    with (
        running_server(serving, load, **overrides) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield running, channel


def randomise_layers(model, seed: int) -> None:
    """N(0, 0.5) in every weight of every trainable leaf layer (a tower is a layer too; frozen layers,
    such as the constant columns, keep theirs), so no test passes on zeros left by initialisation."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if layer.weights and layer.trainable and not isinstance(layer, keras.Model):
            layer.set_weights(
                [rng.normal(0, 0.5, size=w.shape).astype(np.float32) for w in layer.get_weights()]
            )


def onnx_user_tower(path: Path):
    """A user-tower graph (export's user_tower.onnx) as the server's RunTower calls it:
    ``run(features, ids, history or None) -> vectors``."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x, ids, history):
        history = np.zeros((len(x), 1), np.int32) if history is None else history
        feed = {"user_features": x, "user_index": ids.astype(np.int32), "history": history.astype(np.int32)}
        return sess.run(["user_vector"], feed)[0]

    return run
