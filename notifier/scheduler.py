"""The notifier's scheduler: one leader at a time fires campaign schedules, triggers and housekeeping.

Every scheduler process competes for the lease `Keys.scheduler_lease` (`notifier.lease`). The
holder runs an APScheduler (3.x, `AsyncIOScheduler`) whose jobs live in Redis (`RedisJobStore` on
`Keys.scheduler_jobs` / `scheduler_run_times`), so schedules survive restarts and a new leader
picks up exactly where the last one stopped, firing what it missed within `misfire_grace_seconds`
(coalesced into one run). Followers run no APScheduler and keep trying to take the lease; a
leader that cannot renew it shuts its APScheduler down at once, cancelling jobs in flight (the
runs they were executing stay `running` and the next leader resumes them).

`tick` is one round: renew or take the lease, then (as leader) reconcile the stored jobs with the
campaigns in Redis and with the housekeeping configuration. `run_forever` ticks every
`renew_seconds`; tests call `tick` and the job bodies directly.

Jobs:
- `campaign:<id>` per active scheduled campaign, replaced when the campaign's `updated_at`
  changes, removed when it is paused or deleted. A firing runs the campaign with run id = its
  scheduled time floored to the minute, `YYYYMMDDTHHMMZ`: two schedulers overlapping during a
  handover produce the same run id, and the runner executes a run id once.
- resuming unfinished runs (every minute), firing due triggers and draining the event stream
  (every `trigger_poll_seconds`), archiving events and retraining (cron in UTC, "" = off).

The jobs themselves and their triggers are in `notifier.jobs`.

Known limit: APScheduler reads its Redis job store on the event loop (a few quick commands per
wake-up); reconciling, which may write many jobs, runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Protocol

import redis.asyncio as aioredis
from apscheduler.jobstores.redis import RedisJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from redis import ConnectionPool

from notifier.campaign import Campaign
from notifier.event_feed import DrainResult, EventFeed
from notifier.jobs import (
    FiringExecutor,
    JobSpec,
    apply_jobs,
    archive_job,
    campaign_job,
    campaign_trigger,
    event_feed_job,
    every,
    housekeeping_trigger,
    resume_job,
    retrain_job,
    triggers_job,
)
from notifier.lease import Lease
from notifier.runner import CampaignRunner, RunSummary
from notifier.store import CampaignStore
from notifier.tracking import Tracker
from notifier.triggers import RunCampaign, Triggers
from recsvc.archive import ARCHIVE_REDIS_TIMEOUT_SECONDS, ArchiveBusy, ArchiveResult, archive_events
from recsvc.config import Settings
from recsvc.current_model import ModelHolder
from recsvc.errors import ConflictError, NotFoundError, RecsvcError
from recsvc.keys import Keys
from recsvc.redis_conn import connect_async, connect_sync, ensure_redis, unavailable_as_error
from recsvc.registry import Registry
from recsvc.state import utc_now

log = logging.getLogger(__name__)

# The scheduler's clients serve batch work (campaign runs), not requests: they may wait longer.
SCHEDULER_REDIS_TIMEOUT_SECONDS = 10.0
CAMPAIGN_JOB_PREFIX = "campaign:"
RESUME_JOB = "notifier:resume-runs"
TRIGGERS_JOB = "notifier:fire-triggers"
EVENT_FEED_JOB = "notifier:event-feed"
ARCHIVE_JOB = "notifier:archive-events"
RETRAIN_JOB = "notifier:retrain"
RESUME_EVERY = timedelta(minutes=1)


class Runner(RunCampaign, Protocol):
    """What the scheduler needs of `notifier.runner.CampaignRunner`."""

    async def unfinished_runs(self) -> list[tuple[str, str]]: ...


def run_id_at(scheduled: datetime) -> str:
    """The run id of a scheduled firing: its time in UTC, floored to the minute."""
    return scheduled.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


def default_owner() -> str:
    """A lease owner id unique to this process, readable in logs and in Redis."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


# --- the scheduler ------------------------------------------------------------------------------


class CampaignScheduler:
    """One scheduler process: leader election, job reconciliation, and the bodies of its jobs.

    `fire_jobs=False` keeps the leader's APScheduler paused: jobs are stored and reconciled but
    never fired, for tests that drive the job bodies themselves.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        runner: Runner,
        *,
        owner: str | None = None,
        clock: Callable[[], datetime] = utc_now,
        fire_jobs: bool = True,
    ) -> None:
        config = settings.notifier.scheduler
        self._redis = redis
        self._settings = settings
        self._runner = runner
        self._clock = clock
        self._fire_jobs = fire_jobs
        self._keys = Keys(settings.redis.prefix)
        self._archive_trigger = housekeeping_trigger(config.archive_cron, "archive_cron")
        self._retrain_trigger = housekeeping_trigger(config.retrain_cron, "retrain_cron")
        self.lease = Lease(
            redis, self._keys.scheduler_lease(), owner or default_owner(), config.lease_seconds
        )
        self.campaigns = CampaignStore(redis, settings, clock=clock)
        self.triggers = Triggers(redis, settings, runner, campaigns=self.campaigns)
        tracker = Tracker(redis, settings, clock=clock)
        self.feed = EventFeed(redis, settings, self.triggers, tracker, campaigns=self.campaigns)
        self._apscheduler: AsyncIOScheduler | None = None
        self._executor: FiringExecutor | None = None

    @property
    def leading(self) -> bool:
        return self._apscheduler is not None

    @property
    def apscheduler(self) -> AsyncIOScheduler | None:
        """The leader's APScheduler; None while following."""
        return self._apscheduler

    # --- leadership -------------------------------------------------------------------------------

    async def tick(self) -> None:
        """One round: keep (or lose) the lease, else try to take it; as leader, reconcile the jobs."""
        if self._apscheduler is not None:
            try:
                renewed = await self.lease.renew()
            except RecsvcError as exc:
                log.error("scheduler %s cannot renew its lease: %s", self.lease.owner, exc.detail)
                renewed = False
            if not renewed:
                await self._step_down("lost the lease")
        if self._apscheduler is None:
            if not await self.lease.acquire():
                return
            await self._take_lead()
        await self.reconcile()

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Tick every `renew_seconds` (at least once) until `stop` is set; then give the lease up."""
        try:
            while True:
                try:
                    await self.tick()
                except RecsvcError as exc:  # Redis down: one line a round, not a traceback
                    log.error("scheduler round failed: %s", exc.detail)
                except Exception:  # a bug: the traceback, and try again
                    log.exception("scheduler round failed")
                try:
                    await asyncio.wait_for(stop.wait(), self._settings.notifier.scheduler.renew_seconds)
                    return
                except TimeoutError:
                    continue
        finally:
            await self.stop()

    async def stop(self, *, release: bool = True) -> None:
        """Stop leading; with `release`, free the lease so another scheduler leads at once.

        Without it, the lease lapses after its TTL, as when a process dies.
        """
        if self._apscheduler is not None:
            await self._step_down("stopping")
        if release:
            with suppress(RecsvcError):
                await self.lease.release()

    async def _take_lead(self) -> None:
        url = await asyncio.to_thread(ensure_redis, self._settings)
        pool = ConnectionPool.from_url(
            url,
            socket_timeout=SCHEDULER_REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=SCHEDULER_REDIS_TIMEOUT_SECONDS,
        )
        store = RedisJobStore(
            jobs_key=self._keys.scheduler_jobs(),
            run_times_key=self._keys.scheduler_run_times(),
            connection_pool=pool,
        )
        executor = FiringExecutor(self)
        scheduler = AsyncIOScheduler(
            jobstores={"default": store},
            executors={"default": executor},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": self._settings.notifier.scheduler.misfire_grace_seconds,
            },
            timezone=UTC,
        )
        scheduler.start(paused=not self._fire_jobs)
        self._apscheduler, self._executor = scheduler, executor
        log.info("scheduler %s is the leader", self.lease.owner)

    async def _step_down(self, why: str) -> None:
        scheduler, self._apscheduler = self._apscheduler, None
        if scheduler is None:
            return
        scheduler.pause()  # at once: no job starts from here on
        in_flight = self._executor.in_flight() if self._executor is not None else []
        scheduler.shutdown(wait=False)  # stops its timer (on the loop, soon)
        for job in in_flight:  # another scheduler may lead now: stop working for this one
            job.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)  # their clean-up (run leases) is done
        await asyncio.sleep(0)  # the loop runs the shutdown before this continues
        log.warning("scheduler %s is no longer the leader: %s", self.lease.owner, why)

    # --- reconciling jobs -------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Make the leader's stored jobs the campaigns' and the housekeeping ones; nothing if following."""
        scheduler = self._apscheduler
        if scheduler is None:
            return
        now = self._clock()
        wanted = self._housekeeping_jobs(now)
        for campaign in await self.campaigns.list():
            try:
                job = await self._campaign_job(campaign, now)
            except RecsvcError:  # Redis unavailable: the round fails, and no job is dropped for it
                raise
            except Exception:  # a schedule this scheduler cannot follow: the others still run
                log.exception("cannot schedule campaign %s; it gets no job", campaign.id)
                continue
            if job is not None:
                wanted.append(job)
        await asyncio.to_thread(apply_jobs, scheduler, wanted, now)

    def _housekeeping_jobs(self, now: datetime) -> list[JobSpec]:
        poll = self._settings.notifier.scheduler.trigger_poll_seconds
        jobs = [
            JobSpec(RESUME_JOB, "resume unfinished runs every minute", resume_job, every(RESUME_EVERY, now)),
            JobSpec(TRIGGERS_JOB, f"fire due triggers every {poll}s", triggers_job, every(poll, now)),
            JobSpec(EVENT_FEED_JOB, f"read the event stream every {poll}s", event_feed_job, every(poll, now)),
        ]
        config = self._settings.notifier.scheduler
        if self._archive_trigger is not None:
            jobs.append(
                JobSpec(
                    ARCHIVE_JOB,
                    f"archive events at '{config.archive_cron}' UTC",
                    archive_job,
                    self._archive_trigger,
                )
            )
        if self._retrain_trigger is not None:
            command = " ".join(config.retrain_command)
            jobs.append(
                JobSpec(
                    RETRAIN_JOB,
                    f"run '{command}' at '{config.retrain_cron}' UTC",
                    retrain_job,
                    self._retrain_trigger,
                )
            )
        return jobs

    async def _campaign_job(self, campaign: Campaign, now: datetime) -> JobSpec | None:
        schedule, trigger = campaign.schedule, campaign_trigger(campaign)
        if campaign.status != "active" or schedule is None or trigger is None:
            return None
        if isinstance(trigger, DateTrigger) and not await self._once_pending(
            campaign.id, trigger.run_date, now
        ):
            return None
        # Saving a campaign moves `updated_at`; the schedule's digest also catches two saves in one tick.
        digest = hashlib.blake2b(schedule.model_dump_json().encode(), digest_size=6).hexdigest()
        name = f"campaign {campaign.id} (updated {campaign.updated_at.isoformat()}, schedule {digest})"
        return JobSpec(CAMPAIGN_JOB_PREFIX + campaign.id, name, campaign_job, trigger, (campaign.id,))

    async def _once_pending(self, campaign_id: str, at: datetime, now: datetime) -> bool:
        """Whether a one-off firing is still to come: not past its grace, and its run not started.

        APScheduler drops a date job once it fired; this keeps reconciling from adding it back.
        """
        grace = timedelta(seconds=self._settings.notifier.scheduler.misfire_grace_seconds)
        if at + grace < now:
            return False
        with unavailable_as_error("read campaign runs"):
            started = await self._redis.zscore(self._keys.campaign_runs(campaign_id), run_id_at(at))
        return started is None

    # --- job bodies -------------------------------------------------------------------------------

    async def fire_campaign(self, campaign_id: str, scheduled: datetime | None = None) -> RunSummary | None:
        """Run a scheduled campaign for its firing at `scheduled` (default: now).

        A campaign deleted, paused or unscheduled since the job was stored is skipped (the next
        reconcile drops its job), and so is a run another process is executing already.
        """
        when = scheduled if scheduled is not None else self._clock()
        try:
            campaign = await self.campaigns.get(campaign_id)
        except NotFoundError:
            log.info("campaign %s is gone; not firing it", campaign_id)
            return None
        if campaign.status != "active" or campaign.schedule is None:
            return None
        run_id = run_id_at(when)
        try:
            summary = await self._runner.run(campaign, run_id)
        except ConflictError as exc:
            log.info("campaign %s run %s: %s", campaign_id, run_id, exc.detail)
            return None
        log.info(
            "campaign %s run %s: %s, %d message(s)", campaign_id, run_id, summary.status, summary.messages
        )
        return summary

    async def resume_unfinished(self) -> list[RunSummary]:
        """Run again every run a crashed process left unfinished; the runner resumes where it stopped."""
        summaries = []
        for campaign_id, run_id in await self._runner.unfinished_runs():
            try:
                campaign = await self.campaigns.get(campaign_id)
                summaries.append(await self._runner.run(campaign, run_id))
                log.info("resumed run %s of campaign %s", run_id, campaign_id)
            except RecsvcError as exc:
                log.warning("cannot resume run %s of campaign %s: %s", run_id, campaign_id, exc.detail)
        return summaries

    async def fire_triggers(self) -> dict[str, int]:
        return await self.triggers.fire_due(self._clock())

    async def read_events(self) -> DrainResult:
        return await self.feed.drain()

    async def archive(self) -> ArchiveResult | None:
        """Move accepted events to the training data folder (in a thread: it is blocking I/O)."""

        def archive_now() -> ArchiveResult:
            client = connect_sync(self._settings, timeout=ARCHIVE_REDIS_TIMEOUT_SECONDS)
            try:
                return archive_events(client, self._settings)
            finally:
                client.close()

        try:
            result = await asyncio.to_thread(archive_now)
        except ArchiveBusy:
            log.info("the event archive is already running elsewhere")
            return None
        log.info("archived %d event(s) into %d file(s)", result.archived, len(result.files))
        return result

    async def retrain(self) -> int | None:
        """Run `retrain_command` as its own process (the notifier never imports the trainer).

        Returns its exit status; None if it could not start. If this job is cancelled (the leader
        stops), the process runs on: it only promotes a better model, which is safe to finish.
        """
        command = self._settings.notifier.scheduler.retrain_command
        try:
            process = await asyncio.create_subprocess_exec(*_installed(command))
        except OSError as exc:
            log.error("cannot start the retrain command %s: %s", command, exc)
            return None
        code = await process.wait()
        if code:
            log.error("the retrain command %s failed with exit status %d", command, code)
        else:
            log.info("the retrain command %s finished", command)
        return code


def _installed(command: Sequence[str]) -> list[str]:
    """`command`, with a leading `recsvc` run as this installation's (`python -m recsvc.cli`): the
    virtual environment's `bin` need not be on PATH, as under `make run` or a service manager."""
    if command and command[0] == "recsvc":
        return [sys.executable, "-m", "recsvc.cli", *command[1:]]
    return list(command)


# --- the process ------------------------------------------------------------------------------------


async def run_scheduler(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """`recsvc scheduler`: lead or stand by until SIGINT/SIGTERM (or `stop`), then hand over.

    Builds the Redis client, the model holder (kept current by polling the registry) and the
    campaign runner, and runs the scheduler's rounds.
    """
    # APScheduler logs every job execution at INFO; ours log what matters.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.getLogger().level))
    loop = asyncio.get_running_loop()
    signals: tuple[signal.Signals, ...] = ()
    if stop is None:
        stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
    client = await asyncio.to_thread(connect_async, settings, timeout=SCHEDULER_REDIS_TIMEOUT_SECONDS)
    models = ModelHolder(Registry(settings.registry.dir), settings)
    watcher: asyncio.Task[None] | None = None
    try:
        await models.refresh()
        watcher = asyncio.create_task(models.watch())
        scheduler = CampaignScheduler(client, settings, CampaignRunner(client, settings, models))
        log.info("scheduler %s started (model %s)", scheduler.lease.owner, models.version)
        await scheduler.run_forever(stop)
    finally:
        if watcher is not None:
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
        for signum in signals:
            loop.remove_signal_handler(signum)
        await client.aclose()
