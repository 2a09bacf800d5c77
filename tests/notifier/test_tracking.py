"""Tracking: opens and clicks count once and train the model; purchases convert the push that led to them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
import redis.asyncio as aioredis
from scheduler_support import RecordingRunner, tracking_settings
from shop import NOW, ManualClock

from notifier import stats
from notifier.campaign import Campaign
from notifier.event_feed import EventFeed
from notifier.messages import QUEUED, SENT, Message, message_id, stage_messages
from notifier.runner import CampaignRunner
from notifier.store import CampaignStore
from notifier.tracking import Tracker
from notifier.triggers import Triggers
from recsvc.config import Settings
from recsvc.current_model import ModelHolder
from recsvc.engine import RecentEvent
from recsvc.errors import InputError, NotFoundError
from recsvc.keys import Keys
from recsvc.state import Event, Store, unix_micros

pytestmark = pytest.mark.anyio

HOUR = timedelta(hours=1)
TTL = 30 * 86_400


class Pushes:
    """Messages as the runner leaves them, the tracker, and the feed that finds conversions."""

    def __init__(self, aredis: aioredis.Redis, settings: Settings, store: Store) -> None:
        self.redis = aredis
        self.keys = Keys(settings.redis.prefix)
        self.store = store
        self.tracker = Tracker(aredis, settings, clock=lambda: NOW)
        campaigns = CampaignStore(aredis, settings)
        triggers = Triggers(aredis, settings, RecordingRunner(), campaigns=campaigns)
        self.feed = EventFeed(aredis, settings, triggers, self.tracker, campaigns=campaigns)

    async def push(
        self,
        user: str,
        items: list[str],
        *,
        run: str = "r1",
        due: datetime = NOW,
        control: bool = False,
        delivered: bool = True,
    ) -> str:
        """A stored message and its pushed-items record, as a campaign run writes them, and (unless
        a control message or not `delivered`) marked sent, as a worker does once a provider took it."""
        mid = message_id("spring", run, user)
        message = Message(
            mid, "spring", run, user, "Hi", "New for you", None, tuple(items), due.timestamp(), control
        )
        record = json.dumps({"m": mid, "t": due.timestamp()})
        async with self.redis.pipeline(transaction=True) as pipe:
            stage_messages(pipe, self.keys, [message], now=due.timestamp(), ttl_seconds=TTL)
            pipe.hset(self.keys.user_pushed_items(user), mapping=dict.fromkeys(items, record))
            if delivered and not control:
                pipe.hset(self.keys.message(mid), "status", SENT)
            await pipe.execute()
        return mid

    async def message(self, mid: str) -> dict[str, str]:
        stored: dict[str, str] = await self.redis.hgetall(self.keys.message(mid))  # type: ignore[assignment]
        return stored

    async def counts(self, run: str | None = "r1") -> dict[str, int]:
        raw = await self.redis.hgetall(self.keys.campaign_stats("spring", run))
        return {name: int(value) for name, value in raw.items()}

    async def buy(self, user: str, item: str, at: datetime) -> None:
        await self.store.record_events([Event(user, item, "purchase", at)], [None])
        await self.feed.drain()


@pytest.fixture
async def pushes(aredis: aioredis.Redis, shop_settings: Settings, store: Store) -> Pushes:
    pushes = Pushes(aredis, shop_settings, store)
    await pushes.feed.ensure_group()
    return pushes


# --- opens and clicks -------------------------------------------------------------------------------


async def test_an_open_counts_once_and_becomes_one_training_event(pushes: Pushes, store: Store) -> None:
    mid = await pushes.push("u1", ["a3", "a5"])
    opened_at = NOW + HOUR

    first = await pushes.tracker.record_interaction(mid, "opened", None, opened_at)
    again = await pushes.tracker.record_interaction(mid, "opened", None, opened_at + HOUR)

    assert (first.first, first.opened, first.clicked) == (True, True, False)
    assert (again.first, again.event) == (False, None)
    assert first.event == Event("u1", "a3", "push_open", opened_at)
    assert await pushes.counts() == await pushes.counts(None) == {stats.OPENED: 1}
    assert (await pushes.message(mid))[stats.OPENED] == repr(opened_at.timestamp())
    assert (await store.user_state("u1")).recent == [RecentEvent("a3", "push_open", unix_micros(opened_at))]
    stream = await pushes.redis.xrange(pushes.keys.events())
    assert [fields["type"] for _, fields in stream] == ["push_open"]


async def test_a_click_implies_an_open_and_trains_on_the_clicked_item(pushes: Pushes, store: Store) -> None:
    mid = await pushes.push("u1", ["a3", "a5"])

    click = await pushes.tracker.record_interaction(mid, "clicked", "a5", NOW + HOUR)
    late_open = await pushes.tracker.record_interaction(mid, "opened", None, NOW + 2 * HOUR)

    assert (click.first, click.opened, click.clicked) == (True, True, True)
    assert click.event == Event("u1", "a5", "push_click", NOW + HOUR)
    assert late_open.first is False
    assert await pushes.counts() == {stats.OPENED: 1, stats.CLICKED: 1}
    assert [event.type for event in (await store.user_state("u1")).recent] == ["push_click"]


async def test_a_click_without_an_item_is_on_the_first_item(pushes: Pushes) -> None:
    mid = await pushes.push("u1", ["a3", "a5"])

    click = await pushes.tracker.record_interaction(mid, "clicked", None, NOW)

    assert click.event is not None and click.event.item_id == "a3"


async def test_a_click_on_an_item_the_push_did_not_carry_is_refused(pushes: Pushes) -> None:
    mid = await pushes.push("u1", ["a3"])

    with pytest.raises(InputError) as refused:
        await pushes.tracker.record_interaction(mid, "clicked", "b9", NOW)

    assert refused.value.fields["field"] == "item_id"
    assert await pushes.counts() == {}


async def test_unknown_and_control_messages_cannot_be_opened(pushes: Pushes) -> None:
    control = await pushes.push("u2", ["a3"], control=True)

    with pytest.raises(NotFoundError):
        await pushes.tracker.record_interaction("0" * 24, "opened", None, NOW)
    with pytest.raises(NotFoundError):
        await pushes.tracker.record_interaction(control, "clicked", None, NOW)

    assert stats.OPENED not in await pushes.message(control)
    assert await pushes.counts() == {}


async def test_a_push_that_never_reached_the_user_is_neither_opened_nor_converted(pushes: Pushes) -> None:
    """Still queued (quiet hours), suppressed at send time or failed: the user never saw it."""
    waiting = await pushes.push("u1", ["a3"], delivered=False)

    with pytest.raises(NotFoundError, match="was sent"):
        await pushes.tracker.record_interaction(waiting, "opened", None, NOW)
    await pushes.buy("u1", "a3", NOW + HOUR)

    assert not {stats.OPENED, stats.CONVERTED} & set(await pushes.message(waiting))
    assert await pushes.counts() == {}


async def test_an_unknown_interaction_is_refused(pushes: Pushes) -> None:
    mid = await pushes.push("u1", ["a3"])
    with pytest.raises(InputError):
        await pushes.tracker.record_interaction(mid, "dismissed", None, NOW)


# --- conversions --------------------------------------------------------------------------------------


async def test_a_purchase_of_a_pushed_item_within_the_window_converts_once(pushes: Pushes) -> None:
    mid = await pushes.push("u1", ["a3", "a5"])

    await pushes.buy("u1", "a5", NOW + 2 * HOUR)
    await pushes.buy("u1", "a3", NOW + 3 * HOUR)  # the same push again: still one conversion

    assert (await pushes.message(mid))[stats.CONVERTED] == repr((NOW + 2 * HOUR).timestamp())
    assert await pushes.counts() == await pushes.counts(None) == {stats.CONVERTED: 1}


@pytest.mark.parametrize("bought", [NOW + 73 * HOUR, NOW - HOUR])
async def test_a_purchase_outside_the_window_after_the_push_does_not_convert(
    pushes: Pushes, bought: datetime
) -> None:
    mid = await pushes.push("u1", ["a3"])

    await pushes.buy("u1", "a3", bought)

    assert stats.CONVERTED not in await pushes.message(mid)
    assert await pushes.counts() == {}


async def test_the_window_is_configured(
    aredis: aioredis.Redis, shop_settings: Settings, store: Store
) -> None:
    pushes = Pushes(aredis, tracking_settings(shop_settings, conversion_window_hours=1.0), store)
    await pushes.feed.ensure_group()
    mid = await pushes.push("u1", ["a3"])

    await pushes.buy("u1", "a3", NOW + 2 * HOUR)

    assert stats.CONVERTED not in await pushes.message(mid)


async def test_other_items_and_other_event_types_do_not_convert(pushes: Pushes, store: Store) -> None:
    mid = await pushes.push("u1", ["a3"])

    await pushes.buy("u1", "a4", NOW + HOUR)
    await pushes.buy("u2", "a3", NOW + HOUR)
    await store.record_events([Event("u1", "a3", "add_to_cart", NOW + HOUR)], [None])
    await pushes.feed.drain()

    assert stats.CONVERTED not in await pushes.message(mid)


async def test_a_control_group_conversion_counts_for_the_control_group(pushes: Pushes) -> None:
    mid = await pushes.push("u1", ["a3"], control=True)

    await pushes.buy("u1", "a3", NOW + HOUR)

    assert stats.CONVERTED in await pushes.message(mid)
    assert await pushes.counts() == {stats.control(stats.CONVERTED): 1}
    assert stats.summarize(await pushes.redis.hgetall(pushes.keys.campaign_stats("spring")))["control"] == {
        stats.TARGETED: 0,
        stats.CONVERTED: 1,
    }


async def test_an_expired_message_is_not_recreated_by_a_conversion(pushes: Pushes) -> None:
    mid = await pushes.push("u1", ["a3"])
    await pushes.redis.delete(pushes.keys.message(mid))  # its TTL ran out

    await pushes.buy("u1", "a3", NOW + HOUR)

    assert await pushes.message(mid) == {}
    assert await pushes.counts() == {}


@pytest.mark.parametrize(
    ("control_percent", "counter"), [(0, stats.CONVERTED), (99.9, stats.control(stats.CONVERTED))]
)
async def test_a_purchase_converts_the_push_a_real_campaign_run_sent(
    aredis: aioredis.Redis,
    shop_settings: Settings,
    store: Store,
    models: ModelHolder,
    clock: ManualClock,
    control_percent: float,
    counter: str,
) -> None:
    """In the treatment group and, against the items it would have got, in the control group."""
    pushes = Pushes(aredis, shop_settings, store)
    await pushes.feed.ensure_group()
    device = {"phone": {"token": "tok", "platform": "android"}}
    await store.put_profile("gA-u1", {"push_consent": True, "devices": device, "timezone": "UTC"})
    campaign = Campaign.model_validate(
        {
            "id": "spring",
            "name": "Spring",
            "segment": {"control_percent": control_percent},
            "content": {"title": "For you", "body": "{{ item.title }}", "items": 3},
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    await CampaignRunner(aredis, shop_settings, models, clock=clock).run(campaign, "r1")
    mid = message_id("spring", "r1", "gA-u1")
    if (await pushes.message(mid))["status"] == QUEUED:
        await aredis.hset(pushes.keys.message(mid), "status", SENT)  # as the worker does on delivery
    pushed = json.loads((await pushes.message(mid))["items"])

    await pushes.buy("gA-u1", pushed[-1], NOW + HOUR)

    assert stats.CONVERTED in await pushes.message(mid)
    assert (await pushes.counts())[counter] == 1
