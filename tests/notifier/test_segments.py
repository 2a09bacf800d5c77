"""Segment predicates, sampling and control, and reading a batch of users from a real Redis."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from runner_support import DEVICE, record
from shop import NOW

from notifier import segments
from notifier.campaign import AttributePredicate, Segment
from notifier.rules import PushedItem, push_record
from notifier.segments import Behaviour, UserData
from recsvc.config import Settings
from recsvc.engine import RecentEvent
from recsvc.keys import Keys
from recsvc.state import Store, profile_from_hash, recent_event, unix_micros

CATEGORIES = {"a1": "A", "a2": "A", "b1": "B"}
BEHAVIOUR = Behaviour(NOW, "purchase", CATEGORIES.get)


def event(item: str, kind: str, days_ago: float) -> RecentEvent:
    return RecentEvent(item, kind, unix_micros(NOW - timedelta(days=days_ago)))


def user(
    attributes: dict[str, Any] | None = None,
    *,
    recent: list[RecentEvent] | None = None,
    consent: bool = True,
    devices: dict[str, Any] | None = None,
    timezone: str | None = None,
) -> UserData:
    profile = {
        "user_id": "u1",
        "attributes": attributes or {},
        "timezone": timezone,
        "push_consent": consent,
        "devices": DEVICE if devices is None else devices,
    }
    newest_first = sorted(recent or [], key=lambda e: e.ts_us, reverse=True)
    return UserData("u1", profile, newest_first, frozenset(), (), {})


def holds(op: str, value: Any, attributes: dict[str, Any], field: str = "tier") -> bool:
    predicate = AttributePredicate(field=field, op=op, value=value)  # type: ignore[arg-type]
    return segments.matches(Segment(attributes=[predicate]), user(attributes), BEHAVIOUR)


@pytest.mark.parametrize(
    ("op", "value", "yes", "no"),
    [
        ("eq", "gold", {"tier": "gold"}, {"tier": "silver"}),
        ("ne", "gold", {"tier": "silver"}, {"tier": "gold"}),
        ("in", ["gold", "silver"], {"tier": "silver"}, {"tier": "bronze"}),
        ("not_in", ["gold", "silver"], {"tier": "bronze"}, {"tier": "gold"}),
        ("gt", 100, {"tier": 101}, {"tier": 100}),
        ("gte", 100, {"tier": 100}, {"tier": 99.5}),
        ("lt", 100, {"tier": 99}, {"tier": 100}),
        ("lte", 100, {"tier": 100}, {"tier": 100.5}),
        ("between", [100, 500], {"tier": 500}, {"tier": 501}),
        ("exists", None, {"tier": "gold"}, {}),
        ("missing", None, {}, {"tier": "gold"}),
    ],
)
def test_attribute_ops(op: str, value: Any, yes: dict[str, Any], no: dict[str, Any]) -> None:
    assert holds(op, value, yes)
    assert not holds(op, value, no)


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", "gold", False),
        ("ne", "gold", True),
        ("in", ["gold"], False),
        ("not_in", ["gold"], True),
        ("gt", 1, False),
        ("between", [0, 10], False),
        ("exists", None, False),
        ("missing", None, True),
    ],
)
def test_a_missing_attribute_holds_only_for_ne_not_in_and_missing(
    op: str, value: Any, expected: bool
) -> None:
    assert holds(op, value, {}) is expected
    assert holds(op, value, {"tier": None}) is expected  # null counts as missing


def test_comparisons_need_numbers_and_booleans_are_not_numbers() -> None:
    assert not holds("gt", 1, {"tier": "5"})
    assert not holds("gte", 0, {"tier": True})
    assert not holds("eq", 1, {"tier": True})
    assert holds("eq", True, {"tier": True})
    assert holds("eq", 1, {"tier": 1.0})


def test_timezone_field_tests_the_profiles_timezone() -> None:
    predicate = AttributePredicate(field="timezone", op="eq", value="Europe/Berlin")
    segment = Segment(attributes=[predicate])
    assert segments.matches(segment, user(timezone="Europe/Berlin"), BEHAVIOUR)
    assert not segments.matches(segment, user(timezone="UTC"), BEHAVIOUR)
    missing = Segment(attributes=[AttributePredicate(field="timezone", op="missing")])
    assert segments.matches(missing, user(), BEHAVIOUR)


def test_active_and_inactive_windows() -> None:
    active = Segment(active_within_days=7)
    inactive = Segment(inactive_for_days=30)
    fresh = user(recent=[event("a1", "view", 2), event("a2", "view", 40)])
    stale = user(recent=[event("a1", "view", 40)])
    assert segments.matches(active, fresh, BEHAVIOUR)
    assert not segments.matches(active, stale, BEHAVIOUR)
    assert not segments.matches(active, user(), BEHAVIOUR)
    assert segments.matches(inactive, stale, BEHAVIOUR)
    assert segments.matches(inactive, user(), BEHAVIOUR)  # no history at all is inactive
    assert not segments.matches(inactive, fresh, BEHAVIOUR)


def test_activity_is_judged_by_the_newest_event_time_not_the_last_event_received() -> None:
    """An app syncing events it collected offline posts an old event after a recent one."""
    recent_then_old = UserData(
        "u1", user().profile, [event("a2", "view", 20), event("a1", "view", 1 / 24)], frozenset(), (), {}
    )
    assert segments.matches(Segment(active_within_days=1), recent_then_old, BEHAVIOUR)
    assert not segments.matches(Segment(inactive_for_days=7), recent_then_old, BEHAVIOUR)


def test_purchased_in_category_within_days() -> None:
    bought_a = user(recent=[event("a1", "purchase", 10), event("b1", "view", 1)])
    assert segments.matches(Segment(purchased_in_category="A"), bought_a, BEHAVIOUR)
    assert not segments.matches(Segment(purchased_in_category="B"), bought_a, BEHAVIOUR)  # only viewed
    assert segments.matches(Segment(purchased_in_category="A", purchased_within_days=14), bought_a, BEHAVIOUR)
    assert not segments.matches(
        Segment(purchased_in_category="A", purchased_within_days=7), bought_a, BEHAVIOUR
    )
    assert segments.matches(Segment(purchased_within_days=14), bought_a, BEHAVIOUR)  # any category
    assert not segments.matches(Segment(purchased_within_days=14), user(), BEHAVIOUR)


def test_viewed_not_bought_within_days() -> None:
    segment = Segment(viewed_not_bought_within_days=3)
    carted = user(recent=[event("a1", "add_to_cart", 1)])
    assert segments.matches(segment, carted, BEHAVIOUR)
    bought = user(recent=[event("a1", "view", 2), event("a1", "purchase", 1)])
    assert not segments.matches(segment, bought, BEHAVIOUR)
    too_old = user(recent=[event("a1", "view", 5)])
    assert not segments.matches(segment, too_old, BEHAVIOUR)
    # Another item bought does not cancel the viewed one; an old purchase of it neither.
    mixed = user(recent=[event("a1", "purchase", 20), event("a1", "view", 1), event("a2", "purchase", 1)])
    assert segments.matches(segment, mixed, BEHAVIOUR)


def test_consent_and_device_predicates() -> None:
    assert segments.matches(Segment(push_consent=True), user(consent=True), BEHAVIOUR)
    assert not segments.matches(Segment(push_consent=True), user(consent=False), BEHAVIOUR)
    assert segments.matches(Segment(push_consent=False), user(consent=False), BEHAVIOUR)
    assert segments.matches(Segment(has_device=True), user(), BEHAVIOUR)
    assert not segments.matches(Segment(has_device=True), user(devices={}), BEHAVIOUR)
    assert segments.matches(Segment(has_device=False), user(devices={}), BEHAVIOUR)


def test_all_conditions_must_hold_and_explain_names_each() -> None:
    segment = Segment(
        attributes=[AttributePredicate(field="tier", op="eq", value="gold")],
        push_consent=True,
        has_device=True,
    )
    checks = segments.explain(segment, user({"tier": "gold"}, consent=False), BEHAVIOUR)
    assert [(check.name, check.passed) for check in checks] == [
        ('attribute tier eq "gold"', True),
        ("push_consent", False),
        ("has_device", True),
    ]
    no_profile = UserData("ghost", None, [], frozenset(), (), {})
    assert not segments.matches(Segment(), no_profile, BEHAVIOUR)


# Users that tell every predicate kind apart: each segment below matches some and not others.
VARIED = [
    user(
        {"tier": "gold", "points": 150},
        timezone="Europe/Berlin",
        recent=[event("a1", "view", 2), event("a2", "purchase", 10)],
    ),
    user(
        {"tier": "silver", "points": 600}, recent=[event("b1", "add_to_cart", 1)], consent=False, devices={}
    ),
    user({}, recent=[event("a1", "view", 40)]),
    user({"tier": None, "points": "5"}),
    UserData("ghost", None, [], frozenset(), (), {}),
]


def attribute(field: str, op: str, value: Any = None) -> dict[str, Any]:
    return {"attributes": [{"field": field, "op": op, "value": value}]}


EVERY_PREDICATE_KIND = {
    "eq": attribute("tier", "eq", "gold"),
    "ne": attribute("tier", "ne", "gold"),
    "in": attribute("tier", "in", ["gold", "silver"]),
    "not_in": attribute("tier", "not_in", ["gold", "silver"]),
    "gt": attribute("points", "gt", 100),
    "gte": attribute("points", "gte", 150),
    "lt": attribute("points", "lt", 500),
    "lte": attribute("points", "lte", 150),
    "between": attribute("points", "between", [100, 500]),
    "exists": attribute("tier", "exists"),
    "missing": attribute("tier", "missing"),
    "timezone": attribute("timezone", "eq", "Europe/Berlin"),
    "active_within_days": {"active_within_days": 7},
    "inactive_for_days": {"inactive_for_days": 30},
    "purchased_in_category": {"purchased_in_category": "A"},
    "purchased_within_days": {"purchased_within_days": 14},
    "purchased_in_category_within_days": {"purchased_in_category": "A", "purchased_within_days": 14},
    "viewed_not_bought_within_days": {"viewed_not_bought_within_days": 3},
    "push_consent": {"push_consent": True},
    "no_push_consent": {"push_consent": False},
    "has_device": {"has_device": True},
    "has_no_device": {"has_device": False},
    "all_at_once": {
        **attribute("tier", "eq", "gold"),
        "active_within_days": 7,
        "viewed_not_bought_within_days": 3,
        "push_consent": True,
        "has_device": True,
    },
    "no_condition": {},
}


@pytest.mark.parametrize("spec", EVERY_PREDICATE_KIND.values(), ids=EVERY_PREDICATE_KIND.keys())
def test_matches_is_whether_every_explained_check_passed(spec: dict[str, Any]) -> None:
    """`matches` skips the texts of `explain` (a run's fast path); never the verdict."""
    segment = Segment.model_validate(spec)
    verdicts = [segments.matches(segment, varied, BEHAVIOUR) for varied in VARIED]
    explained = [all(c.passed for c in segments.explain(segment, varied, BEHAVIOUR)) for varied in VARIED]
    assert verdicts == explained
    assert set(verdicts) == {True, False}  # the users tell this segment's outcomes apart


# --- sampling and control --------------------------------------------------------------------------


def test_sample_is_deterministic_per_run_and_changes_between_runs() -> None:
    segment = Segment(sample_percent=50)
    users = [f"u{n}" for n in range(2000)]
    first = {u for u in users if segments.sampled(segment, "c", "r1", u)}
    again = {u for u in users if segments.sampled(segment, "c", "r1", u)}
    second = {u for u in users if segments.sampled(segment, "c", "r2", u)}
    assert first == again
    assert first != second
    assert 900 <= len(first) <= 1100 and 900 <= len(second) <= 1100
    assert all(segments.sampled(Segment(), "c", "r1", u) for u in users)


def test_control_group_is_stable_per_campaign_and_about_its_share() -> None:
    segment = Segment(control_percent=10)
    users = [f"u{n}" for n in range(2000)]
    control = {u for u in users if segments.in_control(segment, "c", u)}
    assert control == {u for u in users if segments.in_control(segment, "c", u)}
    assert 150 <= len(control) <= 250  # 200 expected; binomial sd about 13
    other = {u for u in users if segments.in_control(segment, "other", u)}
    assert other != control  # each campaign has its own control group
    assert not any(segments.in_control(Segment(), "c", u) for u in users)


def test_buckets_are_uniform() -> None:
    values = [segments.bucket("x", str(n)) for n in range(10_000)]
    assert all(0 <= value < 100 for value in values)
    assert 4_800 <= sum(value < 50 for value in values) <= 5_200


# --- reading from Redis ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_read_users_reads_profile_history_and_push_records(
    aredis: aioredis.Redis, store: Store, shop_settings: Settings
) -> None:
    keys = Keys(shop_settings.redis.prefix)
    await store.put_profile("u1", {"attributes": {"tier": "gold"}, "push_consent": True, "devices": DEVICE})
    await record(store, [("u1", "a1", "view", NOW - timedelta(hours=2)), ("u1", "a2", "purchase", NOW)])
    await store.dismiss("u1", "b1")
    await aredis.zadd(keys.user_pushes("u1"), {"c|r0": 100.0})
    await aredis.hset(keys.user_pushed_items("u1"), "a3", '{"m":"m0","t":100.0}')
    await aredis.hset(keys.message("m-u1"), "title", "x")
    await store.put_profile("u2", {})
    await store.forget_user("u2")
    [u1, u2] = await segments.read_users(
        aredis, keys, ["u1", "u2"], message_keys=[keys.message("m-u1"), "nope"]
    )
    assert u1.profile is not None and u1.profile["attributes"] == {"tier": "gold"}
    assert [(e.item_id, e.type) for e in u1.recent] == [("a2", "purchase"), ("a1", "view")]
    assert u1.dismissed == {"b1", "a2"}  # dismissed, and bought (a purchase excludes for good)
    assert [(p.campaign_id, p.run_id, p.due) for p in u1.pushes] == [("c", "r0", 100.0)]
    assert u1.pushed_items["a3"].message_id == "m0"
    assert u1.message_written and not u1.forgotten
    assert u2.profile is None and u2.forgotten and not u2.message_written


async def read_plainly(aredis: aioredis.Redis, keys: Keys, user_id: str, message_key: str | None) -> UserData:
    """One user's data read key by key with plain commands: the reference for the batch read."""
    profile: dict[str, str] = await aredis.hgetall(keys.profile(user_id))  # type: ignore[assignment]
    history = await aredis.lrange(keys.history(user_id), 0, -1)
    pushes = await aredis.zrange(keys.user_pushes(user_id), 0, -1, withscores=True)
    items: dict[str, str] = await aredis.hgetall(keys.user_pushed_items(user_id))  # type: ignore[assignment]
    records = {item: json.loads(value) for item, value in items.items()}
    return UserData(
        user_id=user_id,
        profile=profile_from_hash(user_id, profile),
        recent=[recent_event(entry) for entry in history],
        dismissed=frozenset(await aredis.smembers(keys.dismissed(user_id))),
        pushes=tuple(push_record(member, score) for member, score in pushes),
        pushed_items={item: PushedItem(str(r["m"]), float(r["t"])) for item, r in records.items()},
        forgotten=bool(await aredis.sismember(keys.forgotten(), user_id)),
        message_written=message_key is not None and bool(await aredis.exists(message_key)),
    )


@pytest.mark.anyio
@pytest.mark.parametrize("chunk", [segments.READ_CHUNK, 2], ids=["one-chunk", "chunks-of-2"])
async def test_fetched_users_decode_to_what_read_users_and_plain_reads_give(
    aredis: aioredis.Redis, store: Store, shop_settings: Settings, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(segments, "READ_CHUNK", chunk)
    keys = Keys(shop_settings.redis.prefix)
    await store.put_profile(
        "full",
        {
            "attributes": {"tier": "gold"},
            "timezone": "Europe/Berlin",
            "push_consent": True,
            "devices": DEVICE,
        },
    )
    await record(store, [("full", "a1", "view", NOW - timedelta(hours=2)), ("full", "a2", "purchase", NOW)])
    await store.dismiss("full", "b1")
    await store.dismiss("full", "b2")
    await aredis.zadd(keys.user_pushes("full"), {"c|r0": 100.0, "d|r1": 1706788800.1234567})
    await aredis.hset(
        keys.user_pushed_items("full"), mapping={"a3": '{"m":"m0","t":100.0}', "a4": '{"m":"m1","t":7}'}
    )
    await store.put_profile("bäre🙂", {"push_consent": False})
    await aredis.hset(keys.message("m-bäre🙂"), "title", "x")
    await store.put_profile("forgotten", {"push_consent": True, "devices": DEVICE})
    await store.forget_user("forgotten")
    await store.put_profile("points-only", {"attributes": {"points": 3}})
    users = ["full", "bäre🙂", "forgotten", "absent", "points-only"]
    message_keys = [keys.message("m-full"), keys.message("m-bäre🙂"), "no-such-message", "nope", "nope"]
    for given in (message_keys, None):
        fetched = await segments.fetch_users(aredis, keys, users, message_keys=given)
        read = await segments.read_users(aredis, keys, users, message_keys=given)
        plain = [
            await read_plainly(aredis, keys, u, given[n] if given else None) for n, u in enumerate(users)
        ]
        assert fetched.decode() == read == plain
        written = [u.message_written for u in read]
        assert written == ([False, True, False, False, False] if given else [False] * len(users))
    full, bare, forgotten, absent, _ = read
    assert (
        full.recent
        and full.dismissed == {"a2", "b1", "b2"}
        and len(full.pushes) == len(full.pushed_items) == 2
    )
    assert bare.profile is not None and not bare.recent and not bare.forgotten
    assert (
        forgotten.profile is None and forgotten.forgotten and absent.profile is None and not absent.forgotten
    )


@pytest.mark.anyio
async def test_scan_population_pages_and_resumes(aredis: aioredis.Redis, shop_settings: Settings) -> None:
    keys = Keys(shop_settings.redis.prefix)
    users = {f"u{n}" for n in range(1000)}
    await aredis.sadd(keys.profiles(), *users)
    pages = [(cursor, page) async for cursor, page in segments.scan_population(aredis, keys, 100)]
    assert set().union(*(set(page) for _, page in pages)) == users
    assert len(pages) > 3 and pages[-1][0] == 0
    cursor = pages[2][0]
    rest = [page async for _, page in segments.scan_population(aredis, keys, 100, cursor)]
    assert set().union(*(set(page) for _, page in pages[:3]), *map(set, rest)) == users
