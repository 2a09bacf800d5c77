"""Fixtures of the notifier suites: the planted shop's model in a registry, a real Redis, a clock.

Async tests mark themselves with `pytestmark = pytest.mark.anyio`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from shop import NOW, ManualClock, base_settings, write_planted_shop

from recsvc.artifact import ModelArtifact
from recsvc.config import Settings
from recsvc.current_model import ModelHolder
from recsvc.redis_conn import connect_async
from recsvc.registry import Registry
from recsvc.state import Store
from training import pipeline


@pytest.fixture(scope="session")
def planted_artifact(tmp_path_factory: pytest.TempPathFactory) -> ModelArtifact:
    events, items = write_planted_shop(tmp_path_factory.mktemp("planted-shop"))
    return pipeline.train(base_settings(), events=events, items=items).artifact


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio runs on asyncio only


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def notifier_settings(redis_settings: Settings) -> Settings:
    """The test model settings over the run's Redis (own key prefix) and this test's folders."""
    base = base_settings()
    return redis_settings.model_copy(update={"serving": base.serving, "training": base.training})


@pytest.fixture
def registry(notifier_settings: Settings, planted_artifact: ModelArtifact) -> Registry:
    """A registry whose current version is the planted shop's model."""
    registry = Registry(notifier_settings.registry.dir)
    registry.promote(registry.publish(planted_artifact))
    return registry


@pytest.fixture
async def models(registry: Registry, notifier_settings: Settings) -> ModelHolder:
    holder = ModelHolder(registry, notifier_settings)
    await holder.refresh()
    return holder


@pytest.fixture
async def aredis(notifier_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = connect_async(notifier_settings)
    yield client
    await client.aclose()


@pytest.fixture
def store(aredis: aioredis.Redis, notifier_settings: Settings, clock: ManualClock) -> Store:
    return Store(aredis, notifier_settings, clock=clock)
