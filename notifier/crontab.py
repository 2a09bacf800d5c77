"""Standard crontab expressions as APScheduler triggers, with crontab's weekday numbering.

APScheduler 3 numbers weekdays from Monday = 0 (`CronTrigger.from_crontab` takes the number as
is), crontab from Sunday = 0 (or 7): "0 9 * * 1" means Mondays. Campaigns and housekeeping jobs
are written in crontab's convention, so every cron expression goes through `crontab_trigger`,
both to validate a campaign when it is saved and to schedule it.
"""

from __future__ import annotations

from datetime import tzinfo
from typing import Any

from apscheduler.triggers.cron import CronTrigger

_CRONTAB_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_trigger(expression: str, timezone: tzinfo) -> Any:
    """A crontab expression (minute hour day month weekday) as a trigger; the weekday field is
    translated into day names, which both conventions agree on."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"a crontab expression has 5 fields, not {len(fields)}: {expression!r}")
    minute, hour, day, month, weekday = fields
    return CronTrigger(
        minute=minute,
        hour=hour,
        day=day,
        month=month,
        day_of_week=crontab_weekdays(weekday),
        timezone=timezone,
    )


def crontab_weekdays(field: str) -> str:
    """A crontab weekday field ("1-5", "0,6", "*/2", "mon-fri") as a list of day names."""
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.split(","):
        span, slash, step = part.partition("/")
        if span == "*":
            first, last = 0, 6
        else:
            start, dash, end = span.partition("-")
            first = _crontab_day(start)
            last = _crontab_day(end) if dash else (6 if slash else first)
        if last < first or (slash and not step.isdigit()) or (slash and int(step) < 1):
            raise ValueError(f"invalid weekday field {field!r}")
        days.update(number % 7 for number in range(first, last + 1, int(step) if slash else 1))
    return ",".join(_CRONTAB_DAYS[number] for number in sorted(days))


def _crontab_day(token: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token)
    if token.lower() in _CRONTAB_DAYS:
        return _CRONTAB_DAYS.index(token.lower())
    raise ValueError(f"invalid weekday {token!r}")
