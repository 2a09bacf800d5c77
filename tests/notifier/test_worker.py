"""The delivery worker end to end: real Redis, the webhook provider against a local receiver that
verifies signatures, and a manual clock moved by hand between burst runs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from delivery_support import (
    WEBHOOK_SECRET,
    HttpServer,
    Reply,
    WebhookReceiver,
    devices,
    queue_message,
    running,
    with_delivery,
    with_provider,
)
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from runner_support import campaign, message_of, run_stats
from shop import NOW, ManualClock

from notifier import dead_letters, rules, stats
from notifier.messages import Message
from notifier.providers import build_provider
from notifier.store import CampaignStore
from notifier.triggers import trigger_run_id
from notifier.worker import (
    CAMPAIGN_DELETED,
    CANCELLED,
    DELIVERED,
    REDIS_RETRY_SECONDS,
    DeliveryWorker,
    run_worker,
)
from recsvc.config import Settings
from recsvc.keys import DELIVERY_GROUP, Keys
from recsvc.redis_conn import RedisUnavailable
from recsvc.state import Event, Store, profile_changes, utc_now

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Delivery:
    """What a delivery test works with: Redis, settings for the webhook provider (3 attempts, backoff
    from 30 s up to 600 s), the receiver behind it and the manual clock, plus the reads it checks."""

    aredis: aioredis.Redis
    settings: Settings
    store: Store
    keys: Keys
    receiver: WebhookReceiver
    clock: ManualClock
    http: httpx.AsyncClient

    def worker(
        self, consumer: str = "w1", settings: Settings | None = None, **options: Any
    ) -> DeliveryWorker:
        chosen = settings or self.settings
        provider = build_provider(chosen, self.http, clock=self.clock)
        return DeliveryWorker(self.aredis, chosen, provider, consumer=consumer, clock=self.clock, **options)

    async def user(self, user_id: str, *tokens: str) -> None:
        await self.store.put_profile(user_id, {"push_consent": True, "devices": devices(*tokens)})

    async def queue(self, user_id: str, *, due: datetime | None = None) -> Message:
        """Queue campaign "spring"'s message of run "run-1" to `user_id`, made at NOW."""
        return await queue_message(self.aredis, self.settings, user_id, now=NOW, due=due)

    async def counters(self, run: str | None = "run-1") -> dict[str, int]:
        return await run_stats(self.aredis, self.keys, "spring", run)

    async def message_state(self, message: Message) -> dict[str, str]:
        return await message_of(self.aredis, self.keys, message.message_id)

    async def assert_outbox_empty(self) -> None:
        assert await self.aredis.xlen(self.keys.outbox()) == 0
        assert (await self.aredis.xpending(self.keys.outbox(), DELIVERY_GROUP))["pending"] == 0


async def store_campaign(aredis: aioredis.Redis, keys: Keys, campaign_id: str = "spring") -> None:
    """Store the campaign whose messages the tests queue, with the global rules: a worker sends only
    the pushes of a campaign that exists."""
    stored = campaign(campaign_id, rules={})
    await aredis.hset(keys.campaigns(), stored.id, stored.model_dump_json())


@pytest.fixture
async def delivery(
    aredis: aioredis.Redis, shop_settings: Settings, store: Store, clock: ManualClock
) -> AsyncIterator[Delivery]:
    receiver = WebhookReceiver()
    configured = with_provider(shop_settings, "webhook", url=receiver.url, secret=WEBHOOK_SECRET)
    settings = with_delivery(configured, max_attempts=3, backoff_base_seconds=30.0, backoff_max_seconds=600.0)
    keys = Keys(shop_settings.redis.prefix)
    await store_campaign(aredis, keys)
    with running(receiver):
        async with httpx.AsyncClient(trust_env=False) as http:
            yield Delivery(aredis, settings, store, keys, receiver, clock, http)


async def test_delivers_to_every_device_and_counts_delivered_once(delivery: Delivery) -> None:
    await delivery.user("gA-u1", "tok-phone", "tok-tablet")
    message = await delivery.queue("gA-u1")

    await delivery.worker().run(burst=True)

    receiver = delivery.receiver
    assert sorted(receiver.delivered_keys()) == [f"{message.message_id}:d0", f"{message.message_id}:d1"]
    assert {request.json()["title"] for request in receiver.deliveries} == {"Picked for you"}
    max_delay = delivery.settings.notifier.delivery.max_delay_hours * 3600  # expires that long after due
    assert {request.json()["expires_at"] for request in receiver.deliveries} == {message.due + max_delay}
    state = await delivery.message_state(message)
    assert (state["status"], state["attempts"]) == ("sent", "1")
    assert await delivery.counters() == {stats.DELIVERED: 1}
    assert await delivery.counters(run=None) == {stats.DELIVERED: 1}
    await delivery.assert_outbox_empty()


async def test_transient_failure_is_retried_after_the_backoff(delivery: Delivery) -> None:
    await delivery.user("gA-u1", "tok-phone")
    message = await delivery.queue("gA-u1")
    delivery.receiver.script.add("tok-phone", Reply(503, {"error": "busy"}))
    worker = delivery.worker()

    await worker.run(burst=True)

    state = await delivery.message_state(message)
    assert (state["status"], state["attempts"]) == ("queued", "1")
    assert "503" in state["error"]
    delayed = delivery.keys.outbox_delayed()
    assert await delivery.aredis.zscore(delayed, message.message_id) == NOW.timestamp() + 30
    assert await delivery.counters() == {}
    await delivery.assert_outbox_empty()

    delivery.clock.now = NOW + timedelta(seconds=29)
    await worker.run(burst=True)
    assert delivery.receiver.deliveries == [] and len(delivery.receiver.server.requests) == 1  # not due yet

    delivery.clock.now = NOW + timedelta(seconds=30)
    await worker.run(burst=True)

    assert delivery.receiver.delivered_keys() == [f"{message.message_id}:d0"]
    state = await delivery.message_state(message)
    assert (state["status"], state["attempts"]) == ("sent", "2")
    assert await delivery.counters() == {stats.DELIVERED: 1}
    assert await delivery.aredis.zcard(delayed) == 0


async def test_retry_waits_for_retry_after_when_longer_than_the_backoff(delivery: Delivery) -> None:
    await delivery.user("gA-u1", "tok-phone")
    message = await delivery.queue("gA-u1")
    delivery.receiver.script.add("tok-phone", Reply(429, {}, {"Retry-After": "120"}))

    await delivery.worker().run(burst=True)

    delayed = delivery.keys.outbox_delayed()
    assert await delivery.aredis.zscore(delayed, message.message_id) == NOW.timestamp() + 120


async def fail_every_attempt(delivery: Delivery, *tokens: str) -> DeliveryWorker:
    """Deliver the queued messages while the provider refuses `tokens`, until they are dead."""
    for token in tokens:
        delivery.receiver.script.add(token, *[Reply(500, {"error": "down"})] * 3)
    worker = delivery.worker()
    await worker.run(burst=True)  # attempt 1, retry in 30 s
    delivery.clock.now += timedelta(seconds=30)
    await worker.run(burst=True)  # attempt 2, retry in 60 s
    delivery.clock.now += timedelta(seconds=60)
    await worker.run(burst=True)  # attempt 3 of 3: dead
    return worker


async def test_dead_letter_after_max_attempts(delivery: Delivery) -> None:
    await delivery.user("gA-u1", "tok-phone")
    message = await delivery.queue("gA-u1")

    await fail_every_attempt(delivery, "tok-phone")

    assert len(delivery.receiver.server.requests) == 3
    ((_, letter),) = await delivery.aredis.xrange(delivery.keys.dead_letters())
    assert letter["message_id"] == message.message_id
    assert (letter["campaign"], letter["user"], letter["attempts"]) == ("spring", "gA-u1", "3")
    assert "500" in letter["error"]
    state = await delivery.message_state(message)
    assert (state["status"], state["attempts"]) == ("dead", "3")
    assert await delivery.counters() == {stats.FAILED: 1}
    assert await delivery.counters(run=None) == {stats.FAILED: 1}
    assert await delivery.aredis.zcard(delivery.keys.outbox_delayed()) == 0
    await delivery.assert_outbox_empty()


async def test_replayed_dead_letters_are_delivered_and_no_longer_count_as_failed(
    delivery: Delivery,
) -> None:
    await delivery.user("gA-u1", "tok-phone")
    await delivery.user("gA-u2", "tok-tablet")
    spring = await delivery.queue("gA-u1")
    await store_campaign(delivery.aredis, delivery.keys, "autumn")
    autumn = await queue_message(delivery.aredis, delivery.settings, "gA-u2", now=NOW, campaign_id="autumn")
    worker = await fail_every_attempt(delivery, "tok-phone", "tok-tablet")  # the provider was down
    keys, aredis = delivery.keys, delivery.aredis
    letters = await dead_letters.dead_letters(aredis, keys)  # in the order they died: either
    assert sorted(letter.message_id for letter in letters) == sorted([spring.message_id, autumn.message_id])

    now = delivery.clock.now.timestamp()  # the provider is back
    assert await dead_letters.replay(aredis, keys, now, campaign_id="spring") == dead_letters.Replayed(1, 0)
    state = await delivery.message_state(spring)
    assert (state["status"], state["attempts"], "error" in state) == ("queued", "0", False)
    assert [letter.campaign_id for letter in await dead_letters.dead_letters(aredis, keys)] == ["autumn"]
    await worker.run(burst=True)
    assert delivery.receiver.delivered_keys() == [f"{spring.message_id}:d0"]
    assert await delivery.counters() == {stats.DELIVERED: 1, stats.FAILED: 0}
    assert await run_stats(aredis, keys, "autumn", "run-1") == {stats.FAILED: 1}

    await aredis.delete(keys.message(autumn.message_id))  # expired meanwhile: nothing to send
    assert await dead_letters.replay(aredis, keys, now) == dead_letters.Replayed(0, 1)
    assert await dead_letters.dead_letters(aredis, keys) == []
    assert await run_stats(aredis, keys, "autumn", "run-1") == {stats.FAILED: 1}


async def test_invalid_token_removes_exactly_that_device(delivery: Delivery) -> None:
    await delivery.user("gA-u1", "tok-stale", "tok-good")
    await delivery.user("gA-u2", "tok-stale")  # the same token string on another user's device stays
    message = await delivery.queue("gA-u1")
    delivery.receiver.script.add("tok-stale", Reply(410, {"error": "gone"}))
    worker = delivery.worker()

    await worker.run(burst=True)

    profile = await delivery.store.get_profile("gA-u1")
    assert profile is not None and profile["devices"] == {"d1": {"token": "tok-good", "platform": "android"}}
    other = await delivery.store.get_profile("gA-u2")
    assert other is not None and set(other["devices"]) == {"d0"}
    assert (await delivery.message_state(message))["status"] == "sent"
    assert await delivery.counters() == {stats.DELIVERED: 1}
    assert worker.tally["devices_removed"] == 1


async def test_invalid_token_keeps_a_device_whose_token_changed_meanwhile(
    delivery: Delivery, redis_client: redis.Redis
) -> None:
    await delivery.user("gA-u1", "tok-old")
    message = await delivery.queue("gA-u1")

    def app_registers_a_new_token() -> None:  # while the send with the old token is in flight
        fields, _ = profile_changes({"devices": {"d0": {"token": "tok-new", "platform": "ios"}}})
        redis_client.hset(delivery.keys.profile("gA-u1"), mapping=fields)  # type: ignore[arg-type]

    delivery.receiver.script.before("tok-old", app_registers_a_new_token)
    delivery.receiver.script.add("tok-old", Reply(410, {"error": "gone"}))

    await delivery.worker().run(burst=True)

    profile = await delivery.store.get_profile("gA-u1")
    assert profile is not None and profile["devices"] == {"d0": {"token": "tok-new", "platform": "ios"}}
    state = await delivery.message_state(message)
    assert state["status"] == "failed"  # the one device it was sent to refused it
    assert await delivery.counters() == {stats.FAILED: 1}


async def test_nothing_delivered_without_retry_is_failed(delivery: Delivery) -> None:
    await delivery.user("gA-u1", "tok-gone", "tok-rejected")
    message = await delivery.queue("gA-u1")
    delivery.receiver.script.add("tok-gone", Reply(410, {}))
    delivery.receiver.script.add("tok-rejected", Reply(400, {"error": "payload too large"}))

    await delivery.worker().run(burst=True)

    state = await delivery.message_state(message)
    assert (state["status"], state["attempts"]) == ("failed", "1")
    assert "400" in state["error"] and "410" in state["error"]
    profile = await delivery.store.get_profile("gA-u1")
    assert profile is not None and set(profile["devices"]) == {"d1"}  # only the invalid token went
    assert await delivery.counters() == {stats.FAILED: 1}
    assert await delivery.aredis.zcard(delivery.keys.outbox_delayed()) == 0
    await delivery.assert_outbox_empty()


@pytest.mark.parametrize("change", ["consent withdrawn", "forgotten", "no device left", "no profile"])
async def test_profile_at_send_time_decides(delivery: Delivery, change: str) -> None:
    await delivery.user("gA-u1", "tok-phone")
    message = await delivery.queue("gA-u1")
    store = delivery.store
    if change == "consent withdrawn":
        await store.put_profile("gA-u1", {"push_consent": False})
    elif change == "forgotten":
        await store.forget_user("gA-u1")
    elif change == "no device left":
        await store.put_profile("gA-u1", {"devices": {"d0": None}})
    else:
        await delivery.aredis.delete(delivery.keys.profile("gA-u1"))

    await delivery.worker().run(burst=True)

    assert delivery.receiver.server.requests == []
    reason = {
        "consent withdrawn": stats.NO_CONSENT,
        "forgotten": stats.FORGOTTEN,
        "no device left": stats.NO_DEVICE,
        "no profile": stats.NO_DEVICE,
    }[change]
    assert await delivery.counters() == {stats.suppressed(reason): 1}
    state = await delivery.message_state(message)
    if change == "forgotten":
        assert state == {}  # their message held their data: gone with them
    else:
        assert (state["status"], state["error"]) == ("failed", reason)
    await delivery.assert_outbox_empty()


async def test_delayed_message_is_sent_once_due_and_not_before(delivery: Delivery) -> None:
    await delivery.user("gA-u1", "tok-phone")
    message = await delivery.queue("gA-u1", due=NOW + timedelta(hours=2))
    worker = delivery.worker()

    delivery.clock.now = NOW + timedelta(hours=2) - timedelta(seconds=1)
    await worker.run(burst=True)
    assert delivery.receiver.server.requests == []
    assert (await delivery.message_state(message))["status"] == "queued"

    delivery.clock.now = NOW + timedelta(hours=2)
    await worker.run(burst=True)

    assert delivery.receiver.delivered_keys() == [f"{message.message_id}:d0"]
    assert await delivery.counters() == {stats.DELIVERED: 1}


async def test_a_push_reaching_a_worker_at_night_waits_for_the_users_morning(delivery: Delivery) -> None:
    await delivery.store.put_profile(
        "gA-u1", {"push_consent": True, "devices": devices("tok-phone"), "timezone": "Europe/Berlin"}
    )
    # The campaign's own quiet hours (22:00-07:00), not the global ones (21:00-08:00).
    night = campaign("spring", rules={"quiet_start": "22:00", "quiet_end": "07:00"})
    await delivery.aredis.hset(delivery.keys.campaigns(), night.id, night.model_dump_json())
    message = await delivery.queue("gA-u1")  # due at 13:00 in Berlin; the workers were down
    pushes = delivery.keys.user_pushes("gA-u1")
    await delivery.aredis.zadd(pushes, {"spring|run-1": message.due})  # its record, as the run wrote it
    morning = datetime(2024, 2, 2, 6, 0, tzinfo=UTC)  # 07:00 in Berlin
    worker = delivery.worker()

    delivery.clock.now = datetime(2024, 2, 1, 21, 30, tzinfo=UTC)  # 22:30 in Berlin
    await worker.run(burst=True)
    assert delivery.receiver.server.requests == []
    assert (await delivery.message_state(message))["status"] == "queued"
    assert (
        await delivery.aredis.zscore(delivery.keys.outbox_delayed(), message.message_id)
        == morning.timestamp()
    )
    assert await delivery.aredis.zscore(pushes, "spring|run-1") == morning.timestamp()  # caps: that day
    await delivery.assert_outbox_empty()

    delivery.clock.now = morning - timedelta(seconds=1)
    await worker.run(burst=True)
    assert delivery.receiver.server.requests == []

    delivery.clock.now = morning
    await worker.run(burst=True)
    assert delivery.receiver.delivered_keys() == [f"{message.message_id}:d0"]
    assert await delivery.counters() == {stats.DELIVERED: 1}


@pytest.mark.parametrize(("max_delay_hours", "expired"), [(24.0, True), (0.0, False)])
async def test_a_push_later_than_max_delay_hours_is_dropped_as_expired(
    delivery: Delivery, max_delay_hours: float, expired: bool
) -> None:
    await delivery.user("gA-u1", "tok-phone")
    message = await delivery.queue("gA-u1")  # due at NOW (noon in UTC, the user's zone)
    worker = delivery.worker(settings=with_delivery(delivery.settings, max_delay_hours=max_delay_hours))

    delivery.clock.now = NOW + timedelta(days=1, seconds=1)  # noon again, a day and a second late
    await worker.run(burst=True)

    await delivery.assert_outbox_empty()
    if expired:
        assert delivery.receiver.server.requests == []
        state = await delivery.message_state(message)
        assert (state["status"], state["error"]) == ("failed", "expired")
        assert await delivery.counters() == {stats.suppressed(stats.EXPIRED): 1}
    else:  # 0: never too late
        assert delivery.receiver.delivered_keys() == [f"{message.message_id}:d0"]
        assert await delivery.counters() == {stats.DELIVERED: 1}


async def test_a_push_of_an_item_marked_unavailable_since_it_was_prepared_is_suppressed(
    delivery: Delivery,
) -> None:
    await delivery.user("gA-u1", "tok-phone")
    await delivery.user("gA-u2", "tok-tablet")
    stale = await delivery.queue("gA-u1")  # items a1, a2
    fresh = await queue_message(delivery.aredis, delivery.settings, "gA-u2", now=NOW, items=("a3", "a4"))
    await delivery.store.upsert_items(
        [
            {"item_id": "a2", "available": False},
            {"item_id": "a3", "price": 9.5},  # other fields change nothing
            {"item_id": "a4", "available": True},
        ]
    )

    await delivery.worker().run(burst=True)

    assert delivery.receiver.delivered_keys() == [f"{fresh.message_id}:d0"]
    state = await delivery.message_state(stale)
    assert (state["status"], state["error"]) == ("failed", stats.UNAVAILABLE_ITEM)
    assert await delivery.counters() == {
        stats.DELIVERED: 1,
        stats.suppressed(stats.UNAVAILABLE_ITEM): 1,
    }
    await delivery.assert_outbox_empty()


async def test_a_triggered_push_is_cancelled_by_a_cancelling_event_after_it_was_written(
    delivery: Delivery,
) -> None:
    """A cart reminder deferred to the morning, and the item bought meanwhile: no push."""
    trigger = {"event": "add_to_cart", "delay_minutes": 60, "cancel_on": ["purchase"], "same_item": True}
    reminder = campaign(trigger=trigger)
    await delivery.aredis.hset(delivery.keys.campaigns(), reminder.id, reminder.model_dump_json())
    for user in ("gA-u1", "gA-u2", "gA-u3"):
        await delivery.user(user, f"tok-{user}")
    bought_it, bought_other, bought_before = [await delivery.queue(u) for u in ("gA-u1", "gA-u2", "gA-u3")]
    await delivery.store.record_events(
        [
            Event("gA-u1", bought_it.items[0], "purchase", NOW + timedelta(minutes=5)),
            Event("gA-u2", "b9", "purchase", NOW + timedelta(minutes=5)),  # same_item: another item
            Event("gA-u3", bought_before.items[0], "purchase", NOW - timedelta(minutes=5)),
        ],
        [None, None, None],
    )
    delivery.clock.now = NOW + timedelta(minutes=10)

    await delivery.worker().run(burst=True)

    assert sorted(delivery.receiver.delivered_keys()) == sorted(
        f"{message.message_id}:d0" for message in (bought_other, bought_before)
    )
    state = await delivery.message_state(bought_it)
    assert (state["status"], state["error"]) == ("failed", stats.CANCELLED_BY_EVENT)
    assert await delivery.counters() == {
        stats.DELIVERED: 2,
        stats.suppressed(stats.CANCELLED_BY_EVENT): 1,
    }


@pytest.mark.parametrize("path", ["queued", "deferred by the run", "held for the morning", "triggered"])
async def test_pushes_of_a_campaign_deleted_since_they_were_queued_are_cancelled_and_counted_nowhere(
    delivery: Delivery, path: str
) -> None:
    aredis, keys = delivery.aredis, delivery.keys
    await delivery.store.put_profile(
        "gA-u1", {"push_consent": True, "devices": devices("tok-phone"), "timezone": "Europe/Berlin"}
    )
    run_id = trigger_run_id(NOW) if path == "triggered" else "run-1"
    due = NOW + timedelta(hours=3) if path == "deferred by the run" else NOW
    message = await queue_message(aredis, delivery.settings, "gA-u1", now=NOW, due=due, run_id=run_id)
    pushes = keys.user_pushes("gA-u1")
    await aredis.zadd(pushes, {f"spring|{run_id}": message.due, "autumn|run-9": NOW.timestamp()})
    worker = delivery.worker()
    if path == "held for the morning":  # reaches a worker at 22:30 in Berlin: waits for 08:00
        delivery.clock.now = datetime(2024, 2, 1, 21, 30, tzinfo=UTC)
        await worker.run(burst=True)
        assert worker.tally["held"] == 1
    await CampaignStore(aredis, delivery.settings).delete("spring")

    delivery.clock.now = datetime(2024, 2, 2, 7, 0, tzinfo=UTC)  # 08:00 in Berlin: everything is due
    await worker.run(burst=True)

    assert delivery.receiver.server.requests == []
    state = await delivery.message_state(message)
    assert (state["status"], state["error"]) == ("failed", CAMPAIGN_DELETED)
    assert worker.tally[CANCELLED] == 1 and worker.tally[DELIVERED] == 0
    assert await aredis.zrange(pushes, 0, -1) == ["autumn|run-9"]  # its record counts for no cap
    await delivery.assert_outbox_empty()
    assert await aredis.zcard(keys.outbox_delayed()) == 0
    await store_campaign(aredis, keys)  # created again under the same id: it starts at zero
    assert await run_stats(aredis, keys, "spring", run_id) == {}
    assert await run_stats(aredis, keys, "spring", None) == {}


@pytest.mark.parametrize("reason", [stats.UNAVAILABLE_ITEM, stats.EXPIRED, stats.NO_CONSENT, stats.NO_DEVICE])
async def test_a_push_suppressed_at_send_time_no_longer_counts_toward_the_users_caps(
    delivery: Delivery, reason: str
) -> None:
    aredis, keys = delivery.aredis, delivery.keys
    pushes, pushed_items = keys.user_pushes("gA-u1"), keys.user_pushed_items("gA-u1")
    await delivery.user("gA-u1", "tok-phone")
    await store_campaign(aredis, keys, "summer")
    sent = await queue_message(
        aredis, delivery.settings, "gA-u1", now=NOW, campaign_id="summer", items=("b1",)
    )
    await aredis.zadd(pushes, {"summer|run-1": sent.due})  # its record, as the run wrote it
    worker = delivery.worker()
    await worker.run(burst=True)  # "summer" is delivered
    suppressed = await delivery.queue("gA-u1")  # campaign "spring", items a1 and a2
    await aredis.zadd(pushes, {"spring|run-1": suppressed.due})
    await aredis.hset(pushed_items, "a1", json.dumps({"m": suppressed.message_id, "t": suppressed.due}))
    if reason == stats.UNAVAILABLE_ITEM:
        await delivery.store.upsert_items([{"item_id": "a2", "available": False}])
    elif reason == stats.EXPIRED:
        delivery.clock.now = NOW + timedelta(days=1, seconds=1)
    elif reason == stats.NO_CONSENT:
        await delivery.store.put_profile("gA-u1", {"push_consent": False})
    else:
        await delivery.store.put_profile("gA-u1", {"devices": {"d0": None}})

    await worker.run(burst=True)

    assert len(delivery.receiver.deliveries) == 1
    state = await delivery.message_state(suppressed)
    assert (state["status"], state["error"]) == ("failed", reason)
    assert await delivery.counters() == {stats.suppressed(reason): 1}
    # The user got one push: with max_per_day = 2, another may still go out that day.
    stored = await aredis.zrange(pushes, 0, -1, withscores=True)
    remaining = [rules.push_record(member, due) for member, due in stored]
    assert [record.campaign_id for record in remaining] == ["summer"]
    two_a_day = delivery.settings.notifier.rules.model_copy(update={"max_per_day": 2})
    assert rules.cap_reason(two_a_day, ZoneInfo("UTC"), NOW, remaining, "winter", "run-1") is None
    assert await aredis.hexists(pushed_items, "a1")  # attribution keeps its record


async def test_two_workers_never_deliver_the_same_message_twice(delivery: Delivery) -> None:
    expected = []
    for n in range(30):
        await delivery.user(f"u{n}", f"tok-{n}")
        due = NOW if n % 2 else NOW + timedelta(minutes=5)  # half of them from the delayed set
        message = await delivery.queue(f"u{n}", due=due)
        expected.append(f"{message.message_id}:d0")
    settings = with_delivery(delivery.settings, read_count=4)
    first, second = delivery.worker("w1", settings), delivery.worker("w2", settings)
    delivery.clock.now = NOW + timedelta(minutes=5)

    await asyncio.gather(first.run(burst=True), second.run(burst=True))

    assert sorted(delivery.receiver.delivered_keys()) == sorted(expected)  # each exactly once
    assert first.tally[DELIVERED] > 0 and second.tally[DELIVERED] > 0  # both did share the work
    assert first.tally[DELIVERED] + second.tally[DELIVERED] == 30
    assert await delivery.counters() == {stats.DELIVERED: 30}
    await delivery.assert_outbox_empty()


async def test_stale_entry_of_a_dead_consumer_is_reclaimed(delivery: Delivery) -> None:
    aredis, outbox = delivery.aredis, delivery.keys.outbox()
    await delivery.user("gA-u1", "tok-1")
    await delivery.user("gA-u2", "tok-2")
    abandoned = await delivery.queue("gA-u1")
    in_progress = await delivery.queue("gA-u2")
    await aredis.xgroup_create(outbox, DELIVERY_GROUP, id="0")
    taken = await aredis.xreadgroup(DELIVERY_GROUP, "crashed", {outbox: ">"}, count=1)
    ((_, [(abandoned_entry, _)]),) = taken
    await aredis.xreadgroup(DELIVERY_GROUP, "busy", {outbox: ">"}, count=1)
    # "crashed" took its entry long ago (XCLAIM ... IDLE sets the idle time); "busy" just now.
    await aredis.xclaim(outbox, DELIVERY_GROUP, "crashed", 0, [abandoned_entry], idle=3_600_000)

    await delivery.worker().run(burst=True)

    assert delivery.receiver.delivered_keys() == [f"{abandoned.message_id}:d0"]
    assert (await delivery.message_state(abandoned))["status"] == "sent"
    assert (await delivery.message_state(in_progress))["status"] == "queued"  # still busy's
    pending = await aredis.xpending_range(outbox, DELIVERY_GROUP, "-", "+", 10)
    assert [item["consumer"] for item in pending] == ["busy"]


async def test_a_finished_message_queued_again_is_not_sent_again(delivery: Delivery) -> None:
    await delivery.user("gA-u1", "tok-phone")
    message = await delivery.queue("gA-u1")
    worker = delivery.worker()
    await worker.run(burst=True)

    outbox = delivery.keys.outbox()
    await delivery.aredis.xadd(outbox, {"message_id": message.message_id})  # e.g. a rerun's duplicate
    await delivery.aredis.xadd(outbox, {"message_id": "expired-long-ago"})
    await worker.run(burst=True)

    assert len(delivery.receiver.deliveries) == 1
    assert await delivery.counters() == {stats.DELIVERED: 1}
    assert worker.tally["skipped"] == 2
    await delivery.assert_outbox_empty()


async def test_worker_waits_when_the_shared_rate_limit_says_so(delivery: Delivery) -> None:
    for n in range(3):
        await delivery.user(f"u{n}", f"tok-{n}")
        await delivery.queue(f"u{n}")
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes by hand, not by sleeping
        waits.append(seconds)
        delivery.clock.now += timedelta(seconds=seconds)

    settings = with_provider(delivery.settings, "webhook", rate_per_second=1.0)
    await delivery.worker(settings=settings, sleep=sleep, concurrency=1).run(burst=True)

    assert waits == [1.0, 1.0]  # one push a second: the 2nd and 3rd each waited a second
    assert len(delivery.receiver.deliveries) == 3
    assert await delivery.counters() == {stats.DELIVERED: 3}


async def test_run_returns_once_stopped_after_finishing_the_batch(delivery: Delivery) -> None:
    await delivery.user("gA-u1", "tok-phone")
    await delivery.queue("gA-u1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    delivery.receiver.script.before("tok-phone", lambda: loop.call_soon_threadsafe(stop.set))  # stop mid-send
    settings = with_delivery(delivery.settings, block_seconds=0.05)

    await asyncio.wait_for(delivery.worker(settings=settings).run(stop=stop), timeout=30)

    assert len(delivery.receiver.deliveries) == 1
    assert await delivery.counters() == {stats.DELIVERED: 1}
    await delivery.assert_outbox_empty()


async def test_run_worker_with_the_log_provider(
    aredis: aioredis.Redis, shop_settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # `run_worker` keeps the wall clock: a push due now, with quiet hours off (whatever the hour).
    rules = shop_settings.notifier.rules.model_copy(update={"quiet_start": "00:00", "quiet_end": "00:00"})
    settings = shop_settings.model_copy(
        update={"notifier": shop_settings.notifier.model_copy(update={"rules": rules})}
    )
    await store.put_profile("gA-u1", {"push_consent": True, "devices": devices("tok-phone")})
    await store_campaign(aredis, Keys(shop_settings.redis.prefix))
    await queue_message(aredis, settings, "gA-u1", now=utc_now(), title="Back in stock")

    with caplog.at_level(logging.INFO):
        await run_worker(settings, burst=True)

    pushes = [record.getMessage() for record in caplog.records if record.name == "recsvc.push"]
    assert len(pushes) == 1 and "gA-u1" in pushes[0] and "'Back in stock'" in pushes[0]
    summaries = [record.getMessage() for record in caplog.records if record.name == "notifier.worker"]
    assert any("1 delivered" in line for line in summaries), summaries
    keys = Keys(shop_settings.redis.prefix)
    assert await run_stats(aredis, keys, "spring", "run-1") == {stats.DELIVERED: 1}


async def test_worker_recreates_a_consumer_group_lost_while_it_runs(
    delivery: Delivery, redis_client: redis.Redis
) -> None:
    await delivery.user("gA-u1", "tok-phone")
    await delivery.queue("gA-u1")
    # Redis loses the stream and its group (restarted empty) while the worker is sending.
    delivery.receiver.script.before("tok-phone", lambda: redis_client.delete(delivery.keys.outbox()))

    await delivery.worker().run(burst=True)  # its next read meets NOGROUP

    assert len(delivery.receiver.deliveries) == 1
    groups = await delivery.aredis.xinfo_groups(delivery.keys.outbox())
    assert [group["name"] for group in groups] == [DELIVERY_GROUP]


async def test_worker_pauses_while_redis_is_unreachable(delivery: Delivery) -> None:
    probe = HttpServer(lambda request: Reply())
    host, port = probe.url.removeprefix("http://").split(":")
    probe.stop()  # a port nothing listens on
    unreachable = aioredis.Redis(
        host=host,
        port=int(port),
        socket_connect_timeout=1.0,
        decode_responses=True,
        retry=Retry(NoBackoff(), 0),
    )
    stop = asyncio.Event()
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            stop.set()

    worker = replace(delivery, aredis=unreachable).worker(sleep=sleep)
    try:
        await worker.run(stop=stop)  # returns (stopped) instead of dying on the outage
        with pytest.raises(RedisUnavailable):
            await worker.run(burst=True)  # a burst run reports it
    finally:
        await unreachable.aclose()

    assert pauses == [REDIS_RETRY_SECONDS, REDIS_RETRY_SECONDS]


async def test_malformed_message_is_dropped_not_retried_forever(delivery: Delivery) -> None:
    await delivery.aredis.hset(delivery.keys.message("broken"), mapping={"status": "queued", "user": "gA-u1"})
    await delivery.aredis.xadd(delivery.keys.outbox(), {"message_id": "broken"})
    worker = delivery.worker()

    await worker.run(burst=True)

    assert delivery.receiver.server.requests == []
    assert worker.tally["skipped"] == 1
    await delivery.assert_outbox_empty()
