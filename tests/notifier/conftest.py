"""Fixtures of the notifier suites: the planted shop's model in a registry, a real Redis, a clock.

Async tests mark themselves with `pytestmark = pytest.mark.anyio`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from shop import ManualClock, base_settings, write_planted_shop

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
def registry(shop_settings: Settings, planted_artifact: ModelArtifact) -> Registry:
    """A registry whose current version is the planted shop's model."""
    registry = Registry(shop_settings.registry.dir)
    registry.promote(registry.publish(planted_artifact))
    return registry


@pytest.fixture
async def models(registry: Registry, shop_settings: Settings) -> ModelHolder:
    holder = ModelHolder(registry, shop_settings)
    await holder.refresh()
    return holder


@pytest.fixture
async def aredis(shop_settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = connect_async(shop_settings)
    yield client
    await client.aclose()


@pytest.fixture
def store(aredis: aioredis.Redis, shop_settings: Settings, clock: ManualClock) -> Store:
    return Store(aredis, shop_settings, clock=clock)
