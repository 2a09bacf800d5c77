"""The leader's APScheduler jobs: what the Redis job store records, and the triggers they fire on.

A stored job holds only plain data (its function's import path and the campaign id), since any
scheduler process may be the one to fire it. The scheduler that fires a job (and the time it was
scheduled for, which APScheduler does not pass) reaches the job function through a context
variable set by that scheduler's executor (`FiringExecutor`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from apscheduler.executors.asyncio import AsyncIOExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from notifier.campaign import Campaign, CronSchedule, IntervalSchedule, LocalTimeSchedule, OnceSchedule
from notifier.crontab import crontab_trigger
from recsvc.errors import ConfigError

if TYPE_CHECKING:
    from notifier.scheduler import CampaignScheduler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """A job the leader's APScheduler should hold; `name` fingerprints it (a change replaces it)."""

    id: str
    name: str
    func: Callable[..., Awaitable[Any]]
    trigger: Any  # an APScheduler trigger
    args: tuple[str, ...] = ()


# --- job functions: what the job store records, by import path ---------------------------------


@dataclass(frozen=True)
class _Firing:
    scheduler: CampaignScheduler
    scheduled: datetime


_FIRING: contextvars.ContextVar[_Firing] = contextvars.ContextVar("notifier_scheduler_firing")


class FiringExecutor(AsyncIOExecutor):  # type: ignore[misc]
    """Runs jobs like `AsyncIOExecutor`, each in a context naming this scheduler and the run time."""

    def __init__(self, owner: CampaignScheduler) -> None:
        super().__init__()
        self._owner = owner

    def _do_submit_job(self, job: Any, run_times: list[datetime]) -> None:
        context = contextvars.copy_context()
        context.run(_FIRING.set, _Firing(self._owner, run_times[-1]))
        context.run(super()._do_submit_job, job, run_times)  # the job's task inherits the context

    def in_flight(self) -> list[asyncio.Future[Any]]:
        """The jobs running now (the base executor tracks their tasks in `_pending_futures`)."""
        return [future for future in self._pending_futures if not future.done()]


async def campaign_job(campaign_id: str) -> None:
    firing = _FIRING.get()
    await firing.scheduler.fire_campaign(campaign_id, firing.scheduled)


async def resume_job() -> None:
    await _FIRING.get().scheduler.resume_unfinished()


async def triggers_job() -> None:
    await _FIRING.get().scheduler.fire_triggers()


async def event_feed_job() -> None:
    await _FIRING.get().scheduler.read_events()


async def archive_job() -> None:
    await _FIRING.get().scheduler.archive()


async def retrain_job() -> None:
    await _FIRING.get().scheduler.retrain()


# --- triggers of jobs ---------------------------------------------------------------------------


def campaign_trigger(campaign: Campaign) -> Any | None:
    """The APScheduler trigger of a campaign's schedule; None for triggered and on-demand campaigns."""
    schedule = campaign.schedule
    if isinstance(schedule, CronSchedule):
        return crontab_trigger(schedule.cron, ZoneInfo(schedule.timezone))
    if isinstance(schedule, IntervalSchedule):
        return IntervalTrigger(
            minutes=schedule.every_minutes,
            start_date=schedule.start or campaign.created_at,
            timezone=ZoneInfo(schedule.timezone),
        )
    if isinstance(schedule, OnceSchedule):
        return DateTrigger(run_date=schedule.instant())
    if isinstance(schedule, LocalTimeSchedule):
        hour, _, minute = schedule.prepare_at.partition(":")
        return CronTrigger(hour=int(hour), minute=int(minute), timezone=UTC)
    return None


def housekeeping_trigger(cron: str, key: str) -> Any | None:
    """A housekeeping cron expression (UTC) as a trigger; None when "" turns the job off."""
    if not cron:
        return None
    try:
        return crontab_trigger(cron, UTC)
    except ValueError as exc:
        raise ConfigError(
            f"notifier.scheduler.{key}: invalid cron expression {cron!r}: {exc}",
            key=f"notifier.scheduler.{key}",
        ) from exc


def every(interval: float | timedelta, now: datetime) -> Any:
    """An interval trigger first due `now`: a new leader does its polling at once."""
    seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
    return IntervalTrigger(seconds=seconds, start_date=now, timezone=UTC)


def apply_jobs(scheduler: AsyncIOScheduler, wanted: Sequence[JobSpec], now: datetime) -> None:
    """Add or replace the wanted jobs whose fingerprint changed; remove every other job (blocking).

    A job whose trigger cannot compute its first firing (a time past `datetime`'s range) is
    logged and removed like an unwanted one: the other jobs are still applied.
    """
    stored = {job.id: job.name for job in scheduler.get_jobs()}
    kept = set()
    for spec in wanted:
        if stored.get(spec.id) == spec.name:
            kept.add(spec.id)
            continue
        try:
            first = spec.trigger.get_next_fire_time(None, now)
        except (ValueError, ArithmeticError):
            log.exception("cannot schedule job %s (%s); removing it", spec.id, spec.name)
            continue
        kept.add(spec.id)
        if first is None:  # a schedule with nothing left to fire
            continue
        scheduler.add_job(
            spec.func,
            spec.trigger,
            args=spec.args,
            id=spec.id,
            name=spec.name,
            next_run_time=first,
            replace_existing=True,
        )
        log.info("scheduled job %s: %s, next at %s", spec.id, spec.name, first.isoformat())
    for job_id in stored.keys() - kept:
        with suppress(JobLookupError):  # fired its last time meanwhile
            scheduler.remove_job(job_id)
            log.info("removed job %s", job_id)
