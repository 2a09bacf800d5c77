"""The delivery worker end to end: real Redis, the webhook provider against a local receiver that
verifies signatures, and a manual clock moved by hand between burst runs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

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
from shop import NOW, ManualClock

from notifier import stats
from notifier.messages import Message
from notifier.providers import build_provider
from notifier.worker import DELIVERED, REDIS_RETRY_SECONDS, DeliveryWorker, run_worker
from recsvc.config import Settings
from recsvc.keys import DELIVERY_GROUP, Keys
from recsvc.redis_conn import RedisUnavailable
from recsvc.state import Store, profile_changes

pytestmark = pytest.mark.anyio


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    endpoint = WebhookReceiver()
    with running(endpoint):
        yield endpoint


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
def delivery_settings(shop_settings: Settings, receiver: WebhookReceiver) -> Settings:
    configured = with_provider(shop_settings, "webhook", url=receiver.url, secret=WEBHOOK_SECRET)
    return with_delivery(configured, max_attempts=3, backoff_base_seconds=30.0, backoff_max_seconds=600.0)


@pytest.fixture
def keys(shop_settings: Settings) -> Keys:
    return Keys(shop_settings.redis.prefix)


@pytest.fixture
def make_worker(
    aredis: aioredis.Redis, delivery_settings: Settings, http: httpx.AsyncClient, clock: ManualClock
) -> Any:
    def make(consumer: str = "w1", settings: Settings | None = None, **options: Any) -> DeliveryWorker:
        chosen = settings or delivery_settings
        provider = build_provider(chosen, http, clock=clock)
        return DeliveryWorker(aredis, chosen, provider, consumer=consumer, clock=clock, **options)

    return make


async def user(store: Store, user_id: str, *tokens: str, consent: bool = True) -> None:
    await store.put_profile(user_id, {"push_consent": consent, "devices": devices(*tokens)})


async def counters(aredis: aioredis.Redis, keys: Keys, run: str | None = "run-1") -> dict[str, int]:
    raw = await aredis.hgetall(keys.campaign_stats("spring", run))
    return {name: int(value) for name, value in raw.items()}


async def message_state(aredis: aioredis.Redis, keys: Keys, message: Message) -> dict[str, str]:
    state: dict[str, str] = await aredis.hgetall(keys.message(message.message_id))
    return state


async def assert_outbox_empty(aredis: aioredis.Redis, keys: Keys) -> None:
    assert await aredis.xlen(keys.outbox()) == 0
    assert (await aredis.xpending(keys.outbox(), DELIVERY_GROUP))["pending"] == 0


async def test_delivers_to_every_device_and_counts_delivered_once(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await user(store, "gA-u1", "tok-phone", "tok-tablet")
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)

    await make_worker().run(burst=True)

    assert sorted(receiver.delivered_keys()) == [f"{message.message_id}:d0", f"{message.message_id}:d1"]
    assert {request.json()["title"] for request in receiver.deliveries} == {"Picked for you"}
    state = await message_state(aredis, keys, message)
    assert (state["status"], state["attempts"]) == ("sent", "1")
    assert await counters(aredis, keys) == {stats.DELIVERED: 1}
    assert await counters(aredis, keys, run=None) == {stats.DELIVERED: 1}
    await assert_outbox_empty(aredis, keys)


async def test_transient_failure_is_retried_after_the_backoff(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
    clock: ManualClock,
) -> None:
    await user(store, "gA-u1", "tok-phone")
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    receiver.script.add("tok-phone", Reply(503, {"error": "busy"}))
    worker = make_worker()

    await worker.run(burst=True)

    state = await message_state(aredis, keys, message)
    assert (state["status"], state["attempts"]) == ("queued", "1")
    assert "503" in state["error"]
    assert await aredis.zscore(keys.outbox_delayed(), message.message_id) == NOW.timestamp() + 30
    assert await counters(aredis, keys) == {}
    await assert_outbox_empty(aredis, keys)

    clock.now = NOW + timedelta(seconds=29)
    await worker.run(burst=True)
    assert receiver.deliveries == [] and len(receiver.server.requests) == 1  # not due yet

    clock.now = NOW + timedelta(seconds=30)
    await worker.run(burst=True)

    assert receiver.delivered_keys() == [f"{message.message_id}:d0"]
    state = await message_state(aredis, keys, message)
    assert (state["status"], state["attempts"]) == ("sent", "2")
    assert await counters(aredis, keys) == {stats.DELIVERED: 1}
    assert await aredis.zcard(keys.outbox_delayed()) == 0


async def test_retry_waits_for_retry_after_when_longer_than_the_backoff(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await user(store, "gA-u1", "tok-phone")
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    receiver.script.add("tok-phone", Reply(429, {}, {"Retry-After": "120"}))

    await make_worker().run(burst=True)

    assert await aredis.zscore(keys.outbox_delayed(), message.message_id) == NOW.timestamp() + 120


async def test_dead_letter_after_max_attempts(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
    clock: ManualClock,
) -> None:
    await user(store, "gA-u1", "tok-phone")
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    receiver.script.add("tok-phone", *[Reply(500, {"error": "down"})] * 3)
    worker = make_worker()

    await worker.run(burst=True)  # attempt 1, retry in 30 s
    clock.now += timedelta(seconds=30)
    await worker.run(burst=True)  # attempt 2, retry in 60 s
    clock.now += timedelta(seconds=60)
    await worker.run(burst=True)  # attempt 3 of 3: dead

    assert len(receiver.server.requests) == 3
    ((_, letter),) = await aredis.xrange(keys.dead_letters())
    assert letter["message_id"] == message.message_id
    assert (letter["campaign"], letter["user"], letter["attempts"]) == ("spring", "gA-u1", "3")
    assert "500" in letter["error"]
    state = await message_state(aredis, keys, message)
    assert (state["status"], state["attempts"]) == ("dead", "3")
    assert await counters(aredis, keys) == {stats.FAILED: 1}
    assert await counters(aredis, keys, run=None) == {stats.FAILED: 1}
    assert await aredis.zcard(keys.outbox_delayed()) == 0
    await assert_outbox_empty(aredis, keys)


async def test_invalid_token_removes_exactly_that_device(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await user(store, "gA-u1", "tok-stale", "tok-good")
    await user(store, "gA-u2", "tok-stale")  # the same token string on another user's device stays
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    receiver.script.add("tok-stale", Reply(410, {"error": "gone"}))
    worker = make_worker()

    await worker.run(burst=True)

    profile = await store.get_profile("gA-u1")
    assert profile is not None and profile["devices"] == {"d1": {"token": "tok-good", "platform": "android"}}
    other = await store.get_profile("gA-u2")
    assert other is not None and set(other["devices"]) == {"d0"}
    assert (await message_state(aredis, keys, message))["status"] == "sent"
    assert await counters(aredis, keys) == {stats.DELIVERED: 1}
    assert worker.tally["devices_removed"] == 1


async def test_invalid_token_keeps_a_device_whose_token_changed_meanwhile(
    aredis: aioredis.Redis,
    redis_client: redis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await user(store, "gA-u1", "tok-old")
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)

    def app_registers_a_new_token() -> None:  # while the send with the old token is in flight
        fields, _ = profile_changes({"devices": {"d0": {"token": "tok-new", "platform": "ios"}}})
        redis_client.hset(keys.profile("gA-u1"), mapping=fields)  # type: ignore[arg-type]

    receiver.script.before("tok-old", app_registers_a_new_token)
    receiver.script.add("tok-old", Reply(410, {"error": "gone"}))

    await make_worker().run(burst=True)

    profile = await store.get_profile("gA-u1")
    assert profile is not None and profile["devices"] == {"d0": {"token": "tok-new", "platform": "ios"}}
    state = await message_state(aredis, keys, message)
    assert state["status"] == "failed"  # the one device it was sent to refused it
    assert await counters(aredis, keys) == {stats.FAILED: 1}


async def test_nothing_delivered_without_retry_is_failed(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await user(store, "gA-u1", "tok-gone", "tok-rejected")
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    receiver.script.add("tok-gone", Reply(410, {}))
    receiver.script.add("tok-rejected", Reply(400, {"error": "payload too large"}))

    await make_worker().run(burst=True)

    state = await message_state(aredis, keys, message)
    assert (state["status"], state["attempts"]) == ("failed", "1")
    assert "400" in state["error"] and "410" in state["error"]
    profile = await store.get_profile("gA-u1")
    assert profile is not None and set(profile["devices"]) == {"d1"}  # only the invalid token went
    assert await counters(aredis, keys) == {stats.FAILED: 1}
    assert await aredis.zcard(keys.outbox_delayed()) == 0
    await assert_outbox_empty(aredis, keys)


@pytest.mark.parametrize("change", ["consent withdrawn", "forgotten", "no device left", "no profile"])
async def test_profile_at_send_time_decides(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
    change: str,
) -> None:
    await user(store, "gA-u1", "tok-phone")
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    if change == "consent withdrawn":
        await store.put_profile("gA-u1", {"push_consent": False})
    elif change == "forgotten":
        await store.forget_user("gA-u1")
    elif change == "no device left":
        await store.put_profile("gA-u1", {"devices": {"d0": None}})
    else:
        await aredis.delete(keys.profile("gA-u1"))

    await make_worker().run(burst=True)

    assert receiver.server.requests == []
    reason = {
        "consent withdrawn": stats.NO_CONSENT,
        "forgotten": stats.FORGOTTEN,
        "no device left": stats.NO_DEVICE,
        "no profile": stats.NO_DEVICE,
    }[change]
    assert await counters(aredis, keys) == {stats.suppressed(reason): 1}
    state = await message_state(aredis, keys, message)
    if change == "forgotten":
        assert state == {}  # their message held their data: gone with them
    else:
        assert (state["status"], state["error"]) == ("failed", reason)
    await assert_outbox_empty(aredis, keys)


async def test_delayed_message_is_sent_once_due_and_not_before(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
    clock: ManualClock,
) -> None:
    await user(store, "gA-u1", "tok-phone")
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW, due=NOW + timedelta(hours=2))
    worker = make_worker()

    clock.now = NOW + timedelta(hours=2) - timedelta(seconds=1)
    await worker.run(burst=True)
    assert receiver.server.requests == []
    assert (await message_state(aredis, keys, message))["status"] == "queued"

    clock.now = NOW + timedelta(hours=2)
    await worker.run(burst=True)

    assert receiver.delivered_keys() == [f"{message.message_id}:d0"]
    assert await counters(aredis, keys) == {stats.DELIVERED: 1}


async def test_two_workers_never_deliver_the_same_message_twice(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
    clock: ManualClock,
) -> None:
    settings = with_delivery(delivery_settings, read_count=4)
    expected = []
    for n in range(30):
        await user(store, f"u{n}", f"tok-{n}")
        due = NOW if n % 2 else NOW + timedelta(minutes=5)  # half of them from the delayed set
        message = await queue_message(aredis, settings, f"u{n}", now=NOW, due=due)
        expected.append(f"{message.message_id}:d0")
    first, second = make_worker("w1", settings), make_worker("w2", settings)
    clock.now = NOW + timedelta(minutes=5)

    await asyncio.gather(first.run(burst=True), second.run(burst=True))

    assert sorted(receiver.delivered_keys()) == sorted(expected)  # each exactly once
    assert first.tally[DELIVERED] > 0 and second.tally[DELIVERED] > 0  # both did share the work
    assert first.tally[DELIVERED] + second.tally[DELIVERED] == 30
    assert await counters(aredis, keys) == {stats.DELIVERED: 30}
    await assert_outbox_empty(aredis, keys)


async def test_stale_entry_of_a_dead_consumer_is_reclaimed(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await user(store, "gA-u1", "tok-1")
    await user(store, "gA-u2", "tok-2")
    abandoned = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    in_progress = await queue_message(aredis, delivery_settings, "gA-u2", now=NOW)
    await aredis.xgroup_create(keys.outbox(), DELIVERY_GROUP, id="0")
    taken = await aredis.xreadgroup(DELIVERY_GROUP, "crashed", {keys.outbox(): ">"}, count=1)
    ((_, [(abandoned_entry, _)]),) = taken
    await aredis.xreadgroup(DELIVERY_GROUP, "busy", {keys.outbox(): ">"}, count=1)
    # "crashed" took its entry long ago (XCLAIM ... IDLE sets the idle time); "busy" just now.
    await aredis.xclaim(keys.outbox(), DELIVERY_GROUP, "crashed", 0, [abandoned_entry], idle=3_600_000)

    await make_worker().run(burst=True)

    assert receiver.delivered_keys() == [f"{abandoned.message_id}:d0"]
    assert (await message_state(aredis, keys, abandoned))["status"] == "sent"
    assert (await message_state(aredis, keys, in_progress))["status"] == "queued"  # still busy's
    pending = await aredis.xpending_range(keys.outbox(), DELIVERY_GROUP, "-", "+", 10)
    assert [item["consumer"] for item in pending] == ["busy"]


async def test_a_finished_message_queued_again_is_not_sent_again(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await user(store, "gA-u1", "tok-phone")
    message = await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    worker = make_worker()
    await worker.run(burst=True)

    await aredis.xadd(keys.outbox(), {"message_id": message.message_id})  # e.g. a rerun's duplicate
    await aredis.xadd(keys.outbox(), {"message_id": "expired-long-ago"})
    await worker.run(burst=True)

    assert len(receiver.deliveries) == 1
    assert await counters(aredis, keys) == {stats.DELIVERED: 1}
    assert worker.tally["skipped"] == 2
    await assert_outbox_empty(aredis, keys)


async def test_worker_waits_when_the_shared_rate_limit_says_so(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
    clock: ManualClock,
) -> None:
    settings = with_provider(delivery_settings, "webhook", rate_per_second=1.0)
    for n in range(3):
        await user(store, f"u{n}", f"tok-{n}")
        await queue_message(aredis, settings, f"u{n}", now=NOW)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes by hand, not by sleeping
        waits.append(seconds)
        clock.now += timedelta(seconds=seconds)

    await make_worker(settings=settings, sleep=sleep, concurrency=1).run(burst=True)

    assert waits == [1.0, 1.0]  # one push a second: the 2nd and 3rd each waited a second
    assert len(receiver.deliveries) == 3
    assert await counters(aredis, keys) == {stats.DELIVERED: 3}


async def test_run_returns_once_stopped_after_finishing_the_batch(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await user(store, "gA-u1", "tok-phone")
    await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    receiver.script.before("tok-phone", lambda: loop.call_soon_threadsafe(stop.set))  # stop mid-send
    settings = with_delivery(delivery_settings, block_seconds=0.05)

    await asyncio.wait_for(make_worker(settings=settings).run(stop=stop), timeout=30)

    assert len(receiver.deliveries) == 1
    assert await counters(aredis, keys) == {stats.DELIVERED: 1}
    await assert_outbox_empty(aredis, keys)


async def test_run_worker_with_the_log_provider(
    aredis: aioredis.Redis,
    shop_settings: Settings,
    store: Store,
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await user(store, "gA-u1", "tok-phone")
    await queue_message(aredis, shop_settings, "gA-u1", now=NOW, title="Back in stock")

    with caplog.at_level(logging.INFO):
        await run_worker(shop_settings, burst=True)

    pushes = [record.getMessage() for record in caplog.records if record.name == "recsvc.push"]
    assert len(pushes) == 1 and "gA-u1" in pushes[0] and "'Back in stock'" in pushes[0]
    summaries = [record.getMessage() for record in caplog.records if record.name == "notifier.worker"]
    assert any("1 delivered" in line for line in summaries), summaries
    assert await counters(aredis, keys) == {stats.DELIVERED: 1}


async def test_worker_recreates_a_consumer_group_lost_while_it_runs(
    aredis: aioredis.Redis,
    redis_client: redis.Redis,
    delivery_settings: Settings,
    store: Store,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await user(store, "gA-u1", "tok-phone")
    await queue_message(aredis, delivery_settings, "gA-u1", now=NOW)
    # Redis loses the stream and its group (restarted empty) while the worker is sending.
    receiver.script.before("tok-phone", lambda: redis_client.delete(keys.outbox()))

    await make_worker().run(burst=True)  # its next read meets NOGROUP

    assert len(receiver.deliveries) == 1
    groups = await aredis.xinfo_groups(keys.outbox())
    assert [group["name"] for group in groups] == [DELIVERY_GROUP]


async def test_worker_pauses_while_redis_is_unreachable(
    delivery_settings: Settings, http: httpx.AsyncClient, clock: ManualClock
) -> None:
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

    provider = build_provider(delivery_settings, http, clock=clock)
    worker = DeliveryWorker(unreachable, delivery_settings, provider, consumer="w1", clock=clock, sleep=sleep)
    try:
        await worker.run(stop=stop)  # returns (stopped) instead of dying on the outage
        with pytest.raises(RedisUnavailable):
            await worker.run(burst=True)  # a burst run reports it
    finally:
        await unreachable.aclose()

    assert pauses == [REDIS_RETRY_SECONDS, REDIS_RETRY_SECONDS]


async def test_malformed_message_is_dropped_not_retried_forever(
    aredis: aioredis.Redis,
    delivery_settings: Settings,
    keys: Keys,
    receiver: WebhookReceiver,
    make_worker: Any,
) -> None:
    await aredis.hset(keys.message("broken"), mapping={"status": "queued", "user": "gA-u1"})
    await aredis.xadd(keys.outbox(), {"message_id": "broken"})
    worker = make_worker()

    await worker.run(burst=True)

    assert receiver.server.requests == []
    assert worker.tally["skipped"] == 1
    await assert_outbox_empty(aredis, keys)
