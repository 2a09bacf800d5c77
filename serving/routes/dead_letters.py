"""Pushes given up after `delivery.max_attempts` (admin): list them, and replay them once the
cause (a provider outage, a wrong key) is fixed. The logic lives in `notifier.dead_letters`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query

from notifier import dead_letters
from recsvc.keys import Keys
from serving.deps import AdminKey, ServicesDep
from serving.openapi import AUTH, problems

router = APIRouter(prefix="/v1/dead-letters", tags=["campaigns"])

CampaignFilter = Annotated[
    str | None, Query(min_length=1, max_length=64, description="only this campaign's", examples=["weekly"])
]


@router.get(
    "",
    summary="Pushes given up after the last attempt, oldest first (admin)",
    responses=problems(*AUTH, 422, 503),
)
async def list_dead_letters(
    _: AdminKey,
    services: ServicesDep,
    campaign: CampaignFilter = None,
    limit: Annotated[int, Query(ge=1, le=10_000, examples=[100])] = 100,
) -> list[dict[str, Any]]:
    """Each with its message id, campaign, user, attempts and the last error the provider gave."""
    keys = Keys(services.settings.redis.prefix)
    with services.guarded("dead_letters"):
        found = await dead_letters.dead_letters(services.redis, keys, campaign_id=campaign, limit=limit)
    return [asdict(letter) for letter in found]


@router.post(
    "/replay",
    summary="Queue the dead pushes again (admin)",
    responses=problems(*AUTH, 422, 503),
)
async def replay_dead_letters(
    _: AdminKey, services: ServicesDep, campaign: CampaignFilter = None
) -> dict[str, int]:
    """Each dead push is queued again, due now, and no longer counts as failed; the workers send
    it unless it is more than `delivery.max_delay_hours` late by then. `skipped` counts entries
    whose message had expired or was no longer dead."""
    keys = Keys(services.settings.redis.prefix)
    now = services.clock().timestamp()
    with services.guarded("replay_dead_letters"):
        return asdict(await dead_letters.replay(services.redis, keys, now, campaign_id=campaign))
