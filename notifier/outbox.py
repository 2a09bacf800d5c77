"""The outbox: how messages wait, are handed to exactly one delivery worker, retried or given up.

Messages that are due sit in the stream `Keys.outbox`, read through the consumer group
`DELIVERY_GROUP`, so each entry goes to one worker and stays pending until that worker finishes
it; a worker that dies leaves its entries pending, and another takes them over once they have
been idle for `delivery.claim_idle_seconds`. Messages due later (local-time sends, quiet hours,
retries) wait in the sorted set `Keys.outbox_delayed` until `move_due` moves them.

Every change of a message's fate happens in one MULTI together with the XACK + XDEL of its
stream entry (the `stage_*` functions add commands to the caller's transaction), so a crash
leaves either the entry pending (it is sent again: at-least-once) or everything done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from notifier.messages import DEAD, Message
from recsvc.config import DeliveryConfig
from recsvc.keys import DEAD_LETTER_MAXLEN, DELIVERY_GROUP, Keys
from recsvc.redis_conn import unavailable_as_error

# KEYS: delayed set, outbox stream. ARGV: now (unix s), most to move. One script, so a crash
# can neither lose a message (removed but not added) nor duplicate it (added but not removed).
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, message_id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'message_id', message_id)
end
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
end
return #due
"""


@dataclass(frozen=True)
class Entry:
    """One outbox stream entry; `message_id` is None for an entry without one (nothing to send)."""

    entry_id: str
    message_id: str | None


async def move_due(redis: aioredis.Redis, keys: Keys, now: float, limit: int = 1000) -> int:
    """Move up to `limit` delayed messages due by `now` (unix s) into the outbox; how many moved."""
    script = redis.register_script(_MOVE_DUE)
    with unavailable_as_error("outbox move_due"):
        moved = await script(keys=[keys.outbox_delayed(), keys.outbox()], args=[repr(now), str(limit)])
    return int(moved)


async def ensure_group(redis: aioredis.Redis, keys: Keys) -> None:
    """Create the delivery consumer group (and the stream) unless it exists.

    It starts at id 0, so entries added before the first worker ever ran are delivered too.
    """
    with unavailable_as_error("outbox ensure_group"):
        try:
            await redis.xgroup_create(keys.outbox(), DELIVERY_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def read_new(
    redis: aioredis.Redis, keys: Keys, consumer: str, *, count: int, block_seconds: float | None
) -> list[Entry]:
    """Entries no consumer has had yet, now pending for `consumer`; waits up to `block_seconds`."""
    block = None if block_seconds is None else max(1, round(block_seconds * 1000))
    with unavailable_as_error("outbox read"):
        reply = await redis.xreadgroup(
            DELIVERY_GROUP, consumer, {keys.outbox(): ">"}, count=count, block=block
        )
    return [_entry(entry_id, fields) for entry_id, fields in _stream_entries(reply)]


async def reclaim(
    redis: aioredis.Redis, keys: Keys, consumer: str, *, min_idle_seconds: float, count: int
) -> list[Entry]:
    """Take over up to `count` entries that have been pending (unfinished) for `min_idle_seconds`.

    Their consumer died or hung; XAUTOCLAIM makes them `consumer`'s and resets their idle time,
    so two workers reclaiming at once never get the same entry.
    """
    with unavailable_as_error("outbox reclaim"):
        reply = await redis.xautoclaim(
            keys.outbox(), DELIVERY_GROUP, consumer, round(min_idle_seconds * 1000), "0-0", count=count
        )
    return [_entry(entry_id, fields) for entry_id, fields in reply[1] if entry_id is not None]


def stage_finish(pipe: Any, keys: Keys, entry: Entry) -> None:
    """Add the commands that remove a finished entry from the outbox (XACK + XDEL) to a MULTI."""
    pipe.xack(keys.outbox(), DELIVERY_GROUP, entry.entry_id)
    pipe.xdel(keys.outbox(), entry.entry_id)


def backoff_seconds(delivery: DeliveryConfig, attempt: int, retry_after: float | None = None) -> float:
    """The wait before retrying after failed attempt number `attempt` (1-based).

    Exponential (base x 2^(attempt - 1), capped), or the provider's Retry-After when longer:
    retrying sooner than a provider asked only earns another refusal.
    """
    exponential = delivery.backoff_base_seconds * 2.0 ** min(attempt - 1, 62)
    return max(min(delivery.backoff_max_seconds, exponential), retry_after or 0.0)


def stage_retry(pipe: Any, keys: Keys, message_id: str, *, attempts: int, due: float, error: str) -> None:
    """Add the commands that schedule another attempt of a message at `due` (unix s) to a MULTI."""
    pipe.hset(keys.message(message_id), mapping={"attempts": str(attempts), "error": error})
    stage_later(pipe, keys, message_id, due)


def stage_later(pipe: Any, keys: Keys, message_id: str, due: float) -> None:
    """Add the command that queues a message again at `due` (unix s) to a MULTI."""
    pipe.zadd(keys.outbox_delayed(), {message_id: due})


def stage_dead_letter(pipe: Any, keys: Keys, message: Message, *, attempts: int, error: str) -> None:
    """Add the commands that give a message up (status `dead`, a dead-letter entry) to a MULTI.

    The dead-letter stream is what an operator inspects and replays after fixing the cause.
    """
    pipe.hset(
        keys.message(message.message_id),
        mapping={"attempts": str(attempts), "error": error, "status": DEAD},
    )
    letter = {
        "message_id": message.message_id,
        "campaign": message.campaign_id,
        "user": message.user_id,
        "error": error,
        "attempts": str(attempts),
    }
    pipe.xadd(keys.dead_letters(), letter, maxlen=DEAD_LETTER_MAXLEN, approximate=True)


def _stream_entries(reply: Any) -> list[tuple[str, dict[str, str] | None]]:
    """The entries of an XREADGROUP reply (RESP2, as `recsvc.redis_conn` clients speak it)."""
    return [(entry_id, fields) for _, entries in reply or [] for entry_id, fields in entries]


def _entry(entry_id: str, fields: dict[str, str] | None) -> Entry:
    return Entry(entry_id, (fields or {}).get("message_id"))
