"""A campaign run's batch write: every command of a batch in one atomic Lua script (`APPLY`).

The runner stages a batch's writes (messages, the users' push records and pushed items, counters,
the run's checkpoint, the lease's renewal) on a `BatchWrite`, which records them instead of
sending them, then sends them as one `APPLY` call. The script applies them only while the run's
leases still hold the runner's token, so a process that lost a lease writes nothing at all.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from redis.commands.core import DataAccessCommands

from notifier import rules
from notifier.messages import Message
from notifier.segments import UserData
from recsvc.keys import Keys

# Apply a batch's writes, atomically, only while every lease in KEYS (the run's, and the
# deployment's campaign writer) holds this execution's token (ARGV[1]). ARGV[2] is the JSON list
# of the commands [name, key, arg, ...]. One script instead of a MULTI/EXEC of seven commands a
# message: redis-py's per-command work (packing, then a reply each for QUEUED) dominated runs.
# The commands' keys travel in the JSON, not as KEYS: redis-py packs every KEYS argument in
# Python (about 1.5 us each, 35,000 a batch of 5,000), and a batch spans many users' hash slots,
# so it could not run on a Redis Cluster however its keys were declared.
APPLY = """
for _, lease in ipairs(KEYS) do
  if redis.call('GET', lease) ~= ARGV[1] then return 0 end
end
for _, command in ipairs(cjson.decode(ARGV[2])) do
  redis.call(unpack(command))
end
return 1
"""
# Commands that read their float arguments as numbers. Numbers reach `APPLY` as JSON numbers,
# which Lua hands to Redis formatted as doubles ("%.17g"): the same value (an int below 2^53 as
# itself), but other text than redis-py's repr, so a float where Redis stores text is refused.
_PARSES_FLOATS = frozenset({"ZADD", "ZINCRBY", "ZREMRANGEBYSCORE", "HINCRBYFLOAT", "INCRBYFLOAT"})
_ARGUMENT_TYPES = frozenset({str, int, float})

_COMPACT = json.JSONEncoder(separators=(",", ":"))  # one encoder, not one per pushed-items record


class BatchWrite(DataAccessCommands):
    """Records the commands that staging functions (`stage_messages`, `stats.stage_counts`, ...)
    add to a pipeline, for `APPLY`: redis-py's own command methods build their arguments.

    It exists because a batch's writes must be one atomic, lease-guarded call, and a MULTI/EXEC
    pipeline of thousands of commands cost more in redis-py than the run's deciding did; the
    staging functions stay the ones a pipeline takes, so there is one way to write each record.
    """

    _event_dispatcher: Any = None  # redis-py's command protocol declares it; recording needs none

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> None:
        """Record a command; refused now, before anything is sent, if `APPLY` could not run it
        (a bad argument would otherwise stop the script half-way, its earlier writes applied)."""
        kinds = set(map(type, args))
        if not kinds <= _ARGUMENT_TYPES or (float in kinds and args[0] not in _PARSES_FLOATS):
            raise TypeError(f"{args[0]}: arguments must be str or int (float only where Redis parses it)")
        self.commands.append(args)

    def encoded(self) -> str:
        """The commands as one JSON list (see `APPLY`)."""
        return json.dumps(self.commands, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Windows:
    """Seconds push records (`pushes`) and pushed items (`items`) are kept after they fall due."""

    pushes: float
    items: float


def stage_records(
    pipe: Any, keys: Keys, user: UserData, message: Message, now: float, windows: Windows
) -> None:
    """Queue the push record (caps, gaps) and pushed items (no-repeat, attribution) of a message.

    A control-group message records its items only, marked as control: it was never sent, so it
    counts for no cap and blocks no item from being pushed (`rules.recently_pushed`), but a
    purchase of one of its items within the conversion window is the control group's conversion,
    the baseline a campaign's lift is measured against. It never replaces the record of an item
    a message did push, which keeps that item from being pushed again.
    Records older than their window are trimmed; each key expires a window after its latest due
    time (read with the batch, so a later push of another campaign keeps its TTL).
    """
    if not message.control:
        pushes = keys.user_pushes(user.user_id)
        pipe.zadd(pushes, {rules.push_member(message.campaign_id, message.run_id): message.due})
        if any(record.due < now - windows.pushes for record in user.pushes):
            pipe.zremrangebyscore(pushes, "-inf", f"({now - windows.pushes!r}")
        latest = max([message.due, *(record.due for record in user.pushes)])
        pipe.expire(pushes, max(1, math.ceil(latest - now + windows.pushes)))
    items = keys.user_pushed_items(user.user_id)
    stale = [item for item, pushed in user.pushed_items.items() if pushed.due < now - windows.items]
    if stale:
        pipe.hdel(items, *stale)
    fields: dict[str, object] = {"m": message.message_id, "t": message.due}
    if message.control:
        fields["c"] = 1
    record = _COMPACT.encode(fields)
    recorded = [item for item in message.items if not (message.control and _holds_a_push(user, item, stale))]
    if recorded:
        pipe.hset(items, mapping=dict.fromkeys(recorded, record))
    kept = [pushed.due for item, pushed in user.pushed_items.items() if item not in stale]
    pipe.expire(items, max(1, math.ceil(max([message.due, *kept]) - now + windows.items)))


def _holds_a_push(user: UserData, item: str, stale: list[str]) -> bool:
    """Whether `item`'s record is of a message that pushed it, still within its window."""
    existing = user.pushed_items.get(item)
    return existing is not None and not existing.control and item not in stale
