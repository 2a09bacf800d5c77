"""Judging a queued push again at send time: the campaign's quiet hours in the user's zone now,
read once a minute per campaign, and expiry after `delivery.max_delay_hours`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis
from delivery_support import queue_message
from runner_support import campaign

from notifier.send_window import RULES_CACHE_SECONDS, Hold, SendWindow
from notifier.store import CampaignStore
from recsvc.config import Settings
from recsvc.keys import Keys

pytestmark = pytest.mark.anyio

BERLIN = {"timezone": "Europe/Berlin"}
LATE_EVENING = datetime(2024, 2, 1, 21, 30, tzinfo=UTC).timestamp()  # 22:30 in Berlin


async def save_rules(aredis: aioredis.Redis, keys: Keys, **rules: str) -> None:
    stored = campaign("spring", rules=rules)
    await aredis.hset(keys.campaigns(), stored.id, stored.model_dump_json())


async def test_the_campaigns_quiet_hours_in_the_users_zone_read_once_a_minute(
    aredis: aioredis.Redis, shop_settings: Settings
) -> None:
    keys = Keys(shop_settings.redis.prefix)
    message = await queue_message(
        aredis, shop_settings, "gA-u1", now=datetime.fromtimestamp(LATE_EVENING, UTC)
    )
    window = SendWindow(CampaignStore(aredis, shop_settings), shop_settings)
    await save_rules(aredis, keys, quiet_start="22:00", quiet_end="07:00")
    seven_in_berlin = datetime(2024, 2, 2, 6, 0, tzinfo=UTC).timestamp()
    assert await window.hold(message, BERLIN, LATE_EVENING) == Hold(until=seven_in_berlin)
    assert await window.hold(message, {}, LATE_EVENING) is None  # 21:30 in UTC, the default zone

    await save_rules(aredis, keys, quiet_start="00:00", quiet_end="00:00")  # quiet hours off
    almost = LATE_EVENING + RULES_CACHE_SECONDS - 1
    assert await window.hold(message, BERLIN, almost) == Hold(until=seven_in_berlin)  # not read again yet
    assert await window.hold(message, BERLIN, LATE_EVENING + RULES_CACHE_SECONDS) is None

    await aredis.hdel(keys.campaigns(), "spring")  # deleted: the global rules, 21:00-08:00
    eight_in_berlin = datetime(2024, 2, 2, 7, 0, tzinfo=UTC).timestamp()
    later = LATE_EVENING + 2 * RULES_CACHE_SECONDS
    assert await window.hold(message, BERLIN, later) == Hold(until=eight_in_berlin)


async def test_a_push_more_than_max_delay_hours_late_expires(
    aredis: aioredis.Redis, shop_settings: Settings
) -> None:
    due = datetime(2024, 2, 1, 12, 0, tzinfo=UTC)
    message = await queue_message(aredis, shop_settings, "gA-u1", now=due)
    window = SendWindow(CampaignStore(aredis, shop_settings), shop_settings)
    limit = shop_settings.notifier.delivery.max_delay_hours * 3600
    assert await window.hold(message, {}, due.timestamp() + limit) is None  # noon in UTC: not quiet
    assert await window.hold(message, {}, due.timestamp() + limit + 1) == Hold(until=None)
