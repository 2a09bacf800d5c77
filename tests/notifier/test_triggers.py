"""Triggered pushes: events from the stream arm, re-arm and cancel them; the poll fires them once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import redis.asyncio as aioredis
from scheduler_support import RecordingRunner, RunCall, cart_spec, create
from shop import NOW, ManualClock

from notifier.event_feed import FEED_CONSUMER, EventFeed
from notifier.messages import message_id
from notifier.runner import CampaignRunner
from notifier.store import CampaignStore
from notifier.tracking import Tracker
from notifier.triggers import Triggers, trigger_run_id
from recsvc.config import Settings
from recsvc.current_model import ModelHolder
from recsvc.engine import RecentEvent
from recsvc.keys import NOTIFIER_EVENTS_GROUP, Keys
from recsvc.state import Event, Store, unix_micros

pytestmark = pytest.mark.anyio

HOUR = timedelta(hours=1)
REACHABLE = {"push_consent": True, "devices": {"phone": {"token": "tok", "platform": "android"}}}


class Shop:
    """The feed and the triggers over one Redis, with helpers to post events and read pending pushes."""

    def __init__(
        self,
        aredis: aioredis.Redis,
        settings: Settings,
        store: Store,
        runner: RecordingRunner | CampaignRunner,
    ) -> None:
        self.redis = aredis
        self.keys = Keys(settings.redis.prefix)
        self.store = store
        self.campaigns = CampaignStore(aredis, settings)
        self.triggers = Triggers(aredis, settings, runner, campaigns=self.campaigns)
        self.feed = EventFeed(
            aredis, settings, self.triggers, Tracker(aredis, settings), campaigns=self.campaigns
        )

    async def post(self, user: str, item: str, kind: str, at: datetime) -> None:
        """An event accepted by the API, then read by the notifier."""
        await self.store.record_events([Event(user, item, kind, at)], [None])
        await self.feed.drain()

    async def pending(self, campaign_id: str) -> dict[str, tuple[float, dict[str, object]]]:
        """user -> (due time, arming event) of a campaign's pending pushes."""
        due = dict(await self.redis.zrange(self.keys.campaign_triggers(campaign_id), 0, -1, withscores=True))
        armed = await self.redis.hgetall(self.keys.campaign_trigger_events(campaign_id))
        assert set(due) == set(armed)
        return {user: (due[user], json.loads(armed[user])) for user in due}


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
async def shop(
    aredis: aioredis.Redis, shop_settings: Settings, store: Store, runner: RecordingRunner
) -> Shop:
    shop = Shop(aredis, shop_settings, store, runner)
    await shop.feed.ensure_group()
    return shop


def fired(user: str, item: str, at: datetime) -> RunCall:
    return RunCall(
        "cart", trigger_run_id(at), [user], {user: RecentEvent(item, "add_to_cart", unix_micros(at))}
    )


async def test_a_cart_arms_a_push_that_fires_once_after_the_delay(
    shop: Shop, runner: RecordingRunner
) -> None:
    await create(shop.campaigns, "cart", cart_spec())

    await shop.post("u1", "a3", "add_to_cart", NOW)

    assert await shop.pending("cart") == {
        "u1": ((NOW + HOUR).timestamp(), {"item": "a3", "ts": unix_micros(NOW)})
    }
    assert await shop.triggers.fire_due(NOW + HOUR - timedelta(seconds=1)) == {"cart": 0}
    assert runner.calls == []

    assert await shop.triggers.fire_due(NOW + HOUR) == {"cart": 1}
    assert runner.calls == [
        RunCall("cart", "t20240201", ["u1"], {"u1": RecentEvent("a3", "add_to_cart", unix_micros(NOW))})
    ]
    assert await shop.pending("cart") == {}
    await shop.triggers.fire_due(NOW + 2 * HOUR)
    assert len(runner.calls) == 1


async def test_events_from_before_the_notifier_started_arm_nothing(
    aredis: aioredis.Redis, shop_settings: Settings, store: Store, runner: RecordingRunner
) -> None:
    late = Shop(aredis, shop_settings, store, runner)
    await create(late.campaigns, "cart", cart_spec())
    await store.record_events([Event("u1", "a3", "add_to_cart", NOW)], [None])

    await late.feed.drain()  # the notifier's first start: the group begins at the stream's end
    assert await late.pending("cart") == {}

    await late.post("u2", "a4", "add_to_cart", NOW)
    assert set(await late.pending("cart")) == {"u2"}


async def test_a_purchase_before_the_push_is_due_cancels_it(shop: Shop, runner: RecordingRunner) -> None:
    await create(shop.campaigns, "cart", cart_spec())
    await shop.post("u1", "a3", "add_to_cart", NOW)

    await shop.post("u1", "b7", "purchase", NOW + timedelta(minutes=10))  # any purchase cancels

    assert await shop.pending("cart") == {}
    await shop.triggers.fire_due(NOW + 2 * HOUR)
    assert runner.calls == []


async def test_with_same_item_only_buying_the_carted_item_cancels(
    shop: Shop, runner: RecordingRunner
) -> None:
    await create(shop.campaigns, "cart", cart_spec(same_item=True))
    await shop.post("u1", "a3", "add_to_cart", NOW)
    await shop.post("u2", "a4", "add_to_cart", NOW)

    await shop.post("u1", "b7", "purchase", NOW + timedelta(minutes=10))
    await shop.post("u2", "a4", "purchase", NOW + timedelta(minutes=10))

    assert set(await shop.pending("cart")) == {"u1"}
    await shop.triggers.fire_due(NOW + HOUR)
    assert runner.calls == [fired("u1", "a3", NOW)]


async def test_a_newer_cart_re_arms_the_push_from_its_own_time(shop: Shop, runner: RecordingRunner) -> None:
    await create(shop.campaigns, "cart", cart_spec())
    await shop.post("u1", "a3", "add_to_cart", NOW)

    later = NOW + timedelta(minutes=30)
    await shop.post("u1", "a5", "add_to_cart", later)

    assert await shop.pending("cart") == {
        "u1": ((later + HOUR).timestamp(), {"item": "a5", "ts": unix_micros(later)})
    }
    await shop.triggers.fire_due(NOW + HOUR)
    assert runner.calls == []
    await shop.triggers.fire_due(later + HOUR)
    assert runner.calls == [fired("u1", "a5", later)]


async def test_a_late_older_event_neither_re_arms_nor_cancels_a_newer_push(shop: Shop) -> None:
    await create(shop.campaigns, "cart", cart_spec())
    later = NOW + timedelta(minutes=30)
    await shop.post("u1", "a5", "add_to_cart", later)

    await shop.post("u1", "a3", "add_to_cart", NOW)  # stamped earlier, arrived later
    await shop.post("u1", "a9", "purchase", NOW + timedelta(minutes=10))  # bought before this cart

    assert await shop.pending("cart") == {
        "u1": ((later + HOUR).timestamp(), {"item": "a5", "ts": unix_micros(later)})
    }


async def test_a_paused_campaign_neither_arms_nor_fires_and_keeps_its_pending_pushes(
    shop: Shop, runner: RecordingRunner
) -> None:
    await create(shop.campaigns, "cart", cart_spec())
    await shop.post("u1", "a3", "add_to_cart", NOW)
    await shop.campaigns.set_status("cart", "paused")

    await shop.post("u2", "a4", "add_to_cart", NOW)
    await shop.post("u1", "a4", "purchase", NOW + timedelta(minutes=5))  # nor cancels
    assert await shop.triggers.fire_due(NOW + HOUR) == {}

    assert runner.calls == []
    assert set(await shop.pending("cart")) == {"u1"}
    await shop.campaigns.set_status("cart", "active")
    await shop.triggers.fire_due(NOW + HOUR)
    assert runner.calls == [fired("u1", "a3", NOW)]


async def test_firing_keeps_a_push_re_armed_while_it_ran(shop: Shop, runner: RecordingRunner) -> None:
    await create(shop.campaigns, "cart", cart_spec())
    await shop.post("u1", "a3", "add_to_cart", NOW)
    await shop.post("u2", "a4", "add_to_cart", NOW)
    again = NOW + timedelta(minutes=61)

    async def cart_again(call: RunCall) -> None:
        await shop.post("u1", "a8", "add_to_cart", again)  # arrives while the run executes

    runner.during_run = cart_again
    await shop.triggers.fire_due(NOW + HOUR)

    assert await shop.pending("cart") == {
        "u1": ((again + HOUR).timestamp(), {"item": "a8", "ts": unix_micros(again)})
    }


async def test_entries_read_but_not_acknowledged_before_a_crash_are_processed(
    shop: Shop, aredis: aioredis.Redis
) -> None:
    await create(shop.campaigns, "cart", cart_spec())
    await shop.store.record_events([Event("u1", "a3", "add_to_cart", NOW)], [None])
    stream = shop.keys.events()
    await aredis.xreadgroup(NOTIFIER_EVENTS_GROUP, FEED_CONSUMER, {stream: ">"})  # then the process died

    result = await shop.feed.drain()

    assert (result.entries, result.trigger_changes) == (1, 1)
    assert set(await shop.pending("cart")) == {"u1"}
    assert (await aredis.xpending(stream, NOTIFIER_EVENTS_GROUP))["pending"] == 0


async def test_replaying_events_changes_nothing(shop: Shop) -> None:
    await create(shop.campaigns, "cart", cart_spec(same_item=True))
    events = [
        ("u1", RecentEvent("a3", "add_to_cart", unix_micros(NOW))),
        ("u2", RecentEvent("a4", "add_to_cart", unix_micros(NOW))),
        ("u2", RecentEvent("a4", "purchase", unix_micros(NOW + HOUR / 2))),
    ]
    campaigns = await shop.campaigns.list()
    assert await shop.triggers.observe(campaigns, events) == 3
    before = await shop.pending("cart")

    await shop.triggers.observe(campaigns, events)

    assert (
        await shop.pending("cart")
        == before
        == {"u1": ((NOW + HOUR).timestamp(), {"item": "a3", "ts": unix_micros(NOW)})}
    )


async def test_malformed_stream_entries_are_skipped_and_acknowledged(
    shop: Shop, aredis: aioredis.Redis
) -> None:
    await aredis.xadd(shop.keys.events(), {"user_id": "u1", "type": "add_to_cart"})

    result = await shop.feed.drain()

    assert (result.entries, result.malformed) == (1, 1)
    assert (await aredis.xpending(shop.keys.events(), NOTIFIER_EVENTS_GROUP))["pending"] == 0


async def test_abandoned_cart_pushes_lead_with_the_carted_item_in_the_days_run(
    aredis: aioredis.Redis, shop_settings: Settings, store: Store, models: ModelHolder, clock: ManualClock
) -> None:
    runner = CampaignRunner(aredis, shop_settings, models, clock=clock)
    shop = Shop(aredis, shop_settings, store, runner)
    await shop.feed.ensure_group()
    for user in ("gA-u1", "gB-u2"):
        await store.put_profile(user, {**REACHABLE, "timezone": "UTC"})
    await create(shop.campaigns, "cart", cart_spec())

    await shop.post("gA-u1", "b7", "add_to_cart", NOW)
    clock.now = NOW + HOUR
    assert await shop.triggers.fire_due(clock.now) == {"cart": 1}
    await shop.post("gB-u2", "a2", "add_to_cart", NOW + 2 * HOUR)  # later the same day
    clock.now = NOW + 3 * HOUR
    assert await shop.triggers.fire_due(clock.now) == {"cart": 1}

    for user, item in (("gA-u1", "b7"), ("gB-u2", "a2")):
        message = await aredis.hgetall(shop.keys.message(message_id("cart", "t20240201", user)))
        assert message["user"] == user
        assert json.loads(message["items"])[0] == item
    assert await shop.pending("cart") == {}
