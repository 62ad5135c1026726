"""Shared fixtures: one small generated data set and one tiny real pipeline per session; the slow tier."""

from __future__ import annotations

import csv
from pathlib import Path

import pipeline
import pytest

# A test that needs the tiny pipeline (training and export: a minute or more on two busy cores, once
# per session) or runs the tiny BERT through torch is slow whatever it does afterwards; marking it
# here, from the fixtures it asks for, keeps `pytest -m "not slow"` honest without a marker to forget
# in every module.
_SLOW_FIXTURES = frozenset({"bert", "built", "serving", "hybrid"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A 300 x 60 generated data set (matrix form, seed 7); treat it as read-only."""
    from towerserve.trainer.synth import generator as synth

    root = tmp_path_factory.mktemp("small_data")
    synth.generate(root, n_users=300, n_items=60, seed=7, progress=False)
    return root


@pytest.fixture(scope="session")
def bert(tmp_path_factory) -> Path:
    """The tiny BERT (MiniLM's tokenizer, seeded random weights), at the path build_all uses so the
    session builds it once."""
    root = tmp_path_factory.getbasetemp() / "pipeline"
    root.mkdir(parents=True, exist_ok=True)
    return pipeline.tiny_bert(root / "bert")


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> dict[str, Path]:
    """The tiny pipeline's folders (bert, data, artifacts, serving); treat them as read-only and
    tamper only with a :func:`pipeline.copy_serving` copy."""
    return pipeline.build_all(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def serving(built) -> Path:
    """The tiny pipeline's serving folder (what a server loads)."""
    return built["serving"]


@pytest.fixture(scope="session")
def hybrid(built) -> Path:
    """A tiny hybrid (mean pooling, one recipe) trained on the tiny pipeline's data with the tiny BERT
    and exported with the fp32 encoder only: its serving folder. Read-only, like ``serving``."""
    from towerserve.export.bundle import ExportConfig, main_export
    from towerserve.export.encoder.variants import EncoderExportConfig
    from towerserve.trainer.hybrid.config import HybridConfig
    from towerserve.trainer.text import EncoderConfig
    from towerserve.trainer.train import FitConfig, TrainConfig, train

    artifacts = built["artifacts"].parent / "hybrid"
    if not (artifacts / "serving" / "manifest.json").is_file():
        cfg = TrainConfig(
            models=("hybrid",),
            fit=FitConfig(epochs=2, batch_size=256, patience=0),
            encoder=EncoderConfig(model=str(built["bert"]), cache_dir=None),
            progress=False,
            hybrid=HybridConfig(
                dim=8, hidden=(16,), batch_size=128, epochs=3, train_history=6, learning_rate=1e-2
            ),
            hybrid_search=({"loss": "softmax"},),
        )
        train(built["data"], artifacts, cfg)
        lean = EncoderExportConfig(optimize=False, int8=False, fp16=False)
        main_export(artifacts, ExportConfig(encoder=lean, parity_users=50))
    return artifacts / "serving"


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def users(serving) -> list[dict[str, str]]:
    """The served catalogue's users.csv rows, in file order (the row order of the recorded splits)."""
    return _read_csv(serving / "catalog" / "users.csv")


@pytest.fixture(scope="session")
def items(serving) -> dict[str, dict[str, str]]:
    """The served catalogue's items.csv rows by item_id, in file order (the splits' column order)."""
    return {r["item_id"]: r for r in _read_csv(serving / "catalog" / "items.csv")}


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session (tests/postgres.py): a :class:`postgres.PostgresServer`
    (``.url``, ``.stop()``, ``.start()``, ``.freeze()``, ``.thaw()``). A test that stops or freezes
    this shared one starts or thaws it again before it returns; one that would rather not share
    starts its own with ``postgres.postgres_server()``."""
    from postgres import postgres_server

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(pg_server) -> str:
    """The session server's URL. Tests that share it isolate themselves with a database of their own
    (:func:`postgres.fresh_database`)."""
    return pg_server.url


@pytest.fixture(params=["sqlite", "postgres"])
def journal(request, tmp_path) -> dict:
    """One journal servers share, as ServerConfig overrides: --state-dir (SQLite, as --workers
    processes share it) or --catalog-url (a fresh database on the session's PostgreSQL)."""
    if request.param == "sqlite":
        return {"state_dir": tmp_path / "state"}
    from postgres import fresh_database

    return {"catalog_url": fresh_database(request.getfixturevalue("postgres_url"))}
