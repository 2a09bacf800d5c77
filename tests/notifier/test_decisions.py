"""Deciding a batch: a run's fast path (`explain=False`) decides exactly as a preview's does."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis
from runner_support import REACHABLE, campaign, put_profiles

from notifier import segments, stats
from notifier.campaign import Campaign
from notifier.decisions import Context, decide
from notifier.templates import Templates
from recsvc.catalog_cache import CatalogCache
from recsvc.config import Settings
from recsvc.current_model import ModelHolder
from recsvc.keys import Keys
from recsvc.state import Store

pytestmark = pytest.mark.anyio

EVENING = datetime(2024, 2, 1, 21, 30, tzinfo=UTC)  # 22:30 in Berlin (quiet hours), 16:30 in New York


async def context(campaign: Campaign, settings: Settings, models: ModelHolder, store: Store) -> Context:
    """A run's context, built from the same parts as `CampaignRunner`'s."""
    loaded = models.loaded
    assert loaded is not None
    catalogs = CatalogCache()
    await catalogs.refresh(store)
    return Context(
        campaign=campaign,
        run_id="r1",
        rules=campaign.effective_rules(settings.notifier.rules),
        now=EVENING,
        purchase_type=settings.notifier.tracking.conversion_event_type,
        default_zone=settings.notifier.default_timezone,
        loaded=loaded,
        catalog=catalogs.catalog(loaded.engine),
        trending=await store.trending(campaign.content.items + 50),
        content=Templates().compile(campaign.content),
        trigger_events={},
    )


async def test_deciding_without_explaining_only_leaves_out_the_checks(
    aredis: aioredis.Redis, store: Store, shop_settings: Settings, models: ModelHolder
) -> None:
    held_out = campaign(
        segment={
            "attributes": [{"field": "tier", "op": "in", "value": ["gold", "silver"]}],
            "control_percent": 30,
        },
        rules={"quiet_start": "21:00", "quiet_end": "08:00", "max_per_day": 1},
    )
    planted = [f"gA-u{n}" for n in range(60)]
    control = [user for user in planted if segments.in_control(held_out.segment, held_out.id, user)]
    berlin, new_york, no_consent, no_device, bronze, capped = [u for u in planted if u not in control][:6]
    gold = {"tier": "gold"}
    await put_profiles(
        store,
        {
            berlin: {**REACHABLE, "attributes": gold, "timezone": "Europe/Berlin"},
            new_york: {**REACHABLE, "attributes": gold, "timezone": "America/New_York"},
            no_consent: {**REACHABLE, "attributes": {"tier": "silver"}, "push_consent": False},
            no_device: {"push_consent": True, "attributes": gold, "timezone": "America/New_York"},
            bronze: {**REACHABLE, "attributes": {"tier": "bronze"}},
            capped: {**REACHABLE, "attributes": gold, "timezone": "America/New_York"},
            control[0]: {**REACHABLE, "attributes": gold, "timezone": "America/New_York"},
            "forgotten": {**REACHABLE, "attributes": gold},
        },
    )
    await store.forget_user("forgotten")
    keys = Keys(shop_settings.redis.prefix)
    earlier = (EVENING - timedelta(hours=1)).timestamp()  # the same day in New York
    await aredis.zadd(keys.user_pushes(capped), {"other|r0": earlier})
    named = [berlin, new_york, no_consent, no_device, bronze, capped, control[0], "forgotten", "nobody"]
    users = await segments.read_users(aredis, keys, named)
    ctx = await context(held_out, shop_settings, models, store)

    explained = decide(users, ctx, explain=True)
    fast = decide(users, ctx, explain=False)

    assert [outcome.checks for outcome in fast] == [[]] * len(named)
    assert all(outcome.checks for outcome in explained)
    assert [replace(outcome, checks=[]) for outcome in explained] == fast
    # The mix covers each way a user goes: sent now, deferred, suppressed, control, outside.
    assert [(o.group, o.reason, bool(o.timing and o.timing.deferred), bool(o.rendered)) for o in fast] == [
        ("treatment", None, True, True),
        ("treatment", None, False, True),
        ("treatment", stats.NO_CONSENT, True, False),  # UTC: in quiet hours too
        ("treatment", stats.NO_DEVICE, False, False),
        ("not_in_segment", None, False, False),
        ("treatment", stats.DAILY_CAP, False, False),
        ("control", None, False, True),
        ("not_in_segment", stats.FORGOTTEN, False, False),
        ("not_in_segment", None, False, False),
    ]
    assert all(len(o.items) == 3 for o in fast if o.rendered)
