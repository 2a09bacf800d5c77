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
_BUCKETS = 2**64


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
    if not user_ids:
        return []
    per_user = 6 if message_keys is not None else 5
    with unavailable_as_error("read users"):
        async with redis.pipeline(transaction=False) as pipe:
            pipe.smismember(keys.forgotten(), list(user_ids))
            for position, user_id in enumerate(user_ids):
                pipe.hgetall(keys.profile(user_id))
                pipe.lrange(keys.history(user_id), 0, -1)
                pipe.smembers(keys.dismissed(user_id))
                pipe.zrange(keys.user_pushes(user_id), 0, -1, withscores=True)
                pipe.hgetall(keys.user_pushed_items(user_id))
                if message_keys is not None:
                    pipe.exists(message_keys[position])
            forgotten_flags, *replies = await pipe.execute()
    users = []
    for position, (user_id, forgotten) in enumerate(zip(user_ids, forgotten_flags, strict=True)):
        profile, history, dismissed, pushes, items, *written = replies[
            position * per_user : (position + 1) * per_user
        ]
        users.append(
            UserData(
                user_id=user_id,
                profile=profile_from_hash(user_id, profile),
                recent=[recent_event(entry) for entry in history],
                dismissed=frozenset(dismissed),
                pushes=tuple(push_record(member, float(score)) for member, score in pushes),
                pushed_items={item: _pushed_item(value) for item, value in items.items()},
                forgotten=bool(forgotten),
                message_written=bool(written and written[0]),
            )
        )
    return users


def _pushed_item(value: str) -> PushedItem:
    record = json.loads(value)
    return PushedItem(message_id=str(record["m"]), due=float(record["t"]))


# --- predicates -----------------------------------------------------------------------------------


def explain(segment: Segment, user: UserData, behaviour: Behaviour) -> list[Check]:
    """Each condition of `segment` with its result for `user`; a user without a profile fails."""
    profile = user.profile
    if profile is None:
        return [Check("profile", False, "no profile (unknown or forgotten user)")]
    checks = [_attribute_check(predicate, profile) for predicate in segment.attributes]
    now_us = unix_micros(behaviour.now)
    newest = user.recent[0].ts_us if user.recent else None
    if segment.active_within_days is not None:
        since = now_us - _days_us(segment.active_within_days)
        checks.append(
            Check(
                "active_within_days",
                newest is not None and newest >= since,
                _last_event(newest),
            )
        )
    if segment.inactive_for_days is not None:
        since = now_us - _days_us(segment.inactive_for_days)
        checks.append(Check("inactive_for_days", newest is None or newest < since, _last_event(newest)))
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
        checks.append(Check("push_consent", consent == segment.push_consent, f"push_consent is {consent}"))
    if segment.has_device is not None:
        devices = len(profile["devices"])
        checks.append(Check("has_device", (devices > 0) == segment.has_device, f"{devices} device(s)"))
    return checks


def matches(segment: Segment, user: UserData, behaviour: Behaviour) -> bool:
    return all(check.passed for check in explain(segment, user, behaviour))


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
    comparisons: dict[str, Callable[[Any, Any], bool]] = {
        "gt": lambda a, b: a > b,
        "gte": lambda a, b: a >= b,
        "lt": lambda a, b: a < b,
        "lte": lambda a, b: a <= b,
    }
    return comparisons[op](value, wanted)


def _attribute_check(predicate: AttributePredicate, profile: Mapping[str, Any]) -> Check:
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
