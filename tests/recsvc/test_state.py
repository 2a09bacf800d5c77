"""The async store against a real Redis: events, user state, profiles, forgetting, catalog, trending."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from recsvc.config import Settings
from recsvc.engine import RecentEvent
from recsvc.errors import InputError
from recsvc.keys import Keys, history_ttl_seconds
from recsvc.redis_conn import RedisUnavailable, connect_async
from recsvc.state import (
    TRENDING_RESCALE_AFTER_HALF_LIVES,
    Event,
    Store,
    UserState,
    unix_micros,
)

pytestmark = pytest.mark.anyio

START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio runs on asyncio only


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
async def store(redis_settings: Settings, clock: ManualClock) -> AsyncIterator[Store]:
    client = connect_async(redis_settings)
    yield Store(client, redis_settings, clock=clock)
    await client.aclose()


@pytest.fixture
def keys(redis_settings: Settings) -> Keys:
    return Keys(redis_settings.redis.prefix)


class Monitor:
    """The commands Redis executed while the test ran something: proof of transactions and round trips."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    async def commands(self, action: Callable[[], Awaitable[Any]]) -> list[str]:
        """Commands `action` sent (ours by key prefix, and MULTI/EXEC) in order; not scripts' own calls."""
        with self.client.monitor() as monitor:
            await action()
            self.client.ping()  # a marker: everything before it belongs to the action
            seen: list[str] = []
            while True:
                entry = monitor.next_command()
                command = entry["command"]
                if entry["client_type"] == "lua":
                    continue
                if command == "PING":
                    return seen
                if command in ("MULTI", "EXEC") or self.prefix in command:
                    seen.append(command)


@pytest.fixture
def monitor(redis_client: redis.Redis, redis_settings: Settings) -> Iterator[Monitor]:
    yield Monitor(redis_client, redis_settings.redis.prefix)


def view(user: str, item: str, at: datetime, **fields: Any) -> Event:
    return Event(user, item, fields.pop("type", "view"), at, **fields)


# --- events ------------------------------------------------------------------------------------


async def test_record_events_writes_stream_history_and_trending_in_one_transaction(
    store: Store, keys: Keys, redis_client: redis.Redis, monitor: Monitor, redis_settings: Settings
) -> None:
    events = [
        view("u1", "i1", START - timedelta(minutes=2)),
        Event("u1", "i2", "rate", START - timedelta(minutes=1), 4.5),
        Event("u2", "i1", "purchase", START),
    ]

    async def record() -> None:
        ids.extend(await store.record_events(events, ["shoes", None, "shoes"]))

    ids: list[str] = []
    commands = await monitor.commands(record)

    verbs = [command.split()[0] for command in commands]
    writes = [verb for verb in verbs if verb not in ("WATCH", "GET", "UNWATCH")]
    assert writes[0] == "MULTI" and writes[-1] == "EXEC" and writes.count("MULTI") == 1
    assert {"XADD", "LPUSH", "LTRIM", "EXPIRE", "EVAL"} <= set(writes)
    stream = redis_client.xrange(keys.events())
    assert [entry_id for entry_id, _ in stream] == ids
    assert [fields for _, fields in stream] == [
        {"user_id": "u1", "item_id": "i1", "type": "view", "ts": str(unix_micros(events[0].ts)), "value": ""},
        {
            "user_id": "u1",
            "item_id": "i2",
            "type": "rate",
            "ts": str(unix_micros(events[1].ts)),
            "value": "4.5",
        },
        {"user_id": "u2", "item_id": "i1", "type": "purchase", "ts": str(unix_micros(START)), "value": ""},
    ]
    state = await store.user_state("u1")
    assert state.recent == [
        RecentEvent("i2", "rate", unix_micros(events[1].ts), 4.5),
        RecentEvent("i1", "view", unix_micros(events[0].ts), None),
    ]
    ttl = redis_client.ttl(keys.history("u1"))
    assert 0 < ttl <= history_ttl_seconds(redis_settings.serving)
    trending = dict(await store.trending(10))
    # i1: a view two minutes ago (weight 1) and a purchase now (weight 8); i2: a rating (weight 1).
    assert trending["i1"] == pytest.approx(8 + 2 ** (-2 / 60 / 24), rel=1e-12)
    assert trending["i2"] == pytest.approx(2 ** (-1 / 60 / 24), rel=1e-12)
    assert [item for item, _ in await store.trending(10, category="shoes")] == ["i1"]


@pytest.fixture
async def short_history(redis_settings: Settings, clock: ManualClock) -> AsyncIterator[Store]:
    """A store whose users' histories keep their 3 newest events."""
    serving = redis_settings.serving.model_copy(update={"history_max": 3})
    settings = redis_settings.model_copy(update={"serving": serving})
    client = connect_async(settings)
    try:
        yield Store(client, settings, clock=clock)
    finally:
        await client.aclose()


async def test_history_is_capped_newest_first_and_its_ttl_refreshed(
    short_history: Store, keys: Keys, redis_client: redis.Redis
) -> None:
    await short_history.record_events(
        [view("u", f"i{n}", START + timedelta(seconds=n)) for n in range(5)], [None] * 5
    )
    redis_client.expire(keys.history("u"), 10)
    await short_history.record_events([view("u", "i5", START + timedelta(seconds=5))], [None])
    state = await short_history.user_state("u")
    assert [event.item_id for event in state.recent] == ["i5", "i4", "i3"]
    assert redis_client.ttl(keys.history("u")) > 10


async def test_items_of_excluded_types_stay_excluded_after_the_history_is_trimmed(
    short_history: Store,
) -> None:
    bought = view("u", "bought", START, type="purchase")
    dismissed = view("u", "dismissed", START, type="dismiss")
    await short_history.record_events([bought, dismissed, view("u", "viewed", START)], [None] * 3)
    await short_history.record_events([view("u", f"i{n}", START) for n in range(5)], [None] * 5)
    state = await short_history.user_state("u")
    assert "bought" not in {event.item_id for event in state.recent}
    assert state.dismissed == {"bought", "dismissed"}  # views are not excluded


async def test_record_events_rejects_bad_input_before_writing(
    store: Store, redis_client: redis.Redis, keys: Keys
) -> None:
    with pytest.raises(InputError, match="unknown event type 'teleport'"):
        await store.record_events([view("u", "i", START, type="teleport")], [None])
    with pytest.raises(InputError, match="no timezone"):
        await store.record_events([view("u", "i", datetime(2025, 1, 1))], [None])
    with pytest.raises(InputError, match="categories"):
        await store.record_events([view("u", "i", START)], [])
    assert redis_client.exists(keys.events()) == 0
    assert await store.record_events([], []) == []


async def test_an_unreachable_redis_is_reported_as_unavailable(
    redis_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    unreachable = redis_settings.model_copy(
        update={"redis": redis_settings.redis.model_copy(update={"url": "redis://127.0.0.1:9/0"})}
    )
    client = connect_async(unreachable)
    try:
        store = Store(client, unreachable)
        with pytest.raises(RedisUnavailable) as caught:
            await store.user_state("u")
        assert caught.value.status == 503 and caught.value.fields["operation"] == "user_state"
        assert await store.ping() is False
    finally:
        await client.aclose()


# --- per user ----------------------------------------------------------------------------------


async def test_user_state_is_one_round_trip(store: Store, monitor: Monitor) -> None:
    await store.record_events([view("u", "i1", START)], [None])
    await store.dismiss("u", "i9")

    async def read() -> None:
        states.append(await store.user_state("u"))

    states: list[UserState] = []
    await read()  # loads the script into Redis (a first EVALSHA there is refused, then loaded)
    commands = await monitor.commands(read)
    assert [command.split()[0] for command in commands] == ["EVALSHA"]
    assert states[1:] == [UserState([RecentEvent("i1", "view", unix_micros(START), None)], {"i9"}, False)]


async def test_request_state_adds_the_catalog_version_to_the_same_round_trip(
    store: Store, monitor: Monitor
) -> None:
    await store.record_events([view("u", "i1", START)], [None])
    version = await store.upsert_items([{"item_id": "i1", "available": False}])

    async def read() -> None:
        states.append(await store.request_state("u"))

    states: list[tuple[UserState, int]] = []
    await read()  # loads the script into Redis
    commands = await monitor.commands(read)
    assert [command.split()[0] for command in commands] == ["EVALSHA"]
    assert states[1:] == [
        (UserState([RecentEvent("i1", "view", unix_micros(START), None)], set(), False), version)
    ]


async def test_unknown_user_has_empty_state(store: Store) -> None:
    assert await store.user_state("nobody") == UserState([], set(), False)
    assert await store.get_profile("nobody") is None


async def test_dismissed_items_accumulate_without_ttl(
    store: Store, keys: Keys, redis_client: redis.Redis
) -> None:
    await store.dismiss("u", "i1")
    await store.dismiss("u", "i2")
    await store.dismiss("u", "i1")
    assert (await store.user_state("u")).dismissed == {"i1", "i2"}
    assert redis_client.ttl(keys.dismissed("u")) == -1


async def test_profile_put_merges_and_get_fills_defaults(store: Store) -> None:
    await store.put_profile("u", {"attributes": {"tier": "gold", "points": 120}, "timezone": "Europe/Berlin"})
    await store.put_profile(
        "u", {"push_consent": True, "devices": {"phone": {"token": "t1", "platform": "ios"}}}
    )
    await store.put_profile("u", {"devices": {"tablet": {"token": "t2", "platform": "android"}}})
    assert await store.get_profile("u") == {
        "user_id": "u",
        "attributes": {"tier": "gold", "points": 120},
        "timezone": "Europe/Berlin",
        "push_consent": True,
        "devices": {
            "phone": {"token": "t1", "platform": "ios"},
            "tablet": {"token": "t2", "platform": "android"},
        },
    }
    await store.put_profile(
        "u", {"timezone": None, "devices": {"phone": None}, "attributes": {"tier": "silver"}}
    )
    profile = await store.get_profile("u")
    assert profile is not None
    assert profile["timezone"] is None and profile["attributes"] == {"tier": "silver"}
    assert profile["devices"] == {"tablet": {"token": "t2", "platform": "android"}}


async def test_profile_rejects_unknown_or_malformed_fields(store: Store) -> None:
    with pytest.raises(InputError, match="unknown profile fields: email"):
        await store.put_profile("u", {"email": "a@b.c"})
    with pytest.raises(InputError, match="push_consent"):
        await store.put_profile("u", {"push_consent": "yes"})
    with pytest.raises(InputError, match="needs a token"):
        await store.put_profile("u", {"devices": {"phone": {"platform": "ios"}}})
    assert await store.get_profile("u") is None


async def test_forget_user_removes_everything_and_marks_forgotten(
    store: Store, keys: Keys, redis_client: redis.Redis
) -> None:
    await store.record_events([view("u", "i1", START), view("other", "i1", START)], [None, None])
    await store.dismiss("u", "i2")
    await store.put_profile(
        "u", {"push_consent": True, "devices": {"phone": {"token": "t", "platform": "ios"}}}
    )

    await store.forget_user("u")

    assert await store.user_state("u") == UserState([], set(), True)
    assert await store.get_profile("u") is None
    assert redis_client.exists(*keys.user_keys("u")) == 0
    assert (await store.user_state("other")).recent != []
    assert redis_client.sismember(keys.forgotten(), "u")


# --- catalog overrides -------------------------------------------------------------------------


async def test_catalog_overrides_are_versioned_and_merged_field_by_field(store: Store) -> None:
    assert await store.catalog_overrides(None) == (0, {})
    assert await store.catalog_overrides(0) == (0, None)

    first = await store.upsert_items(
        [{"item_id": "i1", "price": 10.0, "available": True}, {"item_id": "i2", "title": "Hat"}]
    )
    second = await store.upsert_items([{"item_id": "i1", "available": False}])

    assert (first, second) == (1, 2)
    assert await store.catalog_overrides(first) == (
        2,
        {"i1": {"price": 10.0, "available": False}, "i2": {"title": "Hat"}},
    )
    assert await store.catalog_overrides(2) == (2, None)
    assert await store.upsert_items([]) == 2
    with pytest.raises(InputError, match="no item_id"):
        await store.upsert_items([{"title": "orphan"}])


# --- trending ----------------------------------------------------------------------------------


async def test_an_event_one_half_life_old_counts_half(
    store: Store, clock: ManualClock, redis_settings: Settings
) -> None:
    half_life = timedelta(hours=redis_settings.serving.trending_half_life_hours)
    await store.record_events([Event("u", "old", "add_to_cart", START - half_life)], ["hats"])
    await store.record_events(
        [view("u", "new", START), Event("u", "shoe", "favorite", START)], ["hats", "shoes"]
    )

    assert await store.trending(10) == [
        ("shoe", pytest.approx(3.0)),
        ("old", pytest.approx(2.0)),
        ("new", pytest.approx(1.0)),
    ]
    clock.advance(half_life)
    assert await store.trending(10, category="hats") == [
        ("old", pytest.approx(1.0)),
        ("new", pytest.approx(0.5)),
    ]
    assert await store.trending(1, category="shoes") == [("shoe", pytest.approx(1.5))]
    assert await store.trending(10, category="socks") == []
    assert await store.trending(0) == []


async def test_trending_ignores_weightless_events_and_future_timestamps(store: Store) -> None:
    await store.record_events(
        [Event("u", "i1", "dismiss", START), view("u", "i2", START + timedelta(days=30))], [None, None]
    )
    assert await store.trending(10) == [("i2", pytest.approx(1.0))]


async def test_rescale_keeps_ranks_and_scores(
    store: Store, clock: ManualClock, keys: Keys, redis_client: redis.Redis, redis_settings: Settings
) -> None:
    half_life = timedelta(hours=redis_settings.serving.trending_half_life_hours)
    await store.record_events([view("u", "faded", START)], ["c"])  # fixes the epoch at START
    clock.advance(half_life * (TRENDING_RESCALE_AFTER_HALF_LIVES - 1))
    weights = {"a": "purchase", "b": "add_to_cart", "c": "favorite"}
    await store.record_events([Event("u", item, kind, clock()) for item, kind in weights.items()], ["c"] * 3)
    assert redis_client.zscore(keys.trending(), "a") == pytest.approx(8 * 2.0**63)
    clock.advance(half_life * 2)

    top = await store.trending(10)

    epoch = float(redis_client.get(keys.trending_epoch()) or 0)
    assert epoch == START.timestamp() + (TRENDING_RESCALE_AFTER_HALF_LIVES + 1) * half_life.total_seconds()
    assert top == [("a", pytest.approx(2.0)), ("b", pytest.approx(1.0)), ("c", pytest.approx(0.75))]
    assert await store.trending(10, category="c") == top  # "faded" weighed 2^-65: dropped
    assert redis_client.zscore(keys.trending(), "a") == 8 * 2.0**-2  # raw scores are small again
    await store.record_events([view("u", "d", clock())], ["c"])
    assert dict(await store.trending(10))["d"] == pytest.approx(1.0)


async def test_a_stale_store_writes_correctly_after_another_rescaled(
    redis_settings: Settings, clock: ManualClock, store: Store
) -> None:
    half_life = timedelta(hours=redis_settings.serving.trending_half_life_hours)
    client = connect_async(redis_settings)
    try:
        stale = Store(client, redis_settings, clock=clock)
        await stale.record_events([view("u", "a", START)], [None])
        clock.advance(half_life * (TRENDING_RESCALE_AFTER_HALF_LIVES + 3))
        assert await store.trending(10) == []  # rescaled by this store: "a" faded away
        clock.advance(half_life)
        await stale.record_events([view("u", "b", clock())], [None])
    finally:
        await client.aclose()
    assert await store.trending(10) == [("b", pytest.approx(1.0))]


async def test_history_entries_are_compact_json(store: Store, keys: Keys, redis_client: redis.Redis) -> None:
    await store.record_events([Event("u", "i", "rate", START, 3.0)], [None])
    (entry,) = redis_client.lrange(keys.history("u"), 0, -1)
    assert json.loads(entry) == {"i": "i", "t": "rate", "ts": unix_micros(START), "v": 3.0}
    assert " " not in entry
