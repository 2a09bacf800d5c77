"""What users do with a push: opens and clicks reported by the app, purchases it led to.

Each outcome is a flag on the message hash (`opened`, `clicked`, `converted`: the unix time it
happened), set at most once per message, and the campaign's counter of the same name goes up in
the same transaction as the flag (WATCH on the message, then MULTI: HSETNX + `stats.stage_counts`).
So a retried request, a replayed event or two processes racing count a message once per kind.

Opens and clicks also become training events (`tracking.open_event_type` / `click_event_type`),
recorded through `Store.record_events` like any event the app posts, so they reach the user's
history, trending and the archive. The event is recorded only by the call that set the flag, after
the flag's transaction: a crash in between loses one training event rather than counting twice.

Only a message the provider accepted (status `sent`) can be opened, clicked or converted: one
still queued, suppressed at send time or failed never reached the user. A control-group message
was never sent either, so the app cannot have opened it: it answers like an unknown message
(`NotFoundError`), which also keeps the control group invisible to clients; but a purchase of
its items converts it, the baseline a campaign's lift is measured against.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from notifier import stats
from notifier.messages import CONTROL, SENT
from recsvc.config import Settings
from recsvc.engine import RecentEvent
from recsvc.errors import InputError, NotFoundError
from recsvc.keys import Keys
from recsvc.redis_conn import unavailable_as_error
from recsvc.state import Event, Store, utc_now

log = logging.getLogger(__name__)

Interaction = Literal["opened", "clicked"]
INTERACTIONS: tuple[str, ...] = get_args(Interaction)
# Validates a message's fields before any flag is set; raises to refuse.
Check = Callable[[Mapping[str, str]], None]


@dataclass(frozen=True)
class InteractionResult:
    """What `record_interaction` did; `first` is False when this kind was already recorded."""

    message_id: str
    campaign_id: str
    run_id: str
    user_id: str
    kind: Interaction
    first: bool
    opened: bool
    clicked: bool
    event: Event | None


class Tracker:
    """Records opens, clicks and conversions of the messages of one deployment."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utc_now,
        category_of: Callable[[str], str | None] | None = None,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.redis.prefix)
        self._store = Store(redis, settings, clock=clock)
        self._category_of = category_of or (lambda _item: None)

    async def record_interaction(
        self, message_id: str, kind: str, item_id: str | None, now: datetime
    ) -> InteractionResult:
        """Record that the user opened or clicked message `message_id` at `now`.

        A click implies an open. `item_id` is the item the user went to; it must be one of the
        message's items (default: the first). Unknown and control-group messages raise
        `NotFoundError`, an item the message did not carry `InputError`.
        """
        if kind not in INTERACTIONS:
            raise InputError(f"unknown interaction {kind!r} (known: {', '.join(INTERACTIONS)})", field="kind")
        interaction: Interaction = "clicked" if kind == "clicked" else "opened"
        flags = [stats.CLICKED, stats.OPENED] if interaction == "clicked" else [stats.OPENED]

        def check(fields: Mapping[str, str]) -> None:
            if fields.get("status") != SENT:  # control, still queued, suppressed or failed
                raise NotFoundError(
                    f"no push message {message_id!r} was sent", message_id=message_id, reason="not_sent"
                )
            if item_id is not None and item_id not in _items(fields):
                raise InputError(
                    f"item {item_id!r} is not one of the items of message {message_id!r}", field="item_id"
                )

        flagged = await self._flag(message_id, flags, now.timestamp(), check)
        if flagged is None:
            raise NotFoundError(f"no push message {message_id!r}", message_id=message_id)
        fields, new = flagged
        event = None
        items = _items(fields)
        if interaction in new and items:
            tracking = self._settings.notifier.tracking
            kind_type = tracking.click_event_type if interaction == "clicked" else tracking.open_event_type
            item = item_id or items[0]
            event = Event(fields["user"], item, kind_type, now)
            await self._store.record_events([event], [self._category_of(item)])
        return InteractionResult(
            message_id=message_id,
            campaign_id=fields["campaign"],
            run_id=fields["run"],
            user_id=fields["user"],
            kind=interaction,
            first=interaction in new,
            opened=stats.OPENED in new or stats.OPENED in fields,
            clicked=stats.CLICKED in new or stats.CLICKED in fields,
            event=event,
        )

    async def record_conversions(self, events: Sequence[tuple[str, RecentEvent]]) -> list[str]:
        """Mark the messages that (user, event) pairs convert; returns the ids newly converted.

        An event of `tracking.conversion_event_type` converts the message that pushed its item to
        its user (`Keys.user_pushed_items`) when it happened within `conversion_window_hours` after
        the message was due. A control-group message counts as `control:converted`.
        """
        tracking = self._settings.notifier.tracking
        purchases = [(user, event) for user, event in events if event.type == tracking.conversion_event_type]
        if not purchases:
            return []
        with unavailable_as_error("read pushed items"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for user, event in purchases:
                    pipe.hget(self._keys.user_pushed_items(user), event.item_id)
                records: list[str | None] = await pipe.execute()
        window = tracking.conversion_window_hours * 3600.0
        converted: list[str] = []
        for (_, event), record in zip(purchases, records, strict=True):
            if record is None:
                continue
            pushed = json.loads(record)
            at = event.ts_us / 1e6
            if not float(pushed["t"]) <= at <= float(pushed["t"]) + window:
                continue
            try:
                flagged = await self._flag(str(pushed["m"]), [stats.CONVERTED], at, _delivered_or_control)
            except _NotSent:
                continue
            if flagged is not None and flagged[1]:
                converted.append(str(pushed["m"]))
        return converted

    async def _flag(
        self, message_id: str, flags: Sequence[str], at: float, check: Check | None = None
    ) -> tuple[dict[str, str], list[str]] | None:
        """Set the flags the message lacks, counting each once; (its fields, flags newly set).

        None when the message does not exist (never written, or expired): a flag must not
        recreate it as a hash without a TTL.
        """
        key = self._keys.message(message_id)
        with unavailable_as_error("record message outcome"):
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        fields: dict[str, str] = await pipe.hgetall(key)  # type: ignore[assignment]
                        if not fields:
                            return None
                        if check is not None:
                            check(fields)
                        new = [flag for flag in flags if flag not in fields]
                        if not new:
                            return fields, []
                        control = fields.get("control") == "1"
                        counts = {stats.control(flag) if control else flag: 1 for flag in new}
                        pipe.multi()  # type: ignore[no-untyped-call]
                        for flag in new:
                            pipe.hsetnx(key, flag, repr(at))
                        stats.stage_counts(pipe, self._keys, fields["campaign"], fields["run"], counts)
                        await pipe.execute()
                        return fields, new
                    except WatchError:
                        continue


class _NotSent(Exception):
    """A message that never reached the user: a purchase of its items converts nothing."""


def _delivered_or_control(fields: Mapping[str, str]) -> None:
    if fields.get("status") not in (SENT, CONTROL):
        raise _NotSent


def _items(fields: Mapping[str, str]) -> list[str]:
    return [str(item) for item in json.loads(fields.get("items") or "[]")]
