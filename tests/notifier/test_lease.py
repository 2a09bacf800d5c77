"""The scheduler's lease: one owner at a time, renewed and released only by its owner, lapsing by TTL."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from notifier.lease import Lease
from recsvc.config import Settings
from recsvc.errors import InputError
from recsvc.keys import Keys

pytestmark = pytest.mark.anyio

TTL = 30.0


@pytest.fixture
def key(shop_settings: Settings) -> str:
    return Keys(shop_settings.redis.prefix).scheduler_lease()


async def test_one_owner_at_a_time(aredis: aioredis.Redis, key: str) -> None:
    first, second = Lease(aredis, key, "first", TTL), Lease(aredis, key, "second", TTL)

    assert await first.acquire()
    assert not await second.acquire()

    assert await second.holder() == await first.holder() == "first"
    assert 0 < await aredis.pttl(key) <= TTL * 1000


async def test_the_owner_acquiring_again_keeps_it(aredis: aioredis.Redis, key: str) -> None:
    lease = Lease(aredis, key, "first", TTL)
    assert await lease.acquire()
    await aredis.pexpire(key, 100)

    assert await lease.acquire()

    assert await aredis.pttl(key) > 100


async def test_renewing_extends_only_the_owners_lease(aredis: aioredis.Redis, key: str) -> None:
    first, second = Lease(aredis, key, "first", TTL), Lease(aredis, key, "second", TTL)
    await first.acquire()
    await aredis.pexpire(key, 100)  # most of the lease has passed

    assert not await second.renew()
    assert await aredis.pttl(key) <= 100

    assert await first.renew()
    assert await aredis.pttl(key) > 100


async def test_a_lapsed_lease_goes_to_the_next_owner_and_the_old_one_cannot_renew_it(
    aredis: aioredis.Redis, key: str
) -> None:
    first, second = Lease(aredis, key, "first", TTL), Lease(aredis, key, "second", TTL)
    await first.acquire()
    await aredis.delete(key)  # the TTL ran out

    assert not await first.renew()  # renewing does not resurrect a lapsed lease
    assert await second.acquire()
    assert not await first.renew()
    assert await second.holder() == "second"


async def test_only_the_owner_releases(aredis: aioredis.Redis, key: str) -> None:
    first, second = Lease(aredis, key, "first", TTL), Lease(aredis, key, "second", TTL)
    await first.acquire()

    assert not await second.release()
    assert await first.holder() == "first"

    assert await first.release()
    assert await first.holder() is None
    assert await second.acquire()


async def test_a_lease_needs_a_positive_ttl(aredis: aioredis.Redis, key: str) -> None:
    with pytest.raises(InputError):
        Lease(aredis, key, "first", 0)
