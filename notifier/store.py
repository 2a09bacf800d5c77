"""Campaigns in Redis: create, read, replace, pause, resume and delete, each validated on save.

A campaign is one JSON document in the hash `Keys.campaigns`, so saving it is one atomic write
and the scheduler sees either the old or the new version. Saving checks what pydantic cannot:
the templates (see `notifier.templates`, against the attributes stored profiles really have, with
values of the types they have)
and the event types of a trigger (they must be configured in `[events.types]`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from notifier.campaign import Campaign, CampaignSpec, CampaignStatus, OnceSchedule
from notifier.templates import Templates, sample_attributes
from recsvc.config import Settings
from recsvc.errors import ConflictError, InputError, NotFoundError
from recsvc.keys import Keys
from recsvc.redis_conn import unavailable_as_error
from recsvc.state import utc_now

log = logging.getLogger(__name__)

# Profiles sampled to learn which attribute names exist (and their types), for the template check.
ATTRIBUTE_SAMPLE = 500


class CampaignStore:
    """Campaign documents of one deployment (one key prefix)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utc_now,
        templates: Templates | None = None,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.redis.prefix)
        self._clock = clock
        self._templates = templates or Templates()

    async def create(self, spec: CampaignSpec, campaign_id: str | None = None) -> Campaign:
        """Save a new campaign; its id is `campaign_id` or one made from the name."""
        await self._check(spec)
        now = self._clock()
        campaign = Campaign.model_validate(
            {
                **spec.model_dump(),
                "id": campaign_id or _new_id(spec.name),
                "status": "active",
                "created_at": now,
                "updated_at": now,
            }
        )
        with unavailable_as_error("create campaign"):
            created = await self._redis.hsetnx(
                self._keys.campaigns(), campaign.id, campaign.model_dump_json()
            )
        if not created:
            raise ConflictError(f"campaign {campaign.id!r} already exists", campaign_id=campaign.id)
        return campaign

    async def get(self, campaign_id: str) -> Campaign:
        with unavailable_as_error("get campaign"):
            stored = await self._redis.hget(self._keys.campaigns(), campaign_id)
        if stored is None:
            raise NotFoundError(f"no campaign {campaign_id!r}", campaign_id=campaign_id)
        try:
            return Campaign.model_validate_json(stored)
        except ValidationError as exc:  # saved before a check existed, or corrupted
            raise ConflictError(
                f"campaign {campaign_id!r} is stored in a form this version refuses "
                f"({exc.errors()[0]['msg']}): delete it and create it again",
                campaign_id=campaign_id,
            ) from exc

    async def list(self) -> list[Campaign]:
        """Every valid campaign, oldest first.

        A document that no longer validates (saved before a check existed, or corrupted) is
        logged and left out, so that one bad campaign cannot stop the scheduler, the triggers or
        this list from handling the others.
        """
        with unavailable_as_error("list campaigns"):
            stored = await self._redis.hgetall(self._keys.campaigns())
        campaigns = []
        for campaign_id, document in stored.items():
            try:
                campaigns.append(Campaign.model_validate_json(document))
            except ValidationError as exc:
                log.error("campaign %s is invalid and left out: %s", campaign_id, exc)
        return sorted(campaigns, key=lambda campaign: (campaign.created_at, campaign.id))

    async def replace(self, campaign_id: str, spec: CampaignSpec) -> Campaign:
        """Replace a campaign's definition, keeping its id, status, creation time and statistics."""
        await self._check(spec)
        current = await self.get(campaign_id)
        updated = Campaign.model_validate(
            {
                **spec.model_dump(),
                "id": current.id,
                "status": current.status,
                "created_at": current.created_at,
                "updated_at": self._clock(),
            }
        )
        await self._save(updated)
        return updated

    async def set_status(self, campaign_id: str, status: CampaignStatus) -> Campaign:
        """Pause or resume: the scheduler drops or restores the campaign's job on its next round."""
        current = await self.get(campaign_id)
        updated = current.model_copy(update={"status": status, "updated_at": self._clock()})
        await self._save(updated)
        return updated

    async def delete(self, campaign_id: str) -> None:
        """Delete the campaign with its runs, statistics and pending triggers (sent messages expire).

        Only its existence is checked, so a campaign stored in a form `get` refuses can go too.
        """
        keys = self._keys
        with unavailable_as_error("delete campaign"):
            if not await self._redis.hexists(keys.campaigns(), campaign_id):
                raise NotFoundError(f"no campaign {campaign_id!r}", campaign_id=campaign_id)
            runs = [str(run) for run in await self._redis.zrange(keys.campaign_runs(campaign_id), 0, -1)]
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(keys.campaigns(), campaign_id)
                for run_id in runs:
                    pipe.delete(
                        keys.campaign_run(campaign_id, run_id),
                        keys.campaign_run_lock(campaign_id, run_id),
                        keys.campaign_stats(campaign_id, run_id),
                    )
                pipe.delete(
                    keys.campaign_runs(campaign_id),
                    keys.campaign_stats(campaign_id),
                    keys.campaign_triggers(campaign_id),
                    keys.campaign_trigger_events(campaign_id),
                )
                await pipe.execute()

    async def _save(self, campaign: Campaign) -> None:
        with unavailable_as_error("save campaign"):
            await self._redis.hset(self._keys.campaigns(), campaign.id, campaign.model_dump_json())

    async def _check(self, spec: CampaignSpec) -> None:
        """Checks that need configuration or stored data; raise `InputError` naming the field."""
        known_types = self._settings.events.types
        if spec.trigger is not None:
            fields = {"trigger.event": [spec.trigger.event]}
            fields["trigger.cancel_on"] = spec.trigger.cancel_on
            for field, types in fields.items():
                unknown = sorted(set(types) - set(known_types))
                if unknown:
                    raise InputError(
                        f"{field}: unknown event type(s) {', '.join(unknown)} "
                        f"(configured: {', '.join(sorted(known_types))})",
                        field=field,
                    )
        schedule = spec.schedule
        grace = timedelta(seconds=self._settings.notifier.scheduler.misfire_grace_seconds)
        if isinstance(schedule, OnceSchedule) and schedule.instant() < self._clock() - grace:
            raise InputError(
                f"schedule.at: {schedule.instant().isoformat()} is past by more than the scheduler's "
                f"misfire_grace_seconds ({grace.total_seconds():.0f}), so it would never fire",
                field="schedule.at",
            )
        attributes = sample_attributes(await self.profile_attributes())
        # In a thread: rendering is CPU work, and the event loop serves other requests meanwhile.
        await asyncio.to_thread(self._templates.check, spec.content, attributes)

    async def profile_attributes(self) -> Sequence[dict[str, Any]]:
        """The attributes of a random sample of stored profiles."""
        keys = self._keys
        with unavailable_as_error("sample profiles"):
            users = [
                str(user) for user in await self._redis.srandmember(keys.profiles(), ATTRIBUTE_SAMPLE) or []
            ]
            async with self._redis.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.hget(keys.profile(user_id), "attributes")
                documents = await pipe.execute()
        decoded = [json.loads(document) for document in documents if document]
        return [attributes for attributes in decoded if isinstance(attributes, dict)]


def _new_id(name: str) -> str:
    """A readable, unique id: the name's slug and a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "campaign"
    return f"{slug}-{secrets.token_hex(3)}"
