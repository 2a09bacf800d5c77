"""Campaign runs end to end over a real Redis and the planted shop's model, with a manual clock."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import faiss
import pytest
import redis
import redis.asyncio as aioredis
from runner_support import (
    DEVICE,
    REACHABLE,
    campaign,
    delayed,
    message_of,
    outbox_ids,
    put_profiles,
    record,
    run_stats,
)
from shop import NOW, ManualClock, items_of

from notifier import runner as runner_module
from notifier import segments, stats
from notifier.campaign import Campaign, Segment
from notifier.messages import message_id
from notifier.run_leases import RunConflict
from notifier.runner import CampaignRunner, ModelNotLoaded
from notifier.templates import MAX_TEXT_CHARS
from recsvc.config import Settings
from recsvc.current_model import ModelHolder
from recsvc.engine import RecentEvent
from recsvc.keys import Keys
from recsvc.registry import Registry
from recsvc.state import Store, unix_micros

pytestmark = pytest.mark.anyio


@pytest.fixture
def runner(
    aredis: aioredis.Redis, shop_settings: Settings, models: ModelHolder, clock: ManualClock
) -> CampaignRunner:
    return CampaignRunner(aredis, shop_settings, models, clock=clock)


@pytest.fixture
def keys(shop_settings: Settings) -> Keys:
    return Keys(shop_settings.redis.prefix)


def mid(campaign_id: str, run_id: str, user_id: str) -> str:
    return message_id(campaign_id, run_id, user_id)


def items(message: dict[str, str]) -> list[str]:
    return list(json.loads(message["items"]))


async def save(aredis: aioredis.Redis, keys: Keys, *campaigns: Campaign) -> None:
    """Store campaigns as the campaign store does, so every campaign's rules are known."""
    for stored in campaigns:
        await aredis.hset(keys.campaigns(), stored.id, stored.model_dump_json())


async def control_users(aredis: aioredis.Redis, keys: Keys, run_id: str, users: list[str]) -> set[str]:
    """The users whose message of run `run_id` of "spring" is a control-group record."""
    async with aredis.pipeline(transaction=False) as pipe:
        for user in users:
            pipe.hget(keys.message(mid("spring", run_id, user)), "control")
        flags = await pipe.execute()
    return {user for user, flag in zip(users, flags, strict=True) if flag == "1"}


async def prefixed_keys(aredis: aioredis.Redis, keys: Keys) -> set[str]:
    return {key async for key in aredis.scan_iter(match=f"{keys.prefix}:*", count=1_000)}


# --- one run -----------------------------------------------------------------------------------------


async def test_a_run_messages_reachable_users_and_counts_the_rest(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    await put_profiles(
        store,
        {
            "gA-u1": REACHABLE,
            "gB-u1": REACHABLE,
            "gA-u2": {"push_consent": False, "devices": DEVICE},
            "gA-u3": {"push_consent": True},
        },
    )
    spring = campaign()
    summary = await runner.run(spring, "r1")
    expected = {"targeted": 4, "sent": 2, "suppressed:no_consent": 1, "suppressed:no_device": 1}
    assert summary.status == "done" and not summary.resumed
    assert summary.counts == expected and summary.messages == 2
    assert await run_stats(aredis, keys, "spring", "r1") == expected
    assert await run_stats(aredis, keys, "spring", None) == expected
    assert sorted(await outbox_ids(aredis, keys)) == sorted(
        [mid("spring", "r1", "gA-u1"), mid("spring", "r1", "gB-u1")]
    )
    a_message = await message_of(aredis, keys, mid("spring", "r1", "gA-u1"))
    b_message = await message_of(aredis, keys, mid("spring", "r1", "gB-u1"))
    assert set(items(a_message)) <= items_of("A") and set(items(b_message)) <= items_of("B")
    assert len(items(a_message)) == 3
    assert a_message["title"] == "For you" and a_message["body"] == f"Item {items(a_message)[0]} and more"
    assert float(a_message["due"]) == NOW.timestamp() and a_message["status"] == "queued"
    assert not await aredis.exists(keys.message(mid("spring", "r1", "gA-u2")))
    # Bookkeeping: the run is listed and done; the user's push records hold the push and its items.
    assert await aredis.zscore(keys.campaign_runs("spring"), "r1") == NOW.timestamp()
    run: dict[str, str] = await aredis.hgetall(keys.campaign_run("spring", "r1"))  # type: ignore[assignment]
    assert run["status"] == "done" and float(run["finished"]) == NOW.timestamp()
    assert not await aredis.exists(keys.campaign_run_lock("spring", "r1"))
    assert await aredis.zscore(keys.user_pushes("gA-u1"), "spring|r1") == NOW.timestamp()
    pushed: dict[str, str] = await aredis.hgetall(keys.user_pushed_items("gA-u1"))  # type: ignore[assignment]
    assert set(pushed) == set(items(a_message))
    assert json.loads(next(iter(pushed.values())))["m"] == mid("spring", "r1", "gA-u1")
    assert 0 < await aredis.ttl(keys.user_pushes("gA-u1")) <= 7 * 86_400
    assert await aredis.ttl(keys.user_pushed_items("gA-u1")) > 13 * 86_400
    # Running the finished run again changes nothing.
    again = await runner.run(spring, "r1")
    assert again.status == "done" and again.resumed and again.counts == {} and again.messages == 0
    assert len(await outbox_ids(aredis, keys)) == 2


async def test_only_the_segment_is_targeted(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    await put_profiles(
        store,
        {
            "gA-u1": {**REACHABLE, "attributes": {"tier": "gold"}},
            "gA-u2": {**REACHABLE, "attributes": {"tier": "silver"}},
            "gA-u3": {**REACHABLE, "attributes": {}},
        },
    )
    gold = campaign(segment={"attributes": [{"field": "tier", "op": "eq", "value": "gold"}]})
    summary = await runner.run(gold, "r1")
    assert summary.counts == {"targeted": 1, "sent": 1}
    assert await outbox_ids(aredis, keys) == [mid("spring", "r1", "gA-u1")]


async def test_a_paused_campaign_does_not_run(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    await put_profiles(store, {"gA-u1": REACHABLE})
    paused = campaign().model_copy(update={"status": "paused"})
    summary = await runner.run(paused, "r1")
    assert summary.status == "paused" and summary.messages == 0
    assert not await aredis.exists(keys.campaign_run("spring", "r1"), keys.outbox())


async def test_without_a_model_a_run_fails_clearly(
    aredis: aioredis.Redis, shop_settings: Settings, clock: ManualClock, tmp_path: Any
) -> None:
    empty = ModelHolder(Registry(tmp_path / "no-models"), shop_settings)
    runner = CampaignRunner(aredis, shop_settings, empty, clock=clock)
    with pytest.raises(ModelNotLoaded) as raised:
        await runner.run(campaign(), "r1")
    assert raised.value.status == 503 and "no recommendation model" in raised.value.detail


# --- rules end to end -------------------------------------------------------------------------------


async def test_min_gap_and_daily_and_weekly_caps(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys, clock: ManualClock
) -> None:
    await put_profiles(store, {"gA-u1": REACHABLE})
    off = {"quiet_start": "00:00", "quiet_end": "00:00", "item_repeat_days": 0}
    gap = campaign("gap", rules={**off, "min_gap_hours": 24, "max_per_day": 0, "max_per_week": 0})
    daily = campaign("daily", rules={**off, "min_gap_hours": 0, "max_per_day": 2, "max_per_week": 0})
    weekly = campaign("weekly", rules={**off, "min_gap_hours": 0, "max_per_day": 0, "max_per_week": 3})
    await save(aredis, keys, gap, daily, weekly)
    assert (await runner.run(gap, "r1")).counts == {"targeted": 1, "sent": 1}
    clock.now = NOW + timedelta(hours=1)
    assert (await runner.run(gap, "r2")).counts == {"targeted": 1, "suppressed:min_gap": 1}
    assert (await runner.run(daily, "r1")).counts == {"targeted": 1, "sent": 1}  # other campaigns: no gap
    assert (await runner.run(daily, "r2")).counts == {"targeted": 1, "suppressed:daily_cap": 1}
    clock.now = NOW + timedelta(days=1)  # a new day: the daily cap allows again, the week is full
    assert (await runner.run(daily, "r3")).counts == {"targeted": 1, "sent": 1}
    assert (await runner.run(weekly, "r1")).counts == {"targeted": 1, "suppressed:weekly_cap": 1}
    clock.now = NOW + timedelta(days=1, hours=1)
    assert (await runner.run(gap, "r3")).counts == {"targeted": 1, "sent": 1}  # the gap has passed
    pushes = await aredis.zrange(keys.user_pushes("gA-u1"), 0, -1)
    assert sorted(pushes) == ["daily|r1", "daily|r3", "gap|r1", "gap|r3"]


async def test_quiet_hours_defer_to_the_users_morning(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys, clock: ManualClock
) -> None:
    await put_profiles(
        store,
        {
            "gA-u1": {**REACHABLE, "timezone": "Europe/Berlin"},
            "gA-u2": {**REACHABLE, "timezone": "America/New_York"},
        },
    )
    clock.now = datetime(2024, 2, 1, 21, 30, tzinfo=UTC)  # 22:30 in Berlin, 16:30 in New York
    night = campaign(rules={"quiet_start": "21:00", "quiet_end": "08:00", "min_gap_hours": 0})
    summary = await runner.run(night, "r1")
    assert summary.counts == {"targeted": 2, "sent": 2, "deferred": 1}
    berlin_morning = datetime(2024, 2, 2, 7, 0, tzinfo=UTC).timestamp()
    assert await delayed(aredis, keys) == {mid("spring", "r1", "gA-u1"): berlin_morning}
    assert await outbox_ids(aredis, keys) == [mid("spring", "r1", "gA-u2")]
    assert await aredis.zscore(keys.user_pushes("gA-u1"), "spring|r1") == berlin_morning


async def test_no_item_is_pushed_twice_within_the_repeat_window(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys, clock: ManualClock
) -> None:
    await put_profiles(store, {"gA-u1": REACHABLE})
    repeat = campaign(
        rules={"min_gap_hours": 0, "item_repeat_days": 14, "quiet_start": "00:00", "quiet_end": "00:00"}
    )
    await runner.run(repeat, "r1")
    clock.now = NOW + timedelta(days=13)
    await runner.run(repeat, "r2")
    first = items(await message_of(aredis, keys, mid("spring", "r1", "gA-u1")))
    second = items(await message_of(aredis, keys, mid("spring", "r2", "gA-u1")))
    assert len(first) == len(second) == 3 and not set(first) & set(second)
    # Past the window the best items come back: the exclusion was the no-repeat rule.
    clock.now = NOW + timedelta(days=14)
    await runner.run(repeat, "r3")
    third = items(await message_of(aredis, keys, mid("spring", "r3", "gA-u1")))
    assert third == first


async def test_local_time_campaign_messages_wait_for_each_users_local_time(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    zones = {
        "gA-u1": "Europe/Berlin",  # 13:00 now: tomorrow 09:00 CET
        "gA-u2": "America/New_York",  # 07:00 now: today 09:00 EST
        "gA-u3": "Pacific/Kiritimati",  # already 2024-02-02 02:00: 09:00 that day
        "gA-u4": "Pacific/Pago_Pago",  # still 2024-02-01 01:00: 09:00 that day
        "gA-u5": "Not/A_Zone",  # falls back to the default, UTC
    }
    await put_profiles(store, {user: {**REACHABLE, "timezone": zone} for user, zone in zones.items()})
    morning = campaign(schedule={"kind": "local_time", "at": "09:00"})
    summary = await runner.run(morning, "r1")
    assert summary.counts == {"targeted": 5, "sent": 5}
    expected = {
        "gA-u1": datetime(2024, 2, 2, 8, 0, tzinfo=UTC),
        "gA-u2": datetime(2024, 2, 1, 14, 0, tzinfo=UTC),
        "gA-u3": datetime(2024, 2, 1, 19, 0, tzinfo=UTC),
        "gA-u4": datetime(2024, 2, 1, 20, 0, tzinfo=UTC),
        "gA-u5": datetime(2024, 2, 2, 9, 0, tzinfo=UTC),
    }
    assert await delayed(aredis, keys) == {
        mid("spring", "r1", u): due.timestamp() for u, due in expected.items()
    }
    assert await outbox_ids(aredis, keys) == []


async def test_a_template_failing_for_a_user_is_counted(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    await put_profiles(
        store,
        {
            "gA-u1": {**REACHABLE, "attributes": {"first_name": "Ann"}},
            "gA-u2": {**REACHABLE, "attributes": {}},
        },
    )
    greeting = campaign(content={"title": "Hi {{ user.first_name }}"})
    summary = await runner.run(greeting, "r1")
    assert summary.counts == {"targeted": 2, "sent": 1, "suppressed:template_error": 1}
    assert (await message_of(aredis, keys, mid("spring", "r1", "gA-u1")))["title"] == "Hi Ann"
    assert not await aredis.exists(keys.message(mid("spring", "r1", "gA-u2")))


async def test_a_text_too_long_or_refused_for_a_users_data_is_a_template_error(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    """The save-time check cannot see every user's data: `'*' * user.stars` for a user with a
    billion stars must be refused, and a text past `MAX_TEXT_CHARS` not sent, for that user only."""
    await put_profiles(
        store,
        {
            "gA-u1": {**REACHABLE, "attributes": {"stars": 3, "bio": "short"}},
            "gA-u2": {**REACHABLE, "attributes": {"stars": 10**9, "bio": "short"}},
            "gA-u3": {**REACHABLE, "attributes": {"stars": 3, "bio": "b" * (MAX_TEXT_CHARS + 1)}},
        },
    )
    rating = campaign(content={"title": "{{ '*' * user.stars }}", "body": "{{ user.bio }}"})
    summary = await runner.run(rating, "r1")
    assert summary.counts == {"targeted": 3, "sent": 1, "suppressed:template_error": 2}
    assert (await message_of(aredis, keys, mid("spring", "r1", "gA-u1")))["title"] == "***"


# --- sampling and control ---------------------------------------------------------------------------


async def test_a_local_time_campaign_on_some_weekdays_writes_each_push_once(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys, clock: ManualClock
) -> None:
    """Prepared every day, it writes a user's Saturday push only in the preparation within a day
    of it: each earlier one used to write another message for the same Saturday."""
    await put_profiles(store, {"gA-u1": {**REACHABLE, "timezone": "UTC"}})
    weekend = campaign(schedule={"kind": "local_time", "at": "09:00", "weekdays": ["sat"]})
    assert NOW.strftime("%a") == "Thu"
    counts = []
    for day in range(3):  # Thursday, Friday and Saturday at noon
        clock.now = NOW + timedelta(days=day)
        counts.append((await runner.run(weekend, f"d{day}")).counts)
    assert counts == [{}, {"targeted": 1, "sent": 1}, {}]
    saturday_morning = datetime(2024, 2, 3, 9, 0, tzinfo=UTC).timestamp()
    assert await delayed(aredis, keys) == {mid("spring", "d1", "gA-u1"): saturday_morning}


async def test_control_group_is_stable_across_runs_and_never_sent(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys, clock: ManualClock
) -> None:
    users = [f"c-u{n}" for n in range(2000)]
    await put_profiles(store, dict.fromkeys(users, REACHABLE))
    held_out = campaign(segment={"control_percent": 10})
    first = await runner.run(held_out, "r1")
    clock.now = NOW + timedelta(days=1)
    second = await runner.run(held_out, "r2")
    for summary in (first, second):
        assert summary.counts["targeted"] + summary.counts["control:targeted"] == 2000
        assert 150 <= summary.counts["control:targeted"] <= 250
    control = await control_users(aredis, keys, "r1", users)
    again = await control_users(aredis, keys, "r2", users)
    assert control == again and len(control) == first.counts["control:targeted"]
    assert control == {u for u in users if segments.in_control(held_out.segment, "spring", u)}
    # Control messages are recorded with their items, never queued, and leave no push records.
    sample = await message_of(aredis, keys, mid("spring", "r1", next(iter(control))))
    assert sample["status"] == "control" and len(items(sample)) == 3
    assert len(await outbox_ids(aredis, keys)) == 2 * 2000 - len(control) - len(again)
    assert not await aredis.exists(*(keys.user_pushes(u) for u in control))


async def test_a_control_groups_items_block_no_push_and_replace_no_push_record(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys, clock: ManualClock
) -> None:
    """Control users never saw their items: "never the same item twice" is about pushes sent."""
    repeat = {"min_gap_hours": 0, "item_repeat_days": 14, "quiet_start": "00:00", "quiet_end": "00:00"}
    held_out = campaign(segment={"control_percent": 50}, rules=repeat)
    user = next(
        u for u in (f"h-u{n}" for n in range(100)) if segments.in_control(held_out.segment, "spring", u)
    )
    await put_profiles(store, {user: REACHABLE})
    await runner.run(held_out, "r1")
    would_have_got = items(await message_of(aredis, keys, mid("spring", "r1", user)))
    await runner.run(campaign("summer", rules=repeat), "r1")
    pushed = items(await message_of(aredis, keys, mid("summer", "r1", user)))
    assert pushed == would_have_got
    clock.now = NOW + timedelta(hours=1)
    no_repeat_rule = campaign(segment={"control_percent": 50}, rules={**repeat, "item_repeat_days": 0})
    await runner.run(no_repeat_rule, "r2")  # the control group again, would have got the same items
    assert items(await message_of(aredis, keys, mid("spring", "r2", user))) == pushed
    records = await aredis.hmget(keys.user_pushed_items(user), pushed)
    assert [json.loads(record)["m"] for record in records] == [mid("summer", "r1", user)] * len(pushed)


async def test_sample_percent_takes_a_new_sample_each_run(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys, clock: ManualClock
) -> None:
    users = [f"s-u{n}" for n in range(400)]
    await put_profiles(store, dict.fromkeys(users, REACHABLE))
    half = campaign(segment={"sample_percent": 50})
    first = await runner.run(half, "r1")
    second = await runner.run(half, "r2")
    assert 150 <= first.counts["targeted"] <= 250 and 150 <= second.counts["targeted"] <= 250
    one = {u for u in users if await aredis.exists(keys.message(mid("spring", "r1", u)))}
    two = {u for u in users if await aredis.exists(keys.message(mid("spring", "r2", u)))}
    assert len(one) == first.counts["sent"] and one != two


# --- sources ---------------------------------------------------------------------------------------


async def test_triggered_run_leads_with_the_trigger_item_for_the_named_users(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    await put_profiles(store, {"gA-u1": REACHABLE, "gA-u2": REACHABLE, "gA-u3": REACHABLE, "gA-u4": {}})
    await store.forget_user("gA-u4")
    abandoned = campaign(
        trigger={"event": "add_to_cart", "delay_minutes": 30, "cancel_on": ["purchase"]},
        content={"source": "trigger_item", "body": "Still want {{ item.title }}?"},
    )
    carted = RecentEvent("b5", "add_to_cart", unix_micros(NOW - timedelta(minutes=30)))
    summary = await runner.run(
        abandoned, "t1", users=["gA-u1", "gA-u2", "gA-u4"], trigger_events={"gA-u1": carted}
    )
    assert summary.counts == {"targeted": 2, "sent": 2, "suppressed:forgotten": 1}
    first = await message_of(aredis, keys, mid("spring", "t1", "gA-u1"))
    assert items(first)[0] == "b5" and first["body"] == "Still want Item b5?"
    assert set(items(first)[1:]) <= items_of("B")  # similar to the carted item
    no_event = await message_of(aredis, keys, mid("spring", "t1", "gA-u2"))
    assert set(items(no_event)) <= items_of("A")  # falls back to personalized
    assert not await aredis.exists(keys.message(mid("spring", "t1", "gA-u3")))  # not named


async def test_a_trigger_item_push_is_suppressed_when_the_triggering_item_cannot_lead(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    """ "{{ item.title }} is in your cart" must never name another item: a carted item pushed
    within the no-repeat window (or dismissed) suppresses the reminder."""
    await put_profiles(store, {"gA-u1": REACHABLE, "gA-u2": REACHABLE})
    await aredis.hset(
        keys.user_pushed_items("gA-u1"), "b5", json.dumps({"m": "earlier", "t": NOW.timestamp()})
    )
    await store.dismiss("gA-u2", "b5")
    reminder = campaign(
        trigger={"event": "add_to_cart", "delay_minutes": 30, "cancel_on": ["purchase"]},
        content={"source": "trigger_item", "body": "{{ item.title }} is in your cart"},
        rules={"min_gap_hours": 0, "item_repeat_days": 14, "quiet_start": "00:00", "quiet_end": "00:00"},
    )
    carted = RecentEvent("b5", "add_to_cart", unix_micros(NOW - timedelta(minutes=30)))
    triggers = {"gA-u1": carted, "gA-u2": carted}
    summary = await runner.run(reminder, "t1", users=["gA-u1", "gA-u2"], trigger_events=triggers)
    assert summary.counts == {"targeted": 2, "suppressed:trigger_item_excluded": 2}
    assert not await aredis.exists(*(keys.message(mid("spring", "t1", u)) for u in ("gA-u1", "gA-u2")))


async def test_a_day_run_takes_batch_after_batch_of_users_and_messages_each_once(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    await put_profiles(store, {"gA-u1": REACHABLE, "gA-u2": REACHABLE, "gA-u3": {"push_consent": False}})
    abandoned = campaign(trigger={"event": "add_to_cart", "delay_minutes": 30})
    first = await runner.run(abandoned, "t20240201", users=["gA-u1"])
    second = await runner.run(abandoned, "t20240201", users=["gA-u1", "gA-u2", "gA-u3"])
    assert first.counts == {"targeted": 1, "sent": 1} and first.messages == 1
    assert second.counts == {"targeted": 2, "sent": 1, "suppressed:no_consent": 1} and second.messages == 1
    assert sorted(await outbox_ids(aredis, keys)) == sorted(
        mid("spring", "t20240201", u) for u in ("gA-u1", "gA-u2")
    )
    assert await run_stats(aredis, keys, "spring", "t20240201") == {
        "targeted": 3,
        "sent": 2,
        "suppressed:no_consent": 1,
    }
    # Resuming the finished day run (no users given) does nothing.
    assert (await runner.run(abandoned, "t20240201")).counts == {}


async def test_trending_and_similar_to_last_viewed_and_category(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    await put_profiles(store, {"gA-u1": REACHABLE, "gA-u2": REACHABLE})
    await record(store, [(f"x{n}", "b3", "purchase", NOW - timedelta(minutes=n)) for n in range(5)])
    await record(store, [("gA-u2", "b7", "view", NOW - timedelta(minutes=5))])
    trending = campaign("hot", content={"source": "trending"})
    similar = campaign("like", content={"source": "similar_to_last_viewed"})
    in_b = campaign("bee", content={"category": "B"})
    for each in (trending, similar, in_b):
        await runner.run(each, "r1")
    assert items(await message_of(aredis, keys, mid("hot", "r1", "gA-u1")))[0] == "b3"
    assert set(items(await message_of(aredis, keys, mid("like", "r1", "gA-u2")))) <= items_of("B")
    assert set(items(await message_of(aredis, keys, mid("like", "r1", "gA-u1")))) <= items_of("A")  # no views
    assert set(items(await message_of(aredis, keys, mid("bee", "r1", "gA-u1")))) <= items_of("B")


# --- preview and audience --------------------------------------------------------------------------


async def test_preview_is_what_the_run_then_writes(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys, clock: ManualClock
) -> None:
    await put_profiles(
        store,
        {
            "gA-u1": {**REACHABLE, "timezone": "Europe/Berlin", "attributes": {"tier": "gold"}},
            "gA-u2": {"push_consent": False, "devices": DEVICE, "attributes": {"tier": "gold"}},
            "gA-u3": {**REACHABLE, "attributes": {"tier": "silver"}},
        },
    )
    clock.now = datetime(2024, 2, 1, 21, 30, tzinfo=UTC)
    gold = campaign(
        segment={"attributes": [{"field": "tier", "op": "eq", "value": "gold"}]},
        rules={"quiet_start": "21:00", "quiet_end": "08:00"},
    )
    before = await prefixed_keys(aredis, keys)
    preview = await runner.preview(gold, "gA-u1", run_id="r1")
    assert await prefixed_keys(aredis, keys) == before  # a preview writes nothing
    assert preview.group == "treatment" and preview.reason is None and preview.deferred
    assert preview.due_local == "2024-02-02T08:00:00+01:00"
    assert [(check.name, check.passed) for check in preview.checks] == [('attribute tier eq "gold"', True)]
    assert preview.strategy == "personalized" and preview.model_version
    await runner.run(gold, "r1")
    written = await message_of(aredis, keys, mid("spring", "r1", "gA-u1"))
    assert preview.title == written["title"] and preview.body == written["body"]
    assert [item.item_id for item in preview.items] == items(written)
    assert preview.items[0].title == f"Item {items(written)[0]}" and preview.items[0].price is not None
    assert preview.due is not None and datetime.fromisoformat(preview.due).timestamp() == float(
        written["due"]
    )
    no_consent = await runner.preview(gold, "gA-u2", run_id="r9")
    assert (
        no_consent.group == "treatment" and no_consent.reason == stats.NO_CONSENT and no_consent.title is None
    )
    outside = await runner.preview(gold, "gA-u3")
    assert outside.group == "not_in_segment" and not outside.checks[0].passed
    stranger = await runner.preview(gold, "nobody")
    assert stranger.group == "not_in_segment" and stranger.checks[0].name == "profile"


async def test_audience_counts(runner: CampaignRunner, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    gold: dict[str, Any] = {"attributes": {"tier": "gold"}}
    profiles: dict[str, dict[str, Any]] = {f"r{n}": {**gold, **REACHABLE} for n in range(4)}
    profiles["consent-only"] = {**gold, "push_consent": True}
    profiles["device-only"] = {**gold, "devices": DEVICE}
    profiles.update({f"s{n}": {"attributes": {"tier": "silver"}, **REACHABLE} for n in range(4)})
    await put_profiles(store, profiles)
    segment = Segment.model_validate(
        {
            "attributes": [{"field": "tier", "op": "eq", "value": "gold"}],
            "sample_percent": 50,
            "control_percent": 50,
        }
    )
    audience = await runner.audience(segment, "c1")
    in_control = sum(
        segments.in_control(segment, "c1", u)
        for u, p in profiles.items()
        if p["attributes"]["tier"] == "gold"
    )
    assert (audience.population, audience.examined, audience.matching) == (10, 10, 6)
    assert (audience.with_consent, audience.with_device, audience.reachable) == (5, 5, 4)
    assert audience.sampled == 3 and audience.control == round(in_control * 0.5) and not audience.estimated
    # Past the exact limit, a random sample is scaled up to the population.
    monkeypatch.setattr(runner_module, "EXACT_AUDIENCE_MAX", 5)
    monkeypatch.setattr(runner_module, "AUDIENCE_SAMPLE", 4)
    everyone = await runner.audience(Segment())
    assert everyone.estimated and everyone.examined == 4
    assert everyone.population == everyone.matching == 10


# --- concurrency and resuming ----------------------------------------------------------------------


async def test_a_second_execution_of_a_running_run_is_refused(
    runner: CampaignRunner, store: Store, aredis: aioredis.Redis, keys: Keys
) -> None:
    await put_profiles(store, {"gA-u1": REACHABLE})
    await aredis.set(keys.campaign_run_lock("spring", "r1"), "another-process")
    with pytest.raises(RunConflict) as raised:
        await runner.run(campaign(), "r1")
    assert raised.value.status == 409
    assert await aredis.get(keys.campaign_run_lock("spring", "r1")) == "another-process"


class SixUsers(NamedTuple):
    """Settings with batches of 2, six reachable users and the saved "spring" campaign."""

    settings: Settings
    users: list[str]
    spring: Campaign


@pytest.fixture
async def six_users(aredis: aioredis.Redis, shop_settings: Settings, store: Store, keys: Keys) -> SixUsers:
    settings = shop_settings.model_copy(
        update={"notifier": shop_settings.notifier.model_copy(update={"batch_size": 2})}
    )
    users = [f"gA-u{n}" for n in range(1, 7)]
    await put_profiles(store, dict.fromkeys(users, REACHABLE))
    spring = campaign()
    await save(aredis, keys, spring)
    return SixUsers(settings, users, spring)


def steal_lease_at_write(
    runner: CampaignRunner, client: redis.Redis, lock: str, write: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Let another process take the run's lease (as after it lapsed) just before the runner's
    `write`-th batch write reaches Redis."""
    apply, calls = runner._apply, 0

    async def stealing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == write:
            client.set(lock, "another-process")
        return await apply(*args, **kwargs)

    monkeypatch.setattr(runner, "_apply", stealing)


@pytest.mark.parametrize("lease", ["run", "writer"])
async def test_a_run_that_lost_its_lease_stops_and_is_resumed_later(
    lease: str,
    aredis: aioredis.Redis,
    six_users: SixUsers,
    models: ModelHolder,
    redis_client: redis.Redis,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, users, spring = six_users
    lock = keys.campaign_run_lock("spring", "r1") if lease == "run" else keys.campaign_writer()
    losing = CampaignRunner(aredis, settings, models, clock=ManualClock(NOW))
    steal_lease_at_write(losing, redis_client, lock, 2, monkeypatch)
    with pytest.raises(RunConflict):
        await losing.run(spring, "r1", users=users)
    # The first batch only: the second found the lease gone, and the third, decided meanwhile,
    # was never sent.
    assert len(await outbox_ids(aredis, keys)) == 2
    runner = CampaignRunner(aredis, settings, models, clock=ManualClock(NOW))
    await aredis.delete(lock)  # until the other process's lease lapses
    assert await runner.unfinished_runs() == [("spring", "r1")]
    resumed = await runner.run(spring, "r1")  # the stored user list, from the stored position
    assert resumed.resumed and resumed.counts == {"targeted": 4, "sent": 4}
    assert sorted(await outbox_ids(aredis, keys)) == sorted(mid("spring", "r1", u) for u in users)
    assert await run_stats(aredis, keys, "spring", "r1") == {"targeted": 6, "sent": 6}
    assert await runner.unfinished_runs() == []


async def test_a_run_that_fails_while_a_batch_is_written_resumes_with_each_user_once(
    aredis: aioredis.Redis,
    six_users: SixUsers,
    models: ModelHolder,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, users, spring = six_users
    decide, batches = runner_module.decide, 0

    def failing_second(*args: Any, **kwargs: Any) -> Any:
        nonlocal batches
        batches += 1
        if batches == 2:  # while the first batch's write is under way
            raise RuntimeError("the model broke")
        return decide(*args, **kwargs)

    monkeypatch.setattr(runner_module, "decide", failing_second)
    runner = CampaignRunner(aredis, settings, models, clock=ManualClock(NOW))
    with pytest.raises(RuntimeError, match="the model broke"):  # that error, not the write's fate
        await runner.run(spring, "r1", users=users)
    assert not await aredis.exists(keys.campaign_run_lock("spring", "r1"))  # nothing still writes
    written = len(await outbox_ids(aredis, keys))
    assert written in (0, 2)  # the first batch whole or not at all
    assert int(await aredis.hget(keys.campaign_run("spring", "r1"), "position") or 0) == written
    monkeypatch.setattr(runner_module, "decide", decide)
    resumed = await runner.run(spring, "r1")
    assert resumed.resumed and resumed.counts == {"targeted": 6 - written, "sent": 6 - written}
    assert sorted(await outbox_ids(aredis, keys)) == sorted(mid("spring", "r1", u) for u in users)
    assert await run_stats(aredis, keys, "spring", "r1") == {"targeted": 6, "sent": 6}


async def test_batches_are_decided_side_by_side_each_searching_on_one_core(
    aredis: aioredis.Redis,
    six_users: SixUsers,
    models: ModelHolder,
    keys: Keys,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings, users, spring = six_users
    decide = runner_module.decide
    # The first two batches meet here: were they decided one after the other, the first would
    # wait in vain and the barrier break.
    both = threading.Barrier(runner_module.DECIDING_AT_ONCE, timeout=10)
    search_threads: list[int] = []

    def meeting(*args: Any, **kwargs: Any) -> Any:
        search_threads.append(faiss.omp_get_max_threads())
        if len(search_threads) <= runner_module.DECIDING_AT_ONCE:
            both.wait()
        return decide(*args, **kwargs)

    monkeypatch.setattr(runner_module, "decide", meeting)
    before = faiss.omp_get_max_threads()
    summary = await CampaignRunner(aredis, settings, models, clock=ManualClock(NOW)).run(
        spring, "r1", users=users
    )
    assert search_threads == [1, 1, 1]  # three batches, each searched on one core
    assert faiss.omp_get_max_threads() == before  # the caller's searches keep every core
    assert summary.counts == {"targeted": 6, "sent": 6}
    assert sorted(await outbox_ids(aredis, keys)) == sorted(mid("spring", "r1", u) for u in users)
    position = await aredis.hget(keys.campaign_run("spring", "r1"), "position")
    assert position == "6"  # batches written in order: the checkpoint ends after the last


@pytest.mark.parametrize("processes", [1, 2])
async def test_runs_started_together_share_a_daily_cap(
    processes: int,
    aredis: aioredis.Redis,
    shop_settings: Settings,
    models: ModelHolder,
    store: Store,
    keys: Keys,
) -> None:
    users = [f"gA-u{n}" for n in range(1, 5)]
    await put_profiles(store, dict.fromkeys(users, REACHABLE))
    once_a_day = {"max_per_day": 1, "quiet_start": "00:00", "quiet_end": "00:00", "item_repeat_days": 0}
    first, second = campaign("first", rules=once_a_day), campaign("second", rules=once_a_day)
    await save(aredis, keys, first, second)
    waits: list[float] = []

    async def poll_again(seconds: float) -> None:  # no time passes; the other run gets its turn
        waits.append(seconds)
        await asyncio.sleep(0)

    runners = [  # one per process: separate runners have nothing but Redis in common
        CampaignRunner(aredis, shop_settings, models, clock=ManualClock(NOW), sleep=poll_again)
        for _ in range(processes)
    ]
    summaries = await asyncio.gather(runners[0].run(first, "r1"), runners[-1].run(second, "r1"))
    assert bool(waits) == (processes == 2)  # a process's runs queue on a lock; processes poll the lease
    assert sum(summary.counts.get("sent", 0) for summary in summaries) == len(users)
    assert sum(summary.counts.get("suppressed:daily_cap", 0) for summary in summaries) == len(users)
    for user in users:
        assert await aredis.zcard(keys.user_pushes(user)) == 1
    assert not await aredis.exists(keys.campaign_writer())


async def test_a_run_waits_for_another_processes_run_before_it_starts(
    aredis: aioredis.Redis, shop_settings: Settings, models: ModelHolder, store: Store, keys: Keys
) -> None:
    await put_profiles(store, {"gA-u1": REACHABLE})
    spring = campaign()
    await save(aredis, keys, spring)
    await aredis.set(keys.campaign_writer(), "other/r9/token")
    seen_while_waiting: list[bool] = []

    async def other_run_finishes(_: float) -> None:
        seen_while_waiting.append(bool(await aredis.exists(keys.campaign_run("spring", "r1"))))
        await aredis.delete(keys.campaign_writer())

    runner = CampaignRunner(aredis, shop_settings, models, clock=ManualClock(NOW), sleep=other_run_finishes)
    summary = await runner.run(spring, "r1")
    assert seen_while_waiting == [False]  # it waited once, before starting anything
    assert summary.counts == {"targeted": 1, "sent": 1}
