"""Fixtures of the API suites: a real model trained on planted data, a real Redis, the ASGI app.

Helpers (the planted shop, clients, problem assertions) live in `serving_support`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from serving_support import Api, open_api
from shop import ManualClock, Models, base_settings, write_planted_shop

from recsvc.config import Settings
from recsvc.registry import Registry
from training import pipeline


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    folder = tmp_path_factory.mktemp("planted")
    events, items = write_planted_shop(folder)
    settings = base_settings()
    trained = []
    for seed in (1, 2):
        config = settings.model_copy(
            update={"training": settings.training.model_copy(update={"random_state": seed})}
        )
        trained.append(pipeline.train(config, events=events, items=items).artifact)
    return Models(*trained)


@pytest.fixture
def registry(shop_settings: Settings) -> Registry:
    return Registry(shop_settings.registry.dir)


@pytest.fixture
def first_version(registry: Registry, models: Models) -> str:
    version = registry.publish(models.first)
    registry.promote(version)
    return version


@pytest.fixture
def second_version(registry: Registry, models: Models, first_version: str) -> str:
    return registry.publish(models.second)


@pytest.fixture
async def api(
    shop_settings: Settings, registry: Registry, clock: ManualClock, first_version: str
) -> AsyncIterator[Api]:
    async for opened in open_api(shop_settings, registry, clock):
        yield opened
