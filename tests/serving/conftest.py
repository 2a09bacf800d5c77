"""Fixtures of the API suites: a real model trained on planted data, a real Redis, the ASGI app.

Helpers (the planted shop, clients, problem assertions) live in `serving_support`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from serving_support import Api, open_api
from shop import NOW, ManualClock, Models, base_settings, write_planted_shop

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
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio runs on asyncio only


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def api_settings(redis_settings: Settings) -> Settings:
    """Test keys and limits over the run's Redis (own key prefix) and this test's folders."""
    base = base_settings()
    return redis_settings.model_copy(update={"serving": base.serving, "training": base.training})


@pytest.fixture
def registry(api_settings: Settings) -> Registry:
    return Registry(api_settings.registry.dir)


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
    api_settings: Settings, registry: Registry, clock: ManualClock, first_version: str
) -> AsyncIterator[Api]:
    async for opened in open_api(api_settings, registry, clock):
        yield opened
