"""The notifier's reader of the accepted-events stream: it arms and cancels triggers, finds conversions.

It reads `Keys.events` through the consumer group `NOTIFIER_EVENTS_GROUP`. The group is created at
the stream's end (`$`), not its start: events accepted before the notifier first ran are history
that must not fire pushes now (a cart from last month would fire at once), and purchases before
any push cannot be conversions. Once the group exists, the archive never trims an entry the
group has not finished (see `recsvc.archive`), so no event is missed while the notifier is down.

`drain` is one burst: it first re-reads the entries this consumer was given but never
acknowledged (a crash mid-batch), then new ones, until the stream has nothing more; each batch
is acknowledged only after its effects are written. The effects are idempotent (trigger scripts
compare event times, conversion flags are set once), so a replayed batch changes nothing. Only
the leading scheduler drains, under one fixed consumer name, so a new leader re-reads what a
crashed one left pending.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from notifier.store import CampaignStore
from notifier.tracking import Tracker
from notifier.triggers import Triggers, triggered
from recsvc.config import Settings
from recsvc.engine import RecentEvent
from recsvc.keys import NOTIFIER_EVENTS_GROUP, Keys
from recsvc.redis_conn import unavailable_as_error

log = logging.getLogger(__name__)

FEED_CONSUMER = "scheduler"
FEED_BATCH = 500


@dataclass(frozen=True)
class DrainResult:
    """What one burst did: entries read, trigger changes, messages converted, entries skipped."""

    entries: int
    trigger_changes: int
    converted: int
    malformed: int


def stream_event(fields: Mapping[str, str] | None) -> tuple[str, RecentEvent] | None:
    """An event-stream entry (see `recsvc.state.stream_fields`) as (user, event); None if malformed."""
    if not fields:
        return None
    try:
        value = fields.get("value") or None
        event = RecentEvent(
            fields["item_id"], fields["type"], int(fields["ts"]), float(value) if value is not None else None
        )
        return fields["user_id"], event
    except (KeyError, ValueError):
        return None


class EventFeed:
    """Consumes the event stream for triggers and conversions."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        triggers: Triggers,
        tracker: Tracker,
        *,
        campaigns: CampaignStore | None = None,
        consumer: str = FEED_CONSUMER,
        batch: int = FEED_BATCH,
    ) -> None:
        self._redis = redis
        self._keys = Keys(settings.redis.prefix)
        self._triggers = triggers
        self._tracker = tracker
        self._campaigns = campaigns or CampaignStore(redis, settings)
        self._consumer = consumer
        self._batch = batch
        self._group_ready = False

    async def ensure_group(self) -> bool:
        """Create the consumer group at the stream's end if it is missing; True if created now."""
        with unavailable_as_error("create notifier consumer group"):
            try:
                await self._redis.xgroup_create(
                    self._keys.events(), NOTIFIER_EVENTS_GROUP, id="$", mkstream=True
                )
                created = True
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
                created = False
        self._group_ready = True
        return created

    async def drain(self) -> DrainResult:
        """Process every entry available to this consumer, pending ones first; never blocks."""
        if not self._group_ready:
            await self.ensure_group()
        entries = changes = converted = malformed = 0
        position = "0"  # first this consumer's pending entries, then (">") new ones
        while True:
            batch = await self._read(position)
            if batch is None:  # the group vanished (stream deleted): start again at the end
                await self.ensure_group()
                position = "0"
                continue
            if not batch:
                if position == ">":
                    break
                position = ">"
                continue
            done = await self._process(batch)
            entries += len(batch)
            changes, converted, malformed = changes + done[0], converted + done[1], malformed + done[2]
            if position != ">":
                position = str(batch[-1][0])
        return DrainResult(entries, changes, converted, malformed)

    async def _read(self, position: str) -> list[tuple[str, Mapping[str, str] | None]] | None:
        with unavailable_as_error("read event stream"):
            try:
                reply: Any = await self._redis.xreadgroup(
                    NOTIFIER_EVENTS_GROUP, self._consumer, {self._keys.events(): position}, count=self._batch
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                return None
        if not reply:
            return []
        _, entries = reply[0]
        return [(str(entry_id), fields) for entry_id, fields in entries]

    async def _process(self, batch: Sequence[tuple[str, Mapping[str, str] | None]]) -> tuple[int, int, int]:
        """Apply one batch's effects, then acknowledge it; (trigger changes, conversions, malformed)."""
        events: list[tuple[str, RecentEvent]] = []
        malformed = 0
        for entry_id, fields in batch:
            parsed = stream_event(fields)
            if parsed is None:
                log.warning("skipping malformed event stream entry %s: %r", entry_id, fields)
                malformed += 1
            else:
                events.append(parsed)
        changes = 0
        if events:
            campaigns = [campaign for campaign, _ in triggered(await self._campaigns.list())]
            changes = await self._triggers.observe(campaigns, events)
        converted = await self._tracker.record_conversions(events)
        with unavailable_as_error("acknowledge events"):
            await self._redis.xack(
                self._keys.events(), NOTIFIER_EVENTS_GROUP, *(entry_id for entry_id, _ in batch)
            )
        return changes, len(converted), malformed
