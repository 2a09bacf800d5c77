"""Who a campaign reaches: segment predicates, sampling and the control group, over data from Redis.

The population is the set of users with a profile (`Keys.profiles`). A batch of users is read
in one non-transactional pipeline (`read_users`) and judged by pure functions (`explain`,
`matches`, `sampled`, `in_control`), which the runner, the preview and the audience count share.

Attribute predicates on a missing attribute (absent, or null): only `ne`, `not_in` and `missing`
hold, as a marketer reads "tier is not gold" to include users without a tier; every other op
fails. Comparisons (`gt` ... `between`) hold only for numbers (booleans are not numbers), and
`eq` never equates a boolean with a number. `timezone` tests the profile's stored timezone.

Sampling and control use hashes, not random numbers, so they are reproducible: `sample_percent`
takes a fresh sample each run (hash of campaign, run and user), `control_percent` a control group
that stays the same across a campaign's runs (hash of campaign and user).
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from notifier.campaign import AttributePredicate, Segment
from notifier.rules import PushedItem, PushRecord, push_record
from recsvc.engine import RecentEvent
from recsvc.keys import Keys
from recsvc.redis_conn import unavailable_as_error
from recsvc.state import profile_from_hash, recent_event, unix_micros

VIEW_TYPES = frozenset({"view", "add_to_cart"})
_COMPARISONS: dict[str, Callable[[Any, Any], Any]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_BUCKETS = 2**64
READ_CHUNK = 1_000  # users per Lua call: a few milliseconds of Redis time each

# ARGV[2]: the JSON list of key names, per user: profile, history, dismissed, pushes, pushed
# items (and message, if ARGV[1] is 6). Not KEYS: redis-py packs each KEYS argument in Python,
# which cost more than Redis's reads (see `notifier.batch_write.APPLY`).
_READ_USERS = """
local per_user = tonumber(ARGV[1])
local names = cjson.decode(ARGV[2])
local users = {}
for at = 1, #names, per_user do
  local user = {
    redis.call('HGETALL', names[at]),
    redis.call('LRANGE', names[at + 1], 0, -1),
    redis.call('SMEMBERS', names[at + 2]),
    redis.call('ZRANGE', names[at + 3], 0, -1, 'WITHSCORES'),
    redis.call('HGETALL', names[at + 4]),
  }
  if per_user == 6 then user[6] = redis.call('EXISTS', names[at + 5]) end
  users[#users + 1] = user
end
return users
"""


@dataclass(frozen=True)
class UserData:
    """Everything a run reads about one user; `recent` is newest first, `profile` None if absent."""

    user_id: str
    profile: dict[str, Any] | None
    recent: list[RecentEvent]
    dismissed: frozenset[str]
    pushes: tuple[PushRecord, ...]
    pushed_items: dict[str, PushedItem]
    forgotten: bool = False
    message_written: bool = False  # this run's message for the user exists (a resumed run)


@dataclass(frozen=True)
class Check:
    """One segment condition and whether the user meets it, for the preview's "why"."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Behaviour:
    """What behaviour predicates need besides the user: now, the purchase type, item categories."""

    now: datetime
    purchase_type: str
    category_of: Callable[[str], str | None]


# --- reading --------------------------------------------------------------------------------------


async def scan_population(
    redis: aioredis.Redis, keys: Keys, batch_size: int, cursor: int = 0
) -> AsyncIterator[tuple[int, list[str]]]:
    """Pages of the population (SSCAN, about `batch_size` each) with the cursor after each page.

    Starting from a saved cursor resumes the scan. SSCAN may return a member twice (when the set
    is resized meanwhile); callers drop repeats.
    """
    while True:
        with unavailable_as_error("scan population"):
            cursor, page = await redis.sscan(keys.profiles(), cursor, count=batch_size)
        yield cursor, [str(user) for user in page]
        if cursor == 0:
            return


async def read_users(
    redis: aioredis.Redis,
    keys: Keys,
    user_ids: Sequence[str],
    *,
    message_keys: Sequence[str] | None = None,
) -> list[UserData]:
    """Profiles, histories, dismissals, push records and forgotten flags of `user_ids`, in one
    non-transactional pipeline; with `message_keys` (one per user), whether each exists."""
    return (await fetch_users(redis, keys, user_ids, message_keys=message_keys)).decode()


@dataclass(frozen=True)
class FetchedUsers:
    """What `read_users` reads, as Redis returned it: decoding it (JSON, objects) takes more CPU
    than reading it, so a caller may decode when it would otherwise only wait (`notifier.runner`)."""

    user_ids: Sequence[str]
    forgotten: Sequence[Any]
    replies: Sequence[list[Any]]

    def decode(self) -> list[UserData]:
        return [
            _user_data(user_id, forgotten, reply)
            for user_id, forgotten, reply in zip(self.user_ids, self.forgotten, self.replies, strict=True)
        ]


async def fetch_users(
    redis: aioredis.Redis,
    keys: Keys,
    user_ids: Sequence[str],
    *,
    message_keys: Sequence[str] | None = None,
) -> FetchedUsers:
    """`read_users` without the decoding.

    The per-user reads run in Lua (`_READ_USERS`, `READ_CHUNK` users a call): one command and one
    reply per chunk instead of five or six per user, whose client-side cost dominated a run.
    """
    if not user_ids:
        return FetchedUsers(user_ids, [], [])
    per_user = 6 if message_keys is not None else 5
    with unavailable_as_error("read users"):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.smismember(keys.forgotten(), list(user_ids))
            for start in range(0, len(user_ids), READ_CHUNK):
                names: list[str] = []
                for position in range(start, min(start + READ_CHUNK, len(user_ids))):
                    user_id = user_ids[position]
                    names += (
                        keys.profile(user_id),
                        keys.history(user_id),
                        keys.dismissed(user_id),
                        keys.user_pushes(user_id),
                        keys.user_pushed_items(user_id),
                    )
                    if message_keys is not None:
                        names.append(message_keys[position])
                pipe.eval(_READ_USERS, 0, per_user, json.dumps(names, ensure_ascii=False))
            forgotten_flags, *chunks = await pipe.execute()
    return FetchedUsers(user_ids, forgotten_flags, [reply for chunk in chunks for reply in chunk])


def _user_data(user_id: str, forgotten: Any, reply: list[Any]) -> UserData:
    """One user's `_READ_USERS` reply (hashes and scored members as flat lists) as `UserData`."""
    profile, history, dismissed, pushes, items, *written = reply
    return UserData(
        user_id=user_id,
        profile=profile_from_hash(user_id, _pairs(profile)) if profile else None,
        recent=[recent_event(entry) for entry in history],
        dismissed=frozenset(dismissed),
        pushes=tuple(push_record(member, float(score)) for member, score in _pairs(pushes).items()),
        pushed_items={item: _pushed_item(value) for item, value in _pairs(items).items()},
        forgotten=bool(forgotten),
        message_written=bool(written and written[0]),
    )


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _pushed_item(value: str) -> PushedItem:
    record = json.loads(value)
    return PushedItem(message_id=str(record["m"]), due=float(record["t"]), control=bool(record.get("c")))


# --- predicates -----------------------------------------------------------------------------------


def explain(segment: Segment, user: UserData, behaviour: Behaviour) -> list[Check]:
    """Each condition of `segment` with its result for `user`; a user without a profile fails."""
    return _checks(segment, user, behaviour, describe=True)


def matches(segment: Segment, user: UserData, behaviour: Behaviour) -> bool:
    """Whether `user` meets every condition: `explain` without the texts only a preview shows."""
    return all(check.passed for check in _checks(segment, user, behaviour, describe=False))


def _checks(segment: Segment, user: UserData, behaviour: Behaviour, *, describe: bool) -> list[Check]:
    """The checks of `explain`; without `describe`, their names and details are left empty."""
    profile = user.profile
    if profile is None:
        return [Check("profile", False, "no profile (unknown or forgotten user)")]
    checks = [_attribute_check(predicate, profile, describe) for predicate in segment.attributes]
    now_us = unix_micros(behaviour.now)
    # The history is in arrival order; an app syncing events it collected offline posts older ones last.
    newest = max((event.ts_us for event in user.recent), default=None)
    if segment.active_within_days is not None:
        since = now_us - _days_us(segment.active_within_days)
        checks.append(
            Check(
                "active_within_days",
                newest is not None and newest >= since,
                _last_event(newest) if describe else "",
            )
        )
    if segment.inactive_for_days is not None:
        since = now_us - _days_us(segment.inactive_for_days)
        checks.append(
            Check(
                "inactive_for_days",
                newest is None or newest < since,
                _last_event(newest) if describe else "",
            )
        )
    if segment.purchased_in_category is not None or segment.purchased_within_days is not None:
        checks.append(_purchase_check(segment, user, behaviour, now_us))
    if segment.viewed_not_bought_within_days is not None:
        since = now_us - _days_us(segment.viewed_not_bought_within_days)
        items = viewed_not_bought(user.recent, since, behaviour.purchase_type)
        checks.append(
            Check("viewed_not_bought_within_days", bool(items), f"items: {', '.join(items) or 'none'}")
        )
    if segment.push_consent is not None:
        consent = bool(profile["push_consent"])
        detail = f"push_consent is {consent}" if describe else ""
        checks.append(Check("push_consent", consent == segment.push_consent, detail))
    if segment.has_device is not None:
        devices = len(profile["devices"])
        detail = f"{devices} device(s)" if describe else ""
        checks.append(Check("has_device", (devices > 0) == segment.has_device, detail))
    return checks


def attribute_holds(predicate: AttributePredicate, profile: Mapping[str, Any]) -> bool:
    """Whether one attribute predicate holds for a profile (see the module docstring for missing)."""
    value = _field(profile, predicate.field)
    op, wanted = predicate.op, predicate.value
    if value is None:
        return op in ("ne", "not_in", "missing")
    if op == "exists":
        return True
    if op == "missing":
        return False
    if op == "eq":
        return _equal(value, wanted)
    if op == "ne":
        return not _equal(value, wanted)
    if op in ("in", "not_in"):
        found = any(_equal(value, option) for option in wanted)
        return found if op == "in" else not found
    if not _is_number(value):
        return False
    if op == "between":
        low, high = wanted
        return bool(low <= value <= high)
    return bool(_COMPARISONS[op](value, wanted))


def _attribute_check(predicate: AttributePredicate, profile: Mapping[str, Any], describe: bool) -> Check:
    if not describe:
        return Check("", attribute_holds(predicate, profile), "")
    value = _field(profile, predicate.field)
    shown = "missing" if value is None else json.dumps(value)
    wanted = "" if predicate.value is None else f" {json.dumps(predicate.value)}"
    return Check(
        f"attribute {predicate.field} {predicate.op}{wanted}",
        attribute_holds(predicate, profile),
        f"{predicate.field} is {shown}",
    )


def _field(profile: Mapping[str, Any], name: str) -> Any:
    if name == "timezone":
        return profile.get("timezone")
    return (profile.get("attributes") or {}).get(name)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(value: Any, wanted: Any) -> bool:
    if isinstance(value, bool) != isinstance(wanted, bool):
        return False
    return bool(value == wanted)


def _days_us(days: float) -> int:
    return round(timedelta(days=days).total_seconds() * 1_000_000)


def _last_event(ts_us: int | None) -> str:
    if ts_us is None:
        return "no recent events"
    return f"last event at {datetime.fromtimestamp(ts_us / 1e6, UTC).isoformat()}"


def _purchase_check(segment: Segment, user: UserData, behaviour: Behaviour, now_us: int) -> Check:
    """A purchase (of an item in `purchased_in_category`, if given) within `purchased_within_days`
    (if given; else anywhere in the kept history)."""
    since = now_us - _days_us(segment.purchased_within_days) if segment.purchased_within_days else None
    category = segment.purchased_in_category
    bought = [
        event.item_id
        for event in user.recent
        if event.type == behaviour.purchase_type
        and (since is None or event.ts_us >= since)
        and (category is None or behaviour.category_of(event.item_id) == category)
    ]
    name = "purchased_in_category" if category is not None else "purchased_within_days"
    return Check(name, bool(bought), f"purchases: {', '.join(dict.fromkeys(bought)) or 'none'}")


def viewed_not_bought(recent: Sequence[RecentEvent], since_us: int, purchase_type: str) -> list[str]:
    """Items viewed or carted at or after `since_us` and not purchased since (newest first)."""
    bought_at: dict[str, int] = {}
    for event in recent:
        if event.type == purchase_type:
            bought_at[event.item_id] = max(bought_at.get(event.item_id, event.ts_us), event.ts_us)
    found = [
        event.item_id
        for event in recent
        if event.type in VIEW_TYPES
        and event.ts_us >= since_us
        and bought_at.get(event.item_id, -1) < event.ts_us
    ]
    return list(dict.fromkeys(found))


# --- sampling and control -------------------------------------------------------------------------


def bucket(*parts: str) -> float:
    """A uniform number in [0, 100) from a hash of `parts`: the same parts, the same number."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") * 100.0 / _BUCKETS


def sampled(segment: Segment, campaign_id: str, run_id: str, user_id: str) -> bool:
    """Whether the user is in this run's sample (a new sample each run)."""
    return segment.sample_percent >= 100 or bucket("sample", campaign_id, run_id, user_id) < (
        segment.sample_percent
    )


def in_control(segment: Segment, campaign_id: str, user_id: str) -> bool:
    """Whether the user is in the campaign's control group (the same users in every run)."""
    return segment.control_percent > 0 and bucket("control", campaign_id, user_id) < segment.control_percent
