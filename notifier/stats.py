"""Campaign statistics: counters per run and in total, kept in Redis hashes.

Counter names are fixed here. A counter is incremented in the same transaction as the change it
counts (a message written, a send accepted, an open recorded), so statistics survive crashes
and reruns exactly as the messages do.

Semantics follow the usual push-marketing terms: `targeted` users were selected by the segment
(after sampling); `sent` messages left the campaign for delivery; `delivered` ones the provider
accepted; `failed` ones bounced (invalid token, permanent error, or dead-lettered); `opened`,
`clicked` and `converted` come back from the app and from purchases. The control group is
selected like the rest but never sent; its `control:*` counters (targeted, converted) measure
lift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis

from recsvc.keys import Keys
from recsvc.redis_conn import unavailable_as_error

TARGETED = "targeted"
SENT = "sent"
DELIVERED = "delivered"
FAILED = "failed"
OPENED = "opened"
CLICKED = "clicked"
CONVERTED = "converted"
DEFERRED = "deferred"  # pushed later because of quiet hours; still sent
CONTROL_PREFIX = "control:"
SUPPRESSED_PREFIX = "suppressed:"

# Reasons a targeted user got no message in a run.
NO_CONSENT = "no_consent"
NO_DEVICE = "no_device"
DAILY_CAP = "daily_cap"
WEEKLY_CAP = "weekly_cap"
MIN_GAP = "min_gap"
NO_ITEMS = "no_items"  # nothing left to recommend after filters and the no-repeat rule
# A `trigger_item` push whose triggering item is unavailable, dismissed or recently pushed.
TRIGGER_ITEM_EXCLUDED = "trigger_item_excluded"
# A triggered push written, then cancelled at send time by a cancelling event that came after.
CANCELLED_BY_EVENT = "cancelled_by_event"
TEMPLATE_ERROR = "template_error"  # the template failed for this user's data
FORGOTTEN = "forgotten"
EXPIRED = "expired"  # not sent within `delivery.max_delay_hours` after it fell due
UNAVAILABLE_ITEM = "unavailable_item"  # a pushed item was marked unavailable before it was sent

OUTCOMES = (TARGETED, SENT, DELIVERED, FAILED, OPENED, CLICKED, CONVERTED, DEFERRED)


def control(counter: str) -> str:
    """The control group's counter of the same name."""
    return CONTROL_PREFIX + counter


def suppressed(reason: str) -> str:
    return SUPPRESSED_PREFIX + reason


def stage_counts(pipe: Any, keys: Keys, campaign_id: str, run_id: str, counts: Mapping[str, int]) -> None:
    """Add HINCRBYs of `counts` to the run's and the campaign's totals to a pipeline (sync or async)."""
    for counter, amount in counts.items():
        if amount:
            pipe.hincrby(keys.campaign_stats(campaign_id, run_id), counter, amount)
            pipe.hincrby(keys.campaign_stats(campaign_id), counter, amount)


def summarize(raw: Mapping[str, str]) -> dict[str, Any]:
    """A counters hash as {treatment outcomes, control outcomes, suppressed by reason, rates}."""
    counts = {name: int(value) for name, value in raw.items()}
    treatment = {name: counts.get(name, 0) for name in OUTCOMES}
    control_group = {name: counts.get(control(name), 0) for name in (TARGETED, CONVERTED)}
    reasons = {
        name.removeprefix(SUPPRESSED_PREFIX): value
        for name, value in sorted(counts.items())
        if name.startswith(SUPPRESSED_PREFIX)
    }
    return {
        **treatment,
        "suppressed": reasons,
        "control": control_group,
        "conversion_rate": _rate(treatment[CONVERTED], treatment[TARGETED]),
        "control_conversion_rate": _rate(control_group[CONVERTED], control_group[TARGETED]),
    }


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


async def campaign_stats(redis: aioredis.Redis, keys: Keys, campaign_id: str) -> dict[str, Any]:
    """A campaign's counters in total and per run (oldest run first), each run with its status."""
    with unavailable_as_error("campaign stats"):
        runs: list[tuple[str, float]] = await redis.zrange(  # type: ignore[assignment]
            keys.campaign_runs(campaign_id), 0, -1, withscores=True
        )
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.campaign_stats(campaign_id))
            for run_id, _ in runs:
                pipe.hgetall(keys.campaign_stats(campaign_id, run_id))
                pipe.hgetall(keys.campaign_run(campaign_id, run_id))
            total, *per_run = await pipe.execute()
    return {
        "campaign_id": campaign_id,
        "total": summarize(total),
        "runs": [
            {
                "run_id": run_id,
                "started": started,
                "status": state.get("status", "unknown"),
                **summarize(counters),
            }
            for (run_id, started), counters, state in zip(runs, per_run[::2], per_run[1::2], strict=True)
        ],
    }
