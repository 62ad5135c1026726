"""Shared fixtures for the foundation tests: one small generated data set per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A 300 x 60 generated data set (matrix form, seed 7); treat it as read-only."""
    from towerserve.trainer import synth

    root = tmp_path_factory.mktemp("small_data")
    synth.generate(root, n_users=300, n_items=60, seed=7, progress=False)
    return root
