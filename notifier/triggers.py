"""Triggered pushes: an event arms a push for later, a cancelling event disarms it, a poll fires it.

Per campaign with a `trigger`, the sorted set `Keys.campaign_triggers` holds when each user's
pending push falls due and the hash `Keys.campaign_trigger_events` the event that armed it.
`observe` applies a batch of accepted events to them (the event feed calls it); `fire_due` hands
the users whose push is due to the campaign runner, all in the day's run `t<YYYYMMDD>` (UTC), so
a user armed twice in a day, or fired twice after a crash, still gets at most one message of the
campaign that day (the runner writes each (campaign, run, user) message once).

Every change is a script that compares before it writes, so replaying events (after a crash,
or two schedulers overlapping during a handover) and firing concurrently with new events are
safe: an event never overrides or cancels a pending push armed by a newer event, and firing
deletes exactly the entries it fired, never a re-arm that arrived meanwhile.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis

from notifier.campaign import Campaign, Trigger
from notifier.runner import RunSummary
from notifier.store import CampaignStore
from recsvc.config import Settings
from recsvc.engine import RecentEvent
from recsvc.errors import RecsvcError
from recsvc.keys import Keys
from recsvc.redis_conn import unavailable_as_error

log = logging.getLogger(__name__)

TRIGGER_RUN_PREFIX = "t"

# KEYS: due set, armed-events hash. ARGV: user, due (unix s), event JSON, event ts (unix us).
# Arm (or re-arm) unless the pending push was armed by a newer event.
_ARM = """
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if stored and tonumber(cjson.decode(stored)['ts']) > tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
"""

# KEYS: due set, armed-events hash. ARGV: user, event ts (unix us), "1" if only the armed item
# cancels, the event's item. Cancel unless the push was armed after this event.
_CANCEL = """
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if not stored then return 0 end
local armed = cjson.decode(stored)
if tonumber(armed['ts']) > tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '1' and armed['item'] ~= ARGV[4] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS: due set, armed-events hash. ARGV: user, the event JSON that fired ('' if none).
# Delete the entry only if it is still the one fired (a newer event may have re-armed it).
_FIRED = """
local stored = redis.call('HGET', KEYS[2], ARGV[1]) or ''
if stored ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


class RunCampaign(Protocol):
    """What firing needs of `notifier.runner.CampaignRunner`."""

    async def run(
        self,
        campaign: Campaign,
        run_id: str,
        *,
        users: Sequence[str] | None = None,
        trigger_events: Mapping[str, RecentEvent] | None = None,
    ) -> RunSummary: ...


def trigger_run_id(now: datetime) -> str:
    """The run that collects a campaign's triggered pushes of one UTC day."""
    return TRIGGER_RUN_PREFIX + now.astimezone(UTC).strftime("%Y%m%d")


def armed_event(document: str, event_type: str) -> RecentEvent:
    """A stored arming event (JSON {"item", "ts"}) as the runner's trigger event."""
    fields = json.loads(document)
    return RecentEvent(str(fields["item"]), event_type, int(fields["ts"]))


def _armed_json(event: RecentEvent) -> str:
    return json.dumps({"item": event.item_id, "ts": event.ts_us}, separators=(",", ":"))


def triggered(campaigns: Sequence[Campaign]) -> list[tuple[Campaign, Trigger]]:
    """The campaigns that arm and fire pushes now: active ones with a trigger."""
    return [(c, c.trigger) for c in campaigns if c.trigger is not None and c.status == "active"]


class Triggers:
    """Arms, cancels and fires the triggered pushes of one deployment."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        runner: RunCampaign,
        *,
        campaigns: CampaignStore | None = None,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._runner = runner
        self._keys = Keys(settings.redis.prefix)
        self._campaigns = campaigns or CampaignStore(redis, settings)

    async def observe(self, campaigns: Sequence[Campaign], events: Sequence[tuple[str, RecentEvent]]) -> int:
        """Apply (user, event) pairs, in stream order, to the campaigns' pending pushes.

        An event of a campaign's `trigger.event` arms the user's push at its time plus the delay
        (a newer one re-arms it); an event in `cancel_on` cancels it (with `same_item`, only an
        event on the armed item). Paused campaigns neither arm nor cancel. Returns the changes.
        """
        active = triggered(campaigns)
        if not active or not events:
            return 0
        with unavailable_as_error("apply trigger events"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for user, event in events:
                    for campaign, trigger in active:
                        self._stage(pipe, campaign.id, trigger, user, event)
                changes = await pipe.execute()
        return sum(int(change) for change in changes)

    def _stage(self, pipe: Any, campaign_id: str, trigger: Trigger, user: str, event: RecentEvent) -> None:
        """Queue what one event does to one campaign's pending push of its user (maybe nothing)."""
        keys = (self._keys.campaign_triggers(campaign_id), self._keys.campaign_trigger_events(campaign_id))
        ts = str(event.ts_us)
        if event.type in trigger.cancel_on:
            pipe.eval(_CANCEL, 2, *keys, user, ts, "1" if trigger.same_item else "0", event.item_id)
        if event.type == trigger.event:
            due = event.ts_us / 1e6 + trigger.delay_minutes * 60.0
            pipe.eval(_ARM, 2, *keys, user, repr(due), _armed_json(event), ts)

    async def fire_due(self, now: datetime) -> dict[str, int]:
        """Run every active triggered campaign for its users whose push is due by `now`.

        Returns the number of users handed to the runner per campaign. A campaign whose run fails
        is logged and keeps its entries, so the next poll tries again; paused campaigns keep theirs
        until they are resumed.
        """
        fired: dict[str, int] = {}
        for campaign, trigger in triggered(await self._campaigns.list()):
            try:
                fired[campaign.id] = await self._fire(campaign, trigger, now)
            except RecsvcError as exc:
                log.error(
                    "triggered pushes of campaign %s failed, retrying later: %s", campaign.id, exc.detail
                )
        return fired

    async def _fire(self, campaign: Campaign, trigger: Trigger, now: datetime) -> int:
        keys = self._keys
        due_key = keys.campaign_triggers(campaign.id)
        events_key = keys.campaign_trigger_events(campaign.id)
        with unavailable_as_error("read due triggers"):
            due = [str(user) for user in await self._redis.zrangebyscore(due_key, "-inf", now.timestamp())]
        size = self._settings.notifier.batch_size
        for start in range(0, len(due), size):
            users = due[start : start + size]
            with unavailable_as_error("read trigger events"):
                stored: list[str | None] = await self._redis.hmget(events_key, users)  # type: ignore[assignment]
            events = {
                user: armed_event(raw, trigger.event) for user, raw in zip(users, stored, strict=True) if raw
            }
            summary = await self._runner.run(
                campaign, trigger_run_id(now), users=users, trigger_events=events
            )
            log.info(
                "campaign %s: fired %d triggered push(es) in run %s (%d message(s))",
                campaign.id,
                len(users),
                summary.run_id,
                summary.messages,
            )
            with unavailable_as_error("clear fired triggers"):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for user, raw in zip(users, stored, strict=True):
                        pipe.eval(_FIRED, 2, due_key, events_key, user, raw or "")
                    await pipe.execute()
        return len(due)
