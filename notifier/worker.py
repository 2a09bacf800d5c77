"""The delivery worker: takes messages from the outbox and hands them to the push provider.

Any number of workers run side by side as consumers of one stream group (see `notifier.outbox`),
so delivery scales out by starting more of them. Each loop moves due delayed messages into the
outbox, takes over entries a dead worker left pending, reads new entries, and sends each message
to every device of its user, a bounded number of messages at a time, under the provider's rate
limit shared by all workers (`notifier.ratelimit`).

The user's profile is read at send time, not when the campaign ran: consent withdrawn, the user
forgotten, or devices removed since then all stop the push. Those messages are suppressions,
not delivery failures: they are counted `suppressed:<reason>` like the campaign run's own
suppressions (status `failed`, field `error` = the reason), so `failed` keeps meaning what the
provider refused. A forgotten user's message is deleted outright: it holds their data. The
pushed items are checked again as well: an item marked unavailable (`PUT /v1/items`) since the
push was prepared, hours ago for a local-time or deferred push, stops it as `unavailable_item`
rather than advertise what cannot be bought. The timing is judged again too
(`notifier.send_window`): a push that comes to a worker in its user's quiet hours waits for
their end, and one too late is suppressed as `expired`.

The campaign is checked as well, in the same round trip: the pushes of a campaign deleted since
they were queued (or deferred to the morning) are cancelled, status `failed` with error
`campaign_deleted`, and counted nowhere, so a campaign created again under the same id starts
at zero. A push suppressed or cancelled at send time also loses its push record (the one its run
wrote for caps and gaps): it was never sent, so it must not count toward the user's caps.
For a triggered campaign the user's recent events are read in that round trip too: a cancelling
event that came after the push was written (the carted item bought while the reminder waited
for the morning) drops it as `cancelled_by_event`.

Per message, after its sends:
- delivered to at least one device: status `sent`, counted `delivered` once;
- a device whose token the provider declared invalid is removed from the profile, but only if
  its token is still the one that failed (the app may have registered a new one meanwhile);
- nothing delivered and some device failed transiently: retried with exponential backoff, until
  `delivery.max_attempts`, then dead-lettered (status `dead`, counted `failed`);
- nothing delivered, nothing to retry (invalid tokens, permanent errors): status `failed`, counted
  `failed`.
Status, counters, device removals, retry scheduling and XACK + XDEL of the entry happen in one
MULTI, so statistics match the messages exactly even across crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from notifier import outbox, rules, stats
from notifier.campaign import Trigger
from notifier.messages import FAILED, QUEUED, SENT, Message
from notifier.providers import Outcome, Provider, Push, SendResult, build_provider
from notifier.ratelimit import RateLimiter
from notifier.send_window import SendWindow
from notifier.store import CampaignStore
from recsvc.config import Settings
from recsvc.engine import RecentEvent
from recsvc.keys import Keys
from recsvc.redis_conn import RedisUnavailable, connect_async, unavailable_as_error
from recsvc.state import device_field, profile_from_hash, recent_event, utc_now

log = logging.getLogger(__name__)

CONCURRENCY = 32  # messages in flight per worker
SUMMARY_EVERY_SECONDS = 60.0  # how often a busy worker logs what it did
# Redis socket timeout of a standalone worker, beyond the time XREADGROUP blocks by design.
REDIS_TIMEOUT_MARGIN_SECONDS = 5.0
REDIS_RETRY_SECONDS = 5.0  # pause of a worker that cannot reach Redis

# KEYS: the profile hash. ARGV: the device's field, the token that failed. Deletes the device
# only if it still has that token: the app may have registered a new token since the send.
_REMOVE_DEVICE_IF_TOKEN = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored then
  return 0
end
local ok, device = pcall(cjson.decode, stored)
if ok and type(device) == 'table' and device['token'] == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# Tallies of the summary log line and of `DeliveryWorker.tally`.
DELIVERED = "delivered"
FAILED_TALLY = "failed"
RETRIED = "retried"
DEAD = "dead"
SUPPRESSED = "suppressed"
HELD = "held"  # reached a worker in its user's quiet hours: queued again for their end
SKIPPED = "skipped"  # an entry with no message to send: expired, already finished, or malformed
CANCELLED = "cancelled"  # its campaign was deleted since it was queued
DEVICES_REMOVED = "devices_removed"
# The error of a message cancelled because its campaign is gone. Not a campaign counter: the
# campaign's statistics went with it.
CAMPAIGN_DELETED = "campaign_deleted"
# The campaign counters each verdict adds (a dead letter is a failure for the statistics).
_COUNTS: dict[str, dict[str, int]] = {
    DELIVERED: {stats.DELIVERED: 1},
    FAILED_TALLY: {stats.FAILED: 1},
    DEAD: {stats.FAILED: 1},
    RETRIED: {},
}


@dataclass(frozen=True)
class _SendTimeState:
    """What the worker reads about a message at send time, in one round trip."""

    campaign_exists: bool
    forgotten: bool
    profile: dict[str, Any] | None  # None: the user has no profile
    withdrawn: bool  # one of the message's items is now marked unavailable
    recent: list[RecentEvent]  # the user's recent events; read for triggered pushes only


@dataclass(frozen=True)
class _DeviceResult:
    device_id: str
    token: str
    result: SendResult


class DeliveryWorker:
    """One consumer of the outbox; `run` loops until stopped, or until idle with `burst`."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        provider: Provider,
        *,
        consumer: str,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.consumer = consumer
        self.tally: Counter[str] = Counter()  # outcomes since the worker started
        self._redis = redis
        self._keys = Keys(settings.redis.prefix)
        self._delivery = settings.notifier.delivery
        self._provider = provider
        self._clock = clock
        self._sleep = sleep
        self._slots = asyncio.Semaphore(concurrency)
        self._limiter = RateLimiter(
            redis, self._keys.provider_rate(provider.name), provider.rate_per_second, clock=clock
        )
        self._remove_device = redis.register_script(_REMOVE_DEVICE_IF_TOKEN)
        self._window = SendWindow(CampaignStore(redis, settings), settings)
        self._next_reclaim = float("-inf")
        self._logged: Counter[str] = Counter()
        self._next_summary = float("-inf")

    async def run(self, *, burst: bool = False, stop: asyncio.Event | None = None) -> None:
        """Deliver until `stop` is set; with `burst`, return once nothing is due or pending for us.

        Burst mode never blocks or sleeps waiting for work, so tests drive the worker step by
        step with a manual clock. Outside burst mode a Redis outage pauses the worker instead of
        ending it, and a consumer group lost with its stream (Redis restarted empty) is recreated.
        """
        group_ready = False
        try:
            while stop is None or not stop.is_set():
                try:
                    if not group_ready:
                        await outbox.ensure_group(self._redis, self._keys)
                        group_ready = True
                    worked = await self.step(block=not burst)
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    log.warning("the outbox consumer group is gone; creating it again")
                    group_ready = False
                    continue
                except RedisUnavailable as exc:
                    if burst:
                        raise
                    log.warning("%s; trying again in %.0f s", exc, REDIS_RETRY_SECONDS)
                    await self._sleep(REDIS_RETRY_SECONDS)
                    continue
                if burst and not worked:
                    return
                self._log_summary(force=False)
        finally:
            self._log_summary(force=True)

    async def step(self, *, block: bool = False) -> int:
        """One loop: move due messages, reclaim stale entries, read new ones, deliver them all.

        Returns how many entries it handled plus how many delayed messages it moved (0: idle).
        With `block`, waits up to `delivery.block_seconds` for new entries when there are none.
        """
        now = self._now()
        moved = await outbox.move_due(self._redis, self._keys, now)
        entries: list[outbox.Entry] = []
        if now >= self._next_reclaim:
            self._next_reclaim = now + self._delivery.claim_idle_seconds / 2
            entries = await outbox.reclaim(
                self._redis,
                self._keys,
                self.consumer,
                min_idle_seconds=self._delivery.claim_idle_seconds,
                count=self._delivery.read_count,
            )
        room = self._delivery.read_count - len(entries)
        if room > 0:
            wait = self._delivery.block_seconds if block and not (entries or moved) else None
            entries += await outbox.read_new(
                self._redis, self._keys, self.consumer, count=room, block_seconds=wait
            )
        outcomes = await asyncio.gather(
            *(self._deliver_bounded(entry) for entry in entries), return_exceptions=True
        )
        _raise_outage(entries, outcomes)
        return moved + len(entries)

    # --- one message ----------------------------------------------------------------------------

    async def _deliver_bounded(self, entry: outbox.Entry) -> None:
        async with self._slots:
            await self._deliver(entry)

    async def _deliver(self, entry: outbox.Entry) -> None:
        keys = self._keys
        fields: dict[str, str] = {}
        if entry.message_id is not None:
            with unavailable_as_error("delivery read message"):
                fields = await self._redis.hgetall(keys.message(entry.message_id))  # type: ignore[assignment]
        if entry.message_id is None or fields.get("status") != QUEUED:
            # Expired, finished already (a duplicate entry), or not a message at all: drop the entry.
            await self._finish(entry, tally=SKIPPED)
            return
        try:
            message = Message.from_fields(entry.message_id, fields)
        except (KeyError, ValueError):
            log.exception("message %s is malformed; dropping it", entry.message_id)
            await self._finish(entry, tally=SKIPPED)
            return
        attempts = int(fields.get("attempts") or 0) + 1
        trigger = await self._window.trigger(message.campaign_id, self._now())
        state = await self._current_state(message, with_history=trigger is not None)
        devices = _devices(state.profile)
        reason = _suppression(state, devices) or _cancelled_since(message, fields, trigger, state.recent)
        if reason is not None:
            await self._suppress(entry, message, reason, counted=state.campaign_exists)
            return
        hold = await self._window.hold(message, state.profile, self._now())
        if hold is not None:
            if hold.until is None:
                await self._suppress(entry, message, stats.EXPIRED, counted=True)
            else:
                await self._hold_until(entry, message, hold.until)
            return
        sends = [self._send(message, device_id, token, platform) for device_id, token, platform in devices]
        await self._settle(entry, message, attempts, await asyncio.gather(*sends))

    async def _current_state(self, message: Message, *, with_history: bool) -> _SendTimeState:
        """The message's campaign, user and items as they are now (see `_SendTimeState`); the
        user's recent events only `with_history` (a triggered push, which they may cancel)."""
        keys = self._keys
        with unavailable_as_error("delivery read profile"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hexists(keys.campaigns(), message.campaign_id)
                pipe.sismember(keys.forgotten(), message.user_id)
                pipe.hgetall(keys.profile(message.user_id))
                if message.items:
                    pipe.hmget(keys.catalog_overrides(), list(message.items))
                if with_history:
                    pipe.lrange(keys.history(message.user_id), 0, -1)
                campaign_exists, forgotten, stored, *rest = await pipe.execute()
        overrides = rest.pop(0) if message.items else []
        history = rest.pop(0) if with_history else []
        return _SendTimeState(
            campaign_exists=bool(campaign_exists),
            forgotten=bool(forgotten),
            profile=profile_from_hash(message.user_id, stored),
            withdrawn=any(json.loads(raw).get("available") is False for raw in overrides if raw),
            recent=[recent_event(entry) for entry in history],
        )

    async def _send(
        self, message: Message, device_id: str, token: str, platform: str | None
    ) -> _DeviceResult:
        push = Push(
            message_id=message.message_id,
            campaign_id=message.campaign_id,
            user_id=message.user_id,
            device_id=device_id,
            token=token,
            platform=platform,
            title=message.title,
            body=message.body,
            deep_link=message.deep_link,
            items=message.items,
            expires_at=self._window.expires_at(message),
        )
        while (wait := await self._limiter.acquire()) > 0:
            await self._sleep(wait)
        try:
            result = await self._provider.send(push)
        except Exception as exc:  # a provider bug must not stop delivery of everything else
            log.exception("provider %s failed on message %s", self._provider.name, message.message_id)
            result = SendResult(Outcome.TRANSIENT, f"provider error: {type(exc).__name__}: {exc}")
        return _DeviceResult(device_id, token, result)

    async def _settle(
        self, entry: outbox.Entry, message: Message, attempts: int, results: Sequence[_DeviceResult]
    ) -> None:
        """Record the sends' outcome, and finish the entry, in one transaction."""
        keys = self._keys
        verdict = self._verdict(results, attempts)
        invalid = [result for result in results if result.result.outcome is Outcome.INVALID_TOKEN]
        errors = "; ".join(
            f"{result.device_id}: {result.result.detail or result.result.outcome}"
            for result in results
            if result.result.outcome is not Outcome.DELIVERED
        )
        with unavailable_as_error("delivery settle"):
            async with self._redis.pipeline(transaction=True) as pipe:
                for result in invalid:
                    field = device_field(result.device_id)
                    await self._remove_device(
                        keys=[keys.profile(message.user_id)], args=[field, result.token], client=pipe
                    )
                self._stage_verdict(pipe, message, verdict, attempts, errors, results)
                stats.stage_counts(pipe, keys, message.campaign_id, message.run_id, _COUNTS[verdict])
                outbox.stage_finish(pipe, keys, entry)
                replies = await pipe.execute()
        self.tally[verdict] += 1
        self.tally[DEVICES_REMOVED] += sum(int(reply) for reply in replies[: len(invalid)])
        if verdict != DELIVERED:
            log.debug("message %s: %s (attempt %d): %s", message.message_id, verdict, attempts, errors)

    def _verdict(self, results: Sequence[_DeviceResult], attempts: int) -> str:
        outcomes = {result.result.outcome for result in results}
        if Outcome.DELIVERED in outcomes:
            return DELIVERED
        if Outcome.TRANSIENT in outcomes:
            return RETRIED if attempts < self._delivery.max_attempts else DEAD
        return FAILED_TALLY

    def _stage_verdict(
        self,
        pipe: Any,
        message: Message,
        verdict: str,
        attempts: int,
        errors: str,
        results: Sequence[_DeviceResult],
    ) -> None:
        key = self._keys.message(message.message_id)
        if verdict == RETRIED:
            retry_after = max(
                (result.result.retry_after or 0.0)
                for result in results
                if result.result.outcome is Outcome.TRANSIENT
            )
            due = self._now() + outbox.backoff_seconds(self._delivery, attempts, retry_after)
            outbox.stage_retry(pipe, self._keys, message.message_id, attempts=attempts, due=due, error=errors)
        elif verdict == DEAD:
            outbox.stage_dead_letter(pipe, self._keys, message, attempts=attempts, error=errors)
        elif verdict == DELIVERED:
            sent = {"status": SENT, "attempts": str(attempts), "sent_at": repr(self._now())}
            pipe.hset(key, mapping={**sent, "error": errors} if errors else sent)
        else:
            pipe.hset(key, mapping={"status": FAILED, "attempts": str(attempts), "error": errors})

    async def _suppress(self, entry: outbox.Entry, message: Message, reason: str, *, counted: bool) -> None:
        """Drop a message unsent: its status (or, for a forgotten user, the message itself), its
        push record, which must not count toward the user's caps, and, if `counted` (its campaign
        still exists), the campaign's `suppressed:<reason>` counter, with the entry's finish."""
        keys = self._keys
        member = rules.push_member(message.campaign_id, message.run_id)
        with unavailable_as_error("delivery suppress"):
            async with self._redis.pipeline(transaction=True) as pipe:
                if reason == stats.FORGOTTEN:
                    pipe.delete(keys.message(message.message_id))
                else:
                    pipe.hset(keys.message(message.message_id), mapping={"status": FAILED, "error": reason})
                pipe.zrem(keys.user_pushes(message.user_id), member)
                if counted:
                    stats.stage_counts(
                        pipe, keys, message.campaign_id, message.run_id, {stats.suppressed(reason): 1}
                    )
                outbox.stage_finish(pipe, keys, entry)
                await pipe.execute()
        self.tally[SUPPRESSED if counted else CANCELLED] += 1

    async def _hold_until(self, entry: outbox.Entry, message: Message, due: float) -> None:
        """Queue the message again for `due` (the end of its user's quiet hours), still `queued`;
        its push record moves too, so caps count it on the day it goes out."""
        keys = self._keys
        member = rules.push_member(message.campaign_id, message.run_id)
        with unavailable_as_error("delivery hold"):
            async with self._redis.pipeline(transaction=True) as pipe:
                outbox.stage_later(pipe, keys, message.message_id, due)
                pipe.zadd(keys.user_pushes(message.user_id), {member: due}, xx=True)
                outbox.stage_finish(pipe, keys, entry)
                await pipe.execute()
        self.tally[HELD] += 1

    async def _finish(self, entry: outbox.Entry, *, tally: str) -> None:
        with unavailable_as_error("delivery finish"):
            async with self._redis.pipeline(transaction=True) as pipe:
                outbox.stage_finish(pipe, self._keys, entry)
                await pipe.execute()
        self.tally[tally] += 1

    # --- bookkeeping ----------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock().timestamp()

    def _log_summary(self, *, force: bool) -> None:
        """At most one INFO line a minute (and one at the end), and only when something happened."""
        now = self._now()
        if not force and now < self._next_summary:
            return
        done = self.tally - self._logged
        if not done:
            return
        self._next_summary = now + SUMMARY_EVERY_SECONDS
        self._logged = self.tally.copy()
        log.info(
            "delivery worker %s (%s): %s",
            self.consumer,
            self._provider.name,
            ", ".join(f"{count} {name}" for name, count in sorted(done.items())),
        )


def _raise_outage(entries: Sequence[outbox.Entry], outcomes: Sequence[object]) -> None:
    """Log the messages whose delivery failed unexpectedly (their entries stay pending, so they
    are retried once reclaimed), then raise a Redis outage among them: the loop handles that."""
    outage: RedisUnavailable | None = None
    for entry, outcome in zip(entries, outcomes, strict=True):
        if isinstance(outcome, RedisUnavailable):
            outage = outage or outcome
        elif isinstance(outcome, BaseException):
            log.error("delivering %s failed", entry.message_id, exc_info=outcome)
    if outage is not None:
        raise outage


def _cancelled_since(
    message: Message, fields: Mapping[str, str], trigger: Trigger | None, recent: Sequence[RecentEvent]
) -> str | None:
    """`CANCELLED_BY_EVENT` when a cancelling event of the push's trigger came after the push was
    written (a cart reminder deferred to the morning, and the item bought meanwhile); with
    `same_item`, only an event on one of the pushed items counts."""
    if trigger is None or not trigger.cancel_on:
        return None
    written_us = int(float(fields.get("created") or message.due) * 1e6)
    cancelling = (
        event
        for event in recent
        if event.type in trigger.cancel_on
        and event.ts_us >= written_us
        and (not trigger.same_item or event.item_id in message.items)
    )
    return stats.CANCELLED_BY_EVENT if next(cancelling, None) is not None else None


def _suppression(state: _SendTimeState, devices: Sequence[tuple[str, str, str | None]]) -> str | None:
    """Why the user must not get this push now, or None if they may. A forgotten user comes
    first: their message is deleted, whatever else holds."""
    if state.forgotten:
        return stats.FORGOTTEN
    if not state.campaign_exists:
        return CAMPAIGN_DELETED
    if state.profile is not None and not state.profile.get("push_consent"):
        return stats.NO_CONSENT
    if not devices:
        return stats.NO_DEVICE
    if state.withdrawn:
        return stats.UNAVAILABLE_ITEM
    return None


def _devices(profile: Mapping[str, Any] | None) -> list[tuple[str, str, str | None]]:
    """(device id, token, platform) of every device of a profile that has a token."""
    devices: Mapping[str, Any] = (profile or {}).get("devices") or {}
    return [
        (device_id, device["token"], device.get("platform"))
        for device_id, device in sorted(devices.items())
        if isinstance(device, Mapping) and isinstance(device.get("token"), str) and device["token"]
    ]


def default_consumer_name() -> str:
    """Unique per process and readable in XINFO CONSUMERS: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def run_worker(settings: Settings, *, burst: bool = False) -> None:
    """`recsvc worker`: one worker with the configured provider, until SIGINT/SIGTERM (or idle, burst).

    The first signal lets the batch in flight finish; a second one interrupts at once.
    """
    timeout = settings.notifier.delivery.block_seconds + REDIS_TIMEOUT_MARGIN_SECONDS
    redis = connect_async(settings, timeout=timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def request_stop() -> None:
        log.info("stopping after the messages in flight")
        stop.set()
        for signum in signals:
            loop.remove_signal_handler(signum)

    for signum in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
            loop.add_signal_handler(signum, request_stop)
    try:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=CONCURRENCY * 2)) as http:
            provider = build_provider(settings, http)
            worker = DeliveryWorker(redis, settings, provider, consumer=default_consumer_name())
            log.info("delivery worker %s started with provider %s", worker.consumer, provider.name)
            await worker.run(burst=burst, stop=stop)
    finally:
        for signum in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signum)
        await redis.aclose()
