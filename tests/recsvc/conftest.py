"""Fixtures of the recsvc suites: real models trained on planted data (see `planting`)."""

from __future__ import annotations

import pytest
from planting import Planted, train_planted


@pytest.fixture(scope="session")
def planted_model(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return train_planted(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="session")
def planted_bpr(tmp_path_factory: pytest.TempPathFactory) -> Planted:
    return train_planted(tmp_path_factory.mktemp("planted-bpr"), "bpr")
