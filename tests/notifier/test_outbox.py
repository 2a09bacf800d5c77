"""The outbox primitives on a real Redis: moving due messages, the consumer group, reclaiming,
backoff arithmetic, and the shared rate limit's token bucket (driven by a manual clock)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis.asyncio as aioredis
from delivery_support import queue_message, with_delivery
from shop import NOW, ManualClock

from notifier import outbox
from notifier.ratelimit import RateLimiter
from recsvc.config import Settings
from recsvc.errors import RecsvcError
from recsvc.keys import DELIVERY_GROUP, Keys

pytestmark = pytest.mark.anyio


@pytest.fixture
def keys(shop_settings: Settings) -> Keys:
    return Keys(shop_settings.redis.prefix)


async def outbox_ids(redis: aioredis.Redis, keys: Keys) -> list[str]:
    return [fields["message_id"] for _, fields in await redis.xrange(keys.outbox())]


async def test_move_due_moves_only_due_messages_and_each_once(
    aredis: aioredis.Redis, shop_settings: Settings, keys: Keys
) -> None:
    soon = await queue_message(aredis, shop_settings, "u1", now=NOW, due=NOW + timedelta(minutes=1))
    later = await queue_message(aredis, shop_settings, "u2", now=NOW, due=NOW + timedelta(hours=1))

    assert await outbox.move_due(aredis, keys, NOW.timestamp()) == 0
    moved = await outbox.move_due(aredis, keys, (NOW + timedelta(minutes=1)).timestamp())
    again = await outbox.move_due(aredis, keys, (NOW + timedelta(minutes=1)).timestamp())

    assert (moved, again) == (1, 0)
    assert await outbox_ids(aredis, keys) == [soon.message_id]
    assert await aredis.zrange(keys.outbox_delayed(), 0, -1) == [later.message_id]


async def test_move_due_respects_the_limit(
    aredis: aioredis.Redis, shop_settings: Settings, keys: Keys
) -> None:
    for n in range(5):
        await queue_message(aredis, shop_settings, f"u{n}", now=NOW, due=NOW + timedelta(seconds=n + 1))

    assert await outbox.move_due(aredis, keys, NOW.timestamp() + 60, limit=3) == 3
    assert await aredis.xlen(keys.outbox()) == 3
    assert await aredis.zcard(keys.outbox_delayed()) == 2
    assert await outbox.move_due(aredis, keys, NOW.timestamp() + 60, limit=3) == 2


async def test_group_delivers_entries_added_before_it_existed_to_one_consumer(
    aredis: aioredis.Redis, shop_settings: Settings, keys: Keys
) -> None:
    early = await queue_message(aredis, shop_settings, "u1", now=NOW)
    await outbox.ensure_group(aredis, keys)
    await outbox.ensure_group(aredis, keys)  # a second worker starting: no error

    first = await outbox.read_new(aredis, keys, "w1", count=10, block_seconds=None)
    second = await outbox.read_new(aredis, keys, "w2", count=10, block_seconds=None)

    assert [entry.message_id for entry in first] == [early.message_id]
    assert second == []


async def test_reclaim_takes_over_only_entries_idle_long_enough(
    aredis: aioredis.Redis, shop_settings: Settings, keys: Keys
) -> None:
    await outbox.ensure_group(aredis, keys)
    stale = await queue_message(aredis, shop_settings, "u1", now=NOW)
    fresh = await queue_message(aredis, shop_settings, "u2", now=NOW)
    taken = await outbox.read_new(aredis, keys, "dead", count=10, block_seconds=None)
    stale_entry = next(entry for entry in taken if entry.message_id == stale.message_id)
    # The dead worker took both; one of them long ago (XCLAIM ... IDLE sets the idle time).
    await aredis.xclaim(keys.outbox(), DELIVERY_GROUP, "dead", 0, [stale_entry.entry_id], idle=600_000)

    reclaimed = await outbox.reclaim(aredis, keys, "alive", min_idle_seconds=300, count=10)

    assert reclaimed == [stale_entry]
    pending = await aredis.xpending_range(keys.outbox(), DELIVERY_GROUP, "-", "+", 10)
    owners = {item["message_id"]: item["consumer"] for item in pending}
    fresh_entry = next(entry for entry in taken if entry.message_id == fresh.message_id)
    assert owners == {stale_entry.entry_id: "alive", fresh_entry.entry_id: "dead"}
    # Reclaiming resets the idle time: a second worker does not take it from "alive" again.
    assert await outbox.reclaim(aredis, keys, "other", min_idle_seconds=300, count=10) == []


async def test_finish_acknowledges_and_deletes_the_entry(
    aredis: aioredis.Redis, shop_settings: Settings, keys: Keys
) -> None:
    await outbox.ensure_group(aredis, keys)
    await queue_message(aredis, shop_settings, "u1", now=NOW)
    (entry,) = await outbox.read_new(aredis, keys, "w1", count=10, block_seconds=None)

    async with aredis.pipeline(transaction=True) as pipe:
        outbox.stage_finish(pipe, keys, entry)
        await pipe.execute()

    assert await aredis.xlen(keys.outbox()) == 0
    assert (await aredis.xpending(keys.outbox(), DELIVERY_GROUP))["pending"] == 0


def test_backoff_doubles_up_to_the_cap_unless_the_provider_asks_for_longer(
    shop_settings: Settings,
) -> None:
    delivery = with_delivery(
        shop_settings, backoff_base_seconds=30.0, backoff_max_seconds=200.0
    ).notifier.delivery

    assert [outbox.backoff_seconds(delivery, attempt) for attempt in (1, 2, 3, 4, 5, 80)] == [
        30.0,
        60.0,
        120.0,
        200.0,
        200.0,
        200.0,
    ]
    assert outbox.backoff_seconds(delivery, 1, retry_after=90.0) == 90.0
    assert outbox.backoff_seconds(delivery, 3, retry_after=90.0) == 120.0
    assert outbox.backoff_seconds(delivery, 4, retry_after=900.0) == 900.0


async def test_dead_letter_records_the_message_and_its_last_error(
    aredis: aioredis.Redis, shop_settings: Settings, keys: Keys
) -> None:
    message = await queue_message(aredis, shop_settings, "u1", now=NOW)

    async with aredis.pipeline(transaction=True) as pipe:
        outbox.stage_dead_letter(pipe, keys, message, attempts=5, error="d0: 503")
        await pipe.execute()

    ((_, letter),) = await aredis.xrange(keys.dead_letters())
    assert letter == {
        "message_id": message.message_id,
        "campaign": "spring",
        "user": "u1",
        "error": "d0: 503",
        "attempts": "5",
    }
    assert await aredis.hmget(keys.message(message.message_id), ["status", "attempts"]) == ["dead", "5"]


# --- the shared rate limit ----------------------------------------------------------------------


async def test_token_bucket_arithmetic(aredis: aioredis.Redis, keys: Keys) -> None:
    clock = ManualClock(NOW)
    limiter = RateLimiter(aredis, keys.provider_rate("fcm"), 10.0, clock=clock)

    # Full at first: one second's worth (10) at once, then the 11th must wait a tenth of a second.
    assert [await limiter.acquire() for _ in range(10)] == [0.0] * 10
    assert await limiter.acquire() == pytest.approx(0.1)
    assert await limiter.acquire(3) == pytest.approx(0.3)  # a refusal takes nothing

    clock.now += timedelta(seconds=0.25)  # 2.5 tokens back
    assert await limiter.acquire(2) == 0.0
    assert await limiter.acquire(1) == pytest.approx(0.05)

    clock.now += timedelta(hours=1)  # never more than the capacity
    assert await limiter.acquire(10) == 0.0
    assert await limiter.acquire(1) == pytest.approx(0.1)


async def test_token_bucket_is_shared_by_every_worker(aredis: aioredis.Redis, keys: Keys) -> None:
    clock = ManualClock(NOW)
    first = RateLimiter(aredis, keys.provider_rate("webhook"), 2.0, clock=clock)
    second = RateLimiter(aredis, keys.provider_rate("webhook"), 2.0, clock=clock)
    behind = RateLimiter(
        aredis, keys.provider_rate("webhook"), 2.0, clock=ManualClock(NOW - timedelta(seconds=5))
    )

    assert await first.acquire() == 0.0
    assert await second.acquire() == 0.0
    assert await first.acquire() == pytest.approx(0.5)
    # A worker whose clock lags adds no tokens and does not move the bucket back in time.
    assert await behind.acquire() == pytest.approx(0.5)
    clock.now += timedelta(seconds=0.5)
    assert await second.acquire() == 0.0
    assert 0 < await aredis.pttl(keys.provider_rate("webhook")) <= 10_000  # a short TTL


async def test_token_bucket_refuses_more_than_it_can_ever_hold(aredis: aioredis.Redis, keys: Keys) -> None:
    limiter = RateLimiter(aredis, keys.provider_rate("log"), 5.0, clock=ManualClock(NOW))

    with pytest.raises(RecsvcError):
        await limiter.acquire(6)
