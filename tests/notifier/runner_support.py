"""Helpers of the campaign-run suites: campaigns, profiles and events of the planted shop, reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from shop import NOW

from notifier.campaign import Campaign
from recsvc.keys import Keys
from recsvc.state import Event, Store

DEVICE = {"phone": {"token": "tok", "platform": "android"}}
REACHABLE: dict[str, Any] = {"push_consent": True, "devices": DEVICE}


def campaign(campaign_id: str = "spring", **spec: Any) -> Campaign:
    """A campaign run on demand; `spec` overrides or adds fields (content given as a dict merges)."""
    content = {"title": "For you", "body": "{{ item.title }} and more", "items": 3}
    content.update(spec.pop("content", {}))
    document = {
        "name": f"campaign {campaign_id}",
        "content": content,
        "rules": {
            "max_per_day": 0,
            "max_per_week": 0,
            "min_gap_hours": 0,
            "quiet_start": "00:00",
            "quiet_end": "00:00",
        },
        **spec,
        "id": campaign_id,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Campaign.model_validate(document)


async def put_profiles(store: Store, profiles: Mapping[str, Mapping[str, Any]], *, chunk: int = 20) -> None:
    """Store many profiles through `Store.put_profile`, `chunk` at a time concurrently."""
    users = list(profiles.items())
    for start in range(0, len(users), chunk):
        await asyncio.gather(
            *(store.put_profile(user, profile) for user, profile in users[start : start + chunk])
        )


async def record(store: Store, events: Iterable[tuple[str, str, str, datetime]]) -> None:
    """Record (user, item, type, time) events of the planted shop (category = the item's first letter)."""
    batch = [Event(user, item, kind, ts) for user, item, kind, ts in events]
    categories = ["S" if event.item_id == "shared" else event.item_id[0].upper() for event in batch]
    await store.record_events(batch, categories)


async def message_of(aredis: aioredis.Redis, keys: Keys, message_id: str) -> dict[str, str]:
    stored: dict[str, str] = await aredis.hgetall(keys.message(message_id))  # type: ignore[assignment]
    return stored


async def run_stats(
    aredis: aioredis.Redis, keys: Keys, campaign_id: str, run_id: str | None
) -> dict[str, int]:
    raw: dict[str, str] = await aredis.hgetall(keys.campaign_stats(campaign_id, run_id))  # type: ignore[assignment]
    return {name: int(value) for name, value in raw.items()}


async def outbox_ids(aredis: aioredis.Redis, keys: Keys) -> list[str]:
    """Message ids in the outbox stream, in order."""
    entries = await aredis.xrange(keys.outbox())
    return [fields["message_id"] for _, fields in entries]


async def delayed(aredis: aioredis.Redis, keys: Keys) -> dict[str, float]:
    """Message id -> due time of the delayed outbox."""
    return dict(await aredis.zrange(keys.outbox_delayed(), 0, -1, withscores=True))
