"""The dead-letter stream: pushes given up after `delivery.max_attempts`, for an operator to list
and, once the cause is fixed (a provider outage, a wrong key), to replay.

Replaying queues a message again as it was: status `queued`, no attempts, due now (workers move
it from the delayed set at once), and takes back the `failed` it was counted as, so a replayed
push that then goes out counts as `delivered` and not also as failed. Its entry leaves the
stream. An entry whose message is gone (kept `message_ttl_days`) or no longer `dead` is only
removed, and counted as skipped. The send-time checks still apply: a replayed message more than
`max_delay_hours` late expires instead of going out.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from notifier import outbox, stats
from notifier.messages import DEAD, QUEUED
from recsvc.keys import Keys
from recsvc.redis_conn import unavailable_as_error

PAGE = 1_000  # entries read from the stream at a time


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    message_id: str
    campaign_id: str
    user_id: str
    error: str
    attempts: int


@dataclass(frozen=True)
class Replayed:
    replayed: int
    skipped: int


async def dead_letters(
    redis: aioredis.Redis, keys: Keys, *, campaign_id: str | None = None, limit: int | None = None
) -> list[DeadLetter]:
    """The stream's entries, oldest first; only `campaign_id`'s if given, at most `limit`."""
    found: list[DeadLetter] = []
    start = "-"
    while limit is None or len(found) < limit:
        with unavailable_as_error("read dead letters"):
            page: list[tuple[str, dict[str, str]]] = await redis.xrange(  # type: ignore[assignment]
                keys.dead_letters(), min=start, count=PAGE
            )
        for entry_id, fields in page:
            letter = DeadLetter(
                entry_id=entry_id,
                message_id=fields.get("message_id", ""),
                campaign_id=fields.get("campaign", ""),
                user_id=fields.get("user", ""),
                error=fields.get("error", ""),
                attempts=int(fields.get("attempts") or 0),
            )
            if campaign_id is None or letter.campaign_id == campaign_id:
                found.append(letter)
        if len(page) < PAGE:
            break
        start = "(" + page[-1][0]
    return found[:limit]


async def replay(
    redis: aioredis.Redis, keys: Keys, now: float, *, campaign_id: str | None = None
) -> Replayed:
    """Queue every dead message (of `campaign_id`, if given) again, due `now`."""
    replayed = skipped = 0
    for letter in await dead_letters(redis, keys, campaign_id=campaign_id):
        if await _replay_one(redis, keys, letter, now):
            replayed += 1
        else:
            skipped += 1
    return Replayed(replayed, skipped)


async def _replay_one(redis: aioredis.Redis, keys: Keys, letter: DeadLetter, now: float) -> bool:
    """Queue one dead message again and drop its entry, atomically: the message is watched, so a
    second replay at the same time finds it `queued` and only drops the entry."""
    message_key = keys.message(letter.message_id)
    with unavailable_as_error("replay dead letter"):
        async with redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(message_key)
                    status, run_id = await pipe.hmget(message_key, ["status", "run"])
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.xdel(keys.dead_letters(), letter.entry_id)
                    run = run_id if status == DEAD and isinstance(run_id, str) else None
                    if run is not None:
                        pipe.hset(message_key, mapping={"status": QUEUED, "attempts": "0"})
                        pipe.hdel(message_key, "error")
                        outbox.stage_later(pipe, keys, letter.message_id, now)
                        stats.stage_counts(pipe, keys, letter.campaign_id, run, {stats.FAILED: -1})
                    await pipe.execute()
                    return run is not None
                except WatchError:
                    continue
