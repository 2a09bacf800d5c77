"""Campaign definitions: the schema, the template check on save, and the Redis store."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from scheduler_support import campaign_spec as spec
from shop import ManualClock

from notifier.store import CampaignStore
from notifier.templates import sample_attributes
from recsvc.config import Settings
from recsvc.errors import ConflictError, InputError, NotFoundError
from recsvc.keys import Keys
from recsvc.state import Store

pytestmark = pytest.mark.anyio


@pytest.fixture
def campaigns(aredis: Any, shop_settings: Settings, clock: ManualClock) -> CampaignStore:
    return CampaignStore(aredis, shop_settings, clock=clock)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"schedule": {"kind": "cron", "cron": "61 * * * *"}}, "invalid cron expression"),
        (
            {"schedule": {"kind": "cron", "cron": "0 10 * * *", "timezone": "Mars/Olympus"}},
            "unknown timezone",
        ),
        ({"schedule": {"kind": "local_time", "at": "25:00"}}, "not a time of day"),
        ({"trigger": {"event": "add_to_cart", "delay_minutes": 120}}, "a schedule or a trigger, not both"),
        ({"segment": {"attributes": [{"field": "points", "op": "between", "value": [1]}]}}, "between"),
        ({"segment": {"control_percent": 100}}, "control_percent"),
        ({"rules": {"min_gap_hours": 1e13}}, "min_gap_hours"),  # its records could not expire
        ({"rules": {"item_repeat_days": float("inf")}}, "item_repeat_days"),
        ({"content": {"title": "t", "body": "b", "source": "trigger_item"}}, "needs a trigger"),
        ({"colour": "red"}, "colour"),
        # Found by the API audit: each was saved, then failed every preview or scheduler round.
        ({"schedule": {"kind": "local_time", "at": "18:30", "weekdays": []}}, "weekdays"),
        (
            {"schedule": {"kind": "once", "at": "9999-12-31T23:59:59", "timezone": "Pacific/Kiritimati"}},
            "before the year 2100",
        ),
        ({"schedule": {"kind": "interval", "every_minutes": 1e12}}, "every_minutes"),
        ({"schedule": {"kind": "interval", "every_minutes": 0.0001}}, "every_minutes"),
        ({"schedule": {"kind": "interval", "every_minutes": 60, "start": "9999-01-01T00:00:00"}}, "2100"),
        ({"schedule": None, "trigger": {"event": "add_to_cart", "delay_minutes": 1e308}}, "delay_minutes"),
    ],
)
def test_the_schema_rejects_invalid_campaigns(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**changes)


async def test_a_campaign_is_stored_listed_replaced_paused_and_deleted(
    campaigns: CampaignStore, clock: ManualClock
) -> None:
    created = await campaigns.create(spec(), campaign_id="weekly")
    assert created.status == "active" and created.created_at == clock.now
    assert await campaigns.get("weekly") == created

    clock.now += timedelta(minutes=5)
    replaced = await campaigns.replace("weekly", spec(name="Weekly picks v2"))
    assert (replaced.name, replaced.created_at, replaced.updated_at) == (
        "Weekly picks v2",
        created.created_at,
        clock.now,
    )
    paused = await campaigns.set_status("weekly", "paused")
    assert (await campaigns.get("weekly")).status == "paused" == paused.status

    other = await campaigns.create(spec(name="Summer sale!"))
    assert other.id.startswith("summer-sale-")
    assert [campaign.id for campaign in await campaigns.list()] == ["weekly", other.id]

    await campaigns.delete("weekly")
    with pytest.raises(NotFoundError):
        await campaigns.get("weekly")
    assert [campaign.id for campaign in await campaigns.list()] == [other.id]


async def test_a_once_schedule_past_the_misfire_grace_is_refused_as_it_would_never_fire(
    campaigns: CampaignStore, clock: ManualClock, shop_settings: Settings
) -> None:
    grace = timedelta(seconds=shop_settings.notifier.scheduler.misfire_grace_seconds)
    long_ago = (clock.now - grace - timedelta(minutes=1)).isoformat()
    with pytest.raises(InputError, match="would never fire"):
        await campaigns.create(spec(schedule={"kind": "once", "at": long_ago}))
    recent = (clock.now - grace + timedelta(minutes=1)).isoformat()  # the scheduler fires it at once
    assert (await campaigns.create(spec(schedule={"kind": "once", "at": recent}))).status == "active"


async def test_an_id_cannot_be_taken_twice(campaigns: CampaignStore) -> None:
    await campaigns.create(spec(), campaign_id="weekly")
    with pytest.raises(ConflictError):
        await campaigns.create(spec(name="another"), campaign_id="weekly")


async def test_deleting_a_campaign_removes_its_runs_and_statistics(
    campaigns: CampaignStore, aredis: Any, shop_settings: Settings
) -> None:
    keys = Keys(shop_settings.redis.prefix)
    await campaigns.create(spec(), campaign_id="weekly")
    await aredis.zadd(keys.campaign_runs("weekly"), {"20240201T1000Z": 1.0})
    await aredis.hset(keys.campaign_run("weekly", "20240201T1000Z"), "status", "done")
    await aredis.hset(keys.campaign_stats("weekly", "20240201T1000Z"), "sent", 3)
    await aredis.hset(keys.campaign_stats("weekly"), "sent", 3)
    await campaigns.delete("weekly")
    assert await aredis.keys(f"{shop_settings.redis.prefix}:campaign:weekly:*") == []


@pytest.mark.parametrize(
    ("content", "field", "message"),
    [
        ({"title": "{{ product.title }}", "body": "b"}, "content.title", r"unknown name\(s\) product"),
        ({"title": "t", "body": "{{ item.titel }}"}, "content.body", "titel"),
        ({"title": "t", "body": "{{ user.first_name }}"}, "content.body", "first_name"),
        ({"title": "t", "body": "{% for i in items %}{{ i.title }}"}, "content.body", "syntax"),
        ({"title": "t", "body": "b", "deep_link": "shop://{{ item.sku }}"}, "content.deep_link", "sku"),
        # Found by the API audit: these were 500s, not 400s.
        ({"title": "{{ item.title | nosuchfilter }}", "body": "b"}, "content.title", "nosuchfilter"),
        ({"title": "t", "body": "{{ x is nosuchtest }}"}, "content.body", "nosuchtest"),
        ({"title": "{{ item.price is nosuchtest }}", "body": "b"}, "content.title", "nosuchtest"),
        # Jinja itself reports an unknown filter in a branch only when the branch runs.
        (
            {"title": "{% if items | length > 99 %}{{ item.title | shout }}{% endif %}", "body": "b"},
            "content.title",
            "unknown filter.* shout",
        ),
        # Found by the API audit: 23 s and 1.3 GB on the event loop, then saved.
        ({"title": "{{ 'x' * 10**9 }}", "body": "b"}, "content.title", "would repeat"),
        ({"title": "t", "body": "{{ items * 10**9 }}"}, "content.body", "would repeat"),
        ({"title": "{{ 10 ** (10 ** 9) }}", "body": "b"}, "content.title", "number over 1024 bits"),
        ({"title": "t", "body": "{{ 'ab' * 2048 }}!"}, "content.body", "renders 4097 characters"),
    ],
)
async def test_a_template_that_cannot_render_is_rejected_on_save(
    campaigns: CampaignStore, content: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InputError, match=message) as raised:
        await campaigns.create(spec(content=content))
    assert raised.value.fields["field"] == field
    assert await campaigns.list() == []


async def test_a_user_attribute_is_known_once_profiles_have_it(
    campaigns: CampaignStore, store: Store
) -> None:
    body = "Hi {{ user.first_name }}, {{ item.title }} is back"
    with pytest.raises(InputError, match="first_name"):
        await campaigns.create(spec(content={"title": "t", "body": body}))
    defaulted = "Hi {{ user.first_name | default('there') }}, {{ item.title }} is back"
    assert (await campaigns.create(spec(content={"title": "t", "body": defaulted}))).content.body == defaulted

    await store.put_profile("u1", {"attributes": {"first_name": "Ada", "tier": "gold"}})
    created = await campaigns.create(spec(content={"title": "{{ user.tier }}", "body": body}))
    assert created.content.title == "{{ user.tier }}"


async def test_a_trigger_must_name_configured_event_types(campaigns: CampaignStore) -> None:
    trigger = {"event": "add_to_kart", "delay_minutes": 120, "cancel_on": ["purchase"]}
    with pytest.raises(InputError, match="add_to_kart") as raised:
        await campaigns.create(spec(schedule=None, trigger=trigger))
    assert raised.value.fields["field"] == "trigger.event"
    trigger = {"event": "add_to_cart", "delay_minutes": 120, "cancel_on": ["purchased"]}
    with pytest.raises(InputError, match="purchased"):
        await campaigns.create(spec(schedule=None, trigger=trigger))
    trigger["cancel_on"] = ["purchase"]
    assert (await campaigns.create(spec(schedule=None, trigger=trigger))).trigger is not None


def test_rules_override_only_what_a_campaign_sets(shop_settings: Settings) -> None:
    overriding = spec(rules={"max_per_day": 1, "quiet_start": "22:30"})
    rules = overriding.effective_rules(shop_settings.notifier.rules)
    defaults = shop_settings.notifier.rules
    assert (rules.max_per_day, rules.quiet_start) == (1, "22:30")
    assert (rules.max_per_week, rules.quiet_end) == (defaults.max_per_week, defaults.quiet_end)


async def test_a_template_is_checked_with_attribute_values_of_the_stored_types(
    campaigns: CampaignStore, store: Store
) -> None:
    """Found by the API audit: `{{ user.points + 1 }}` was rejected on save because the sample user
    had every attribute as a string, while profiles store points as a number."""
    await store.put_profile("u1", {"attributes": {"points": 120, "vip": True, "first_name": "Ada"}})
    await store.put_profile("u2", {"attributes": {"points": 80, "share": 0.5, "tags": ["new"]}})
    content = {
        "title": "{{ user.first_name | default('Hi') }}: {{ user.points + 1 }} points",
        "body": "{{ 'VIP' if user.vip else '' }} {{ (user.share * 100) | round }}% {{ user.tags[0] }}",
    }
    assert (await campaigns.create(spec(content=content))).content.title == content["title"]
    with pytest.raises(InputError, match="points_total"):
        await campaigns.create(spec(content={"title": "{{ user.points_total + 1 }}", "body": "b"}))


@pytest.mark.parametrize(
    ("content", "hinted"),
    [
        ({"title": "{{ user.first_name }}", "body": "b"}, True),
        ({"title": "{{ user['first_name'] }}", "body": "b"}, True),
        ({"title": "{{ item.colour }}", "body": "b"}, False),
        ({"title": "{{ campaign.owner }}", "body": "b"}, False),
        ({"title": "{{ item.title", "body": "b"}, False),
        ({"title": "{{ item.title.__class__ }}", "body": "b"}, False),
        ({"title": "{{ 'x' * 10**9 }}", "body": "b"}, False),
    ],
)
async def test_only_an_unknown_user_attribute_gets_the_default_hint(
    campaigns: CampaignStore, content: dict[str, Any], hinted: bool
) -> None:
    """Found by the API audit: every template error said a user attribute needs `| default(...)`."""
    with pytest.raises(InputError) as raised:
        await campaigns.create(spec(content=content))
    assert ("| default(...)" in raised.value.detail) is hinted, raised.value.detail


def test_sample_attributes_take_the_type_most_profiles_store() -> None:
    stored = [{"points": 1, "tier": "gold"}, {"points": "many"}, {"points": 7, "address": {"city": "Oslo"}}]
    assert sample_attributes(stored) == {
        "points": 1,
        "tier": "sample tier",
        "address": {"city": "Oslo"},
    }


async def test_an_invalid_stored_campaign_is_left_out_of_the_list(
    campaigns: CampaignStore, aredis: Any, shop_settings: Settings
) -> None:
    """One saved before a check existed (or corrupted) must not hide the others."""
    await campaigns.create(spec(), campaign_id="weekly")
    bad = (await campaigns.get("weekly")).model_dump(mode="json")
    bad.update(id="far", schedule={"kind": "once", "at": "9999-12-31T23:59:59"})
    await aredis.hset(
        Keys(shop_settings.redis.prefix).campaigns(), mapping={"far": json.dumps(bad), "junk": "{"}
    )
    assert [campaign.id for campaign in await campaigns.list()] == ["weekly"]
    with pytest.raises(ConflictError, match="'far' is stored in a form this version refuses"):
        await campaigns.get("far")
    await campaigns.delete("far")
    with pytest.raises(NotFoundError):
        await campaigns.get("far")
    with pytest.raises(NotFoundError):
        await campaigns.delete("far")
