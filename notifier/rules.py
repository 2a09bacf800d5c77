"""When a push may go out: quiet hours, frequency caps, the per-campaign gap and the no-repeat rule.

Pure functions of the rules, the user's timezone, their earlier pushes and an injected time, so
the runner and the preview share them and tests drive them without Redis.

Local wall times are turned into instants by one rule everywhere (quiet-hour ends and
local-time sends): the first instant at or after that wall time. On a spring-forward day a
wall time in the gap (02:30 in Europe/Berlin on 2024-03-31) becomes the end of the gap (03:00
local); on a fall-back day a wall time that happens twice becomes its first occurrence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from notifier import stats
from recsvc.config import PushRules, TrackingConfig

WEEK = timedelta(days=7)
DAY = timedelta(days=1)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = date.weekday()
# Every push record is kept at least this long: the weekly cap looks back a week.
RECORD_WINDOW = WEEK


@dataclass(frozen=True)
class PushRecord:
    """One earlier push to a user: member "<campaign>|<run>" of `Keys.user_pushes` and its due time."""

    campaign_id: str
    run_id: str
    due: float


@dataclass(frozen=True)
class PushedItem:
    """An item pushed to a user (`Keys.user_pushed_items`): by which message, due when; `control`
    when that message went to the control group (recorded for conversions, never sent)."""

    message_id: str
    due: float
    control: bool = False


@dataclass(frozen=True)
class Timing:
    """When a push falls due: `scheduled` before quiet hours, `due` after; `deferred` if they differ."""

    scheduled: datetime
    due: datetime

    @property
    def deferred(self) -> bool:
        return self.due != self.scheduled


def push_member(campaign_id: str, run_id: str) -> str:
    return f"{campaign_id}|{run_id}"


def push_record(member: str, due: float) -> PushRecord:
    """A `Keys.user_pushes` member and score as a record (campaign ids never contain '|')."""
    campaign_id, _, run_id = member.partition("|")
    return PushRecord(campaign_id, run_id, due)


def user_zone(name: str | None, default: str) -> ZoneInfo:
    """The user's timezone: their profile's if it is a known zone, else the configured default."""
    if name:
        try:
            return _zone(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass  # a zone stored before validation, or removed from tzdata: treat as unset
    return _zone(default)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    """`ZoneInfo(name)`, kept: ZoneInfo's own cache holds only the last 8 zones strongly, so a run
    over users of more zones read a tz file per user (the bulk of deciding a batch)."""
    return ZoneInfo(name)


@lru_cache(maxsize=256)
def clock_time(value: str) -> time:
    """A validated "HH:MM" (see `recsvc.config.ClockTime`) as a time of day."""
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


# --- local wall times -------------------------------------------------------------------------------


def wall_instants(day: date, at: time, zone: ZoneInfo) -> list[datetime]:
    """Every UTC instant whose wall time in `zone` is `day` `at`: one, two (fall-back), or, when the
    wall time falls in a spring-forward gap, the one instant the gap ends (the first after it)."""
    naive = datetime.combine(day, at)
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:
        return [first]
    if first < second:  # the wall time happens twice
        return [first, second]
    return [_gap_end(second, first, naive, zone)]


def _gap_end(low: datetime, high: datetime, wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant in [low, high] whose wall time is at or after `wall` (whole seconds:
    tzdata transitions fall on whole seconds)."""
    lo, hi = int(low.timestamp()), int(high.timestamp())
    while lo < hi:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).replace(tzinfo=None) >= wall:
            hi = mid
        else:
            lo = mid + 1
    return datetime.fromtimestamp(lo, UTC)


def wall_time(day: date, at: time, zone: ZoneInfo) -> datetime:
    """The instant of `day` `at` in `zone` by the module's rule: the first at or after that wall time."""
    return wall_instants(day, at, zone)[0]


def next_local_time(
    now: datetime, at: time, zone: ZoneInfo, weekdays: Iterable[str] | None = None
) -> datetime:
    """The first instant at or after `now` that is `at` local time on one of `weekdays` (None: any)."""
    allowed = set(weekdays) if weekdays is not None else set(WEEKDAYS)
    today = now.astimezone(zone).date()
    for offset in range(-1, 9):  # from yesterday: `now` may still be before a late wall time there
        day = today + timedelta(days=offset)
        if WEEKDAYS[day.weekday()] not in allowed:
            continue
        instant = wall_time(day, at, zone)
        if instant >= now:
            return instant
    raise ValueError(f"no weekday in {sorted(allowed)}")  # the schema forbids unknown names


# --- quiet hours -----------------------------------------------------------------------------------


def in_quiet_hours(instant: datetime, rules: PushRules, zone: ZoneInfo) -> bool:
    """Whether `instant` falls in [quiet_start, quiet_end) local time (the window may wrap midnight)."""
    start, end = clock_time(rules.quiet_start), clock_time(rules.quiet_end)
    if start == end:
        return False
    wall = instant.astimezone(zone).time().replace(tzinfo=None)
    if start < end:
        return start <= wall < end
    return wall >= start or wall < end


def after_quiet_hours(instant: datetime, rules: PushRules, zone: ZoneInfo) -> datetime:
    """`instant`, or if it falls in quiet hours the first instant after it that does not: the next
    quiet_end in local time (a quiet_end inside a spring-forward gap: the gap's end)."""
    if not in_quiet_hours(instant, rules, zone):
        return instant
    end = clock_time(rules.quiet_end)
    today = instant.astimezone(zone).date()
    candidates = [
        candidate
        for offset in (-1, 0, 1, 2)
        for candidate in wall_instants(today + timedelta(days=offset), end, zone)
        if candidate > instant
    ]
    return min(candidates)


def timing(scheduled: datetime, rules: PushRules, zone: ZoneInfo) -> Timing:
    """When a push scheduled for `scheduled` falls due once quiet hours are respected."""
    return Timing(scheduled=scheduled, due=after_quiet_hours(scheduled, rules, zone))


# --- caps and gaps ----------------------------------------------------------------------------------


def cap_reason(
    rules: PushRules,
    zone: ZoneInfo,
    due: datetime,
    earlier: Sequence[PushRecord],
    campaign_id: str,
    run_id: str,
) -> str | None:
    """Why a push due at `due` must not go out, or None if it may.

    - `stats.DAILY_CAP`: `max_per_day` pushes already fall on the same local calendar day as `due`;
    - `stats.WEEKLY_CAP`: `max_per_week` pushes fall in the 7 days ending at `due` (rolling);
    - `stats.MIN_GAP`: a push of the same campaign is due less than `min_gap_hours` before or
      after `due` (other campaigns do not count).

    Caps count every campaign's pushes; 0 turns a cap off. The run's own record (a resumed run)
    is ignored.
    """
    others = [record for record in earlier if (record.campaign_id, record.run_id) != (campaign_id, run_id)]
    if not others:
        return None
    due_s = due.timestamp()
    if rules.max_per_day:
        day = due.astimezone(zone).date()
        same_day = sum(1 for record in others if _local_date(record.due, zone) == day)
        if same_day >= rules.max_per_day:
            return stats.DAILY_CAP
    if rules.max_per_week:
        week_start = due_s - WEEK.total_seconds()
        in_week = sum(1 for record in others if week_start < record.due <= due_s)
        if in_week >= rules.max_per_week:
            return stats.WEEKLY_CAP
    if rules.min_gap_hours:
        gap = rules.min_gap_hours * 3600.0
        if any(record.campaign_id == campaign_id and abs(record.due - due_s) < gap for record in others):
            return stats.MIN_GAP
    return None


def _local_date(unix: float, zone: ZoneInfo) -> date:
    return datetime.fromtimestamp(unix, zone).date()


def record_window_seconds(rules: Iterable[PushRules]) -> float:
    """How long push records must be kept for every campaign's rules: a week, or the longest gap."""
    longest = max((r.min_gap_hours * 3600.0 for r in rules), default=0.0)
    return max(RECORD_WINDOW.total_seconds(), longest)


def item_window_seconds(rules: Iterable[PushRules], tracking: TrackingConfig) -> float:
    """How long pushed items must be kept: the longest no-repeat window, or the conversion window."""
    longest = max((r.item_repeat_days * DAY.total_seconds() for r in rules), default=0.0)
    return max(longest, tracking.conversion_window_hours * 3600.0)


# --- no repeats -------------------------------------------------------------------------------------


def recently_pushed(pushed: Mapping[str, PushedItem], due: datetime, repeat_days: float) -> set[str]:
    """Items pushed less than `repeat_days` before `due` (or due after it): not to be pushed again.
    A control group's items were never sent, so they block nothing."""
    if repeat_days <= 0:
        return set()
    window = repeat_days * DAY.total_seconds()
    due_s = due.timestamp()
    return {item for item, record in pushed.items() if not record.control and due_s - record.due < window}
