"""The scheduler: leader election, campaign jobs in Redis, job bodies, housekeeping, the process."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.triggers.interval import IntervalTrigger
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from scheduler_support import (
    RecordingRunner,
    RunCall,
    campaign_spec,
    create,
    scheduler_settings,
)
from shop import NOW, ManualClock

from notifier.campaign import Campaign
from notifier.crontab import crontab_weekdays
from notifier.jobs import JobSpec, apply_jobs, campaign_job, every
from notifier.scheduler import (
    ARCHIVE_JOB,
    EVENT_FEED_JOB,
    RESUME_JOB,
    RETRAIN_JOB,
    TRIGGERS_JOB,
    CampaignScheduler,
    run_id_at,
    run_scheduler,
)
from notifier.store import CampaignStore
from recsvc.config import Settings
from recsvc.errors import ConfigError
from recsvc.keys import Keys
from recsvc.registry import Registry
from recsvc.state import Event, Store

pytestmark = pytest.mark.anyio

POLLING = {RESUME_JOB, TRIGGERS_JOB, EVENT_FEED_JOB}

Factory = Callable[..., CampaignScheduler]


@pytest.fixture
def runner() -> RecordingRunner:
    return RecordingRunner()


@pytest.fixture
def campaigns(aredis: aioredis.Redis, shop_settings: Settings, clock: ManualClock) -> CampaignStore:
    return CampaignStore(aredis, shop_settings, clock=clock)


@pytest.fixture
async def schedulers(
    aredis: aioredis.Redis, shop_settings: Settings, runner: RecordingRunner, clock: ManualClock
) -> AsyncIterator[Factory]:
    """Builds schedulers on the test's Redis (jobs stored, never fired by APScheduler); stops them all."""
    made: list[CampaignScheduler] = []

    def make(owner: str, settings: Settings | None = None, **options: Any) -> CampaignScheduler:
        options.setdefault("fire_jobs", False)
        chosen = settings if settings is not None else scheduler_settings(shop_settings)
        scheduler = CampaignScheduler(aredis, chosen, runner, owner=owner, clock=clock, **options)
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        await scheduler.stop(release=False)


def job_ids(scheduler: CampaignScheduler) -> set[str]:
    assert scheduler.apscheduler is not None
    return {job.id for job in scheduler.apscheduler.get_jobs()}


def next_run(scheduler: CampaignScheduler, job_id: str) -> datetime:
    assert scheduler.apscheduler is not None
    job = scheduler.apscheduler.get_job(job_id)
    assert job is not None, f"no job {job_id}"
    when: datetime = job.next_run_time
    return when


# --- leadership -------------------------------------------------------------------------------------


async def test_only_the_lease_holder_runs_an_apscheduler_with_the_jobs(
    schedulers: Factory, campaigns: CampaignStore, aredis: aioredis.Redis, shop_settings: Settings
) -> None:
    await create(campaigns, "weekly", campaign_spec())
    first, second = schedulers("first"), schedulers("second")

    await first.tick()
    await second.tick()

    assert first.leading and not second.leading
    assert first.apscheduler is not None and first.apscheduler.running
    assert second.apscheduler is None
    assert job_ids(first) == {"campaign:weekly", *POLLING}
    stored = await aredis.hkeys(Keys(shop_settings.redis.prefix).scheduler_jobs())
    assert set(stored) == {"campaign:weekly", *POLLING}


async def test_a_dead_leader_is_replaced_once_its_lease_lapses(
    schedulers: Factory, campaigns: CampaignStore, aredis: aioredis.Redis
) -> None:
    await create(campaigns, "weekly", campaign_spec())
    first, second = schedulers("first"), schedulers("second")
    await first.tick()
    await first.stop(release=False)  # killed: its lease stays until the TTL runs out

    await second.tick()
    assert not second.leading

    await aredis.delete(first.lease.key)  # the TTL ran out
    await second.tick()

    assert second.leading
    assert "campaign:weekly" in job_ids(second)


async def test_a_leader_that_lost_its_lease_stops_at_once(
    schedulers: Factory, aredis: aioredis.Redis
) -> None:
    first, second = schedulers("first"), schedulers("second")
    await first.tick()
    stale = first.apscheduler
    await aredis.delete(first.lease.key)  # e.g. the leader stalled past its TTL
    await second.tick()

    await first.tick()

    assert second.leading and not first.leading
    assert stale is not None and stale.state == STATE_STOPPED
    assert await first.lease.holder() == "second"


async def test_stopping_hands_the_lease_over(schedulers: Factory) -> None:
    first, second = schedulers("first"), schedulers("second")
    await first.tick()

    await first.stop()
    await second.tick()

    assert second.leading


# --- campaign jobs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "cron", "zone", "expected"),
    [
        (NOW, "0 9 * * *", "Europe/Berlin", datetime(2024, 2, 2, 8, 0, tzinfo=UTC)),  # CET: UTC+1
        (  # the spring-forward day: 09:00 CEST is 07:00 UTC
            datetime(2024, 3, 30, 12, 0, tzinfo=UTC),
            "0 9 * * *",
            "Europe/Berlin",
            datetime(2024, 3, 31, 7, 0, tzinfo=UTC),
        ),
        (NOW, "30 8 * * 1", "America/New_York", datetime(2024, 2, 5, 13, 30, tzinfo=UTC)),  # Monday, EST
    ],
)
async def test_a_cron_campaign_runs_next_at_its_time_in_its_timezone(
    schedulers: Factory,
    campaigns: CampaignStore,
    clock: ManualClock,
    now: datetime,
    cron: str,
    zone: str,
    expected: datetime,
) -> None:
    clock.now = now
    await create(
        campaigns, "weekly", campaign_spec(schedule={"kind": "cron", "cron": cron, "timezone": zone})
    )
    scheduler = schedulers("first")

    await scheduler.tick()

    assert next_run(scheduler, "campaign:weekly") == expected


@pytest.mark.parametrize(
    ("field", "days"),
    [
        ("*", "*"),
        ("1", "mon"),
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "sun,fri,sat"),
        ("*/2", "sun,tue,thu,sat"),
        ("1-5/2,0", "sun,mon,wed,fri"),
        ("mon-wed", "mon,tue,wed"),
        ("SAT", "sat"),
    ],
)
def test_crontab_weekdays_count_from_sunday(field: str, days: str) -> None:
    assert crontab_weekdays(field) == days


@pytest.mark.parametrize("field", ["8", "5-1", "*/0", "someday", ""])
def test_invalid_crontab_weekdays_are_refused(field: str) -> None:
    with pytest.raises(ValueError):
        crontab_weekdays(field)


async def test_each_kind_of_schedule_becomes_a_job(schedulers: Factory, campaigns: CampaignStore) -> None:
    await create(campaigns, "every", campaign_spec(schedule={"kind": "interval", "every_minutes": 90}))
    at = NOW + timedelta(hours=2)
    await create(campaigns, "once", campaign_spec(schedule={"kind": "once", "at": at.isoformat()}))
    local = {"kind": "local_time", "at": "10:00", "prepare_at": "06:30"}
    await create(campaigns, "local", campaign_spec(schedule=local))
    naive = {"kind": "once", "at": "2024-02-03T10:00:00", "timezone": "Asia/Tokyo"}
    await create(campaigns, "tokyo", campaign_spec(schedule=naive))
    await create(campaigns, "on-demand", campaign_spec(schedule=None))
    trigger = {"event": "add_to_cart", "delay_minutes": 30}
    await create(campaigns, "cart", campaign_spec(schedule=None, trigger=trigger))
    scheduler = schedulers("first")

    await scheduler.tick()

    assert job_ids(scheduler) == {
        "campaign:every",
        "campaign:once",
        "campaign:local",
        "campaign:tokyo",
        *POLLING,
    }
    assert next_run(scheduler, "campaign:every") == NOW  # from creation, every 90 minutes
    assert next_run(scheduler, "campaign:once") == at
    assert next_run(scheduler, "campaign:local") == datetime(2024, 2, 2, 6, 30, tzinfo=UTC)
    assert next_run(scheduler, "campaign:tokyo") == datetime(2024, 2, 3, 1, 0, tzinfo=UTC)


async def test_a_one_off_campaign_whose_run_started_is_not_scheduled_again(
    schedulers: Factory, campaigns: CampaignStore, aredis: aioredis.Redis, shop_settings: Settings
) -> None:
    at = NOW + timedelta(minutes=5)
    await create(campaigns, "once", campaign_spec(schedule={"kind": "once", "at": at.isoformat()}))
    scheduler = schedulers("first")
    await scheduler.tick()
    assert "campaign:once" in job_ids(scheduler)
    assert scheduler.apscheduler is not None
    scheduler.apscheduler.remove_job("campaign:once")  # what APScheduler does once it fired it
    runs = Keys(shop_settings.redis.prefix).campaign_runs("once")
    await aredis.zadd(runs, {run_id_at(at): at.timestamp()})  # the runner records the run

    await scheduler.tick()

    assert "campaign:once" not in job_ids(scheduler)


async def test_pausing_removes_the_job_and_resuming_or_editing_replaces_it(
    schedulers: Factory, campaigns: CampaignStore, clock: ManualClock
) -> None:
    await create(campaigns, "weekly", campaign_spec())
    scheduler = schedulers("first")
    await scheduler.tick()

    clock.now += timedelta(minutes=1)
    await campaigns.set_status("weekly", "paused")
    await scheduler.tick()
    assert "campaign:weekly" not in job_ids(scheduler)

    await campaigns.set_status("weekly", "active")
    await scheduler.tick()
    assert next_run(scheduler, "campaign:weekly") == datetime(2024, 2, 2, 8, 0, tzinfo=UTC)

    await campaigns.replace("weekly", campaign_spec(schedule={"kind": "cron", "cron": "0 14 * * *"}))
    await scheduler.tick()
    assert next_run(scheduler, "campaign:weekly") == datetime(2024, 2, 1, 14, 0, tzinfo=UTC)

    await campaigns.delete("weekly")
    await scheduler.tick()
    assert job_ids(scheduler) == POLLING


async def test_jobs_survive_a_restart_because_they_live_in_redis(
    schedulers: Factory,
    campaigns: CampaignStore,
    clock: ManualClock,
    aredis: aioredis.Redis,
    shop_settings: Settings,
) -> None:
    await create(campaigns, "weekly", campaign_spec())
    first = schedulers("first")
    await first.tick()
    await first.stop()
    jobs = Keys(shop_settings.redis.prefix).scheduler_jobs()
    assert await aredis.hexists(jobs, "campaign:weekly")  # with no scheduler running

    clock.now += timedelta(days=3)  # down for days; a rebuilt job would be due on 2024-02-05
    restarted = schedulers("restarted")
    await restarted.tick()

    # The stored job is kept: its missed run is still pending, to fire within the grace time.
    assert next_run(restarted, "campaign:weekly") == datetime(2024, 2, 2, 8, 0, tzinfo=UTC)


async def test_a_stored_campaign_the_scheduler_cannot_follow_does_not_stop_the_others(
    schedulers: Factory, campaigns: CampaignStore, aredis: aioredis.Redis, shop_settings: Settings
) -> None:
    """Found by the API audit: a `once` at 9999-12-31 (OverflowError adding the grace) or an
    `interval` of 1e12 minutes (ValueError in APScheduler) failed every round, so no campaign was
    scheduled. Saving now refuses both; these are stored as if saved before that check."""
    await create(campaigns, "weekly", campaign_spec())
    good = (await campaigns.get("weekly")).model_dump(mode="json")
    bad_schedules = {
        "far": {"kind": "once", "at": "9999-12-31T23:59:59", "timezone": "Pacific/Kiritimati"},
        "rare": {"kind": "interval", "every_minutes": 1e12, "timezone": "UTC"},
    }
    stored = {
        campaign_id: json.dumps({**good, "id": campaign_id, "schedule": schedule})
        for campaign_id, schedule in bad_schedules.items()
    }
    await aredis.hset(Keys(shop_settings.redis.prefix).campaigns(), mapping=stored)
    scheduler = schedulers("first")

    await scheduler.tick()

    assert job_ids(scheduler) == {"campaign:weekly", *POLLING}


async def test_a_campaign_whose_job_cannot_be_built_is_skipped(
    aredis: aioredis.Redis,
    shop_settings: Settings,
    runner: RecordingRunner,
    clock: ManualClock,
    campaigns: CampaignStore,
) -> None:
    """Whatever breaks one campaign's job (here: any error), the round schedules the others."""

    class Breaking(CampaignScheduler):
        async def _campaign_job(self, campaign: Campaign, now: datetime) -> JobSpec | None:
            if campaign.id == "broken":
                raise OverflowError("date value out of range")
            return await super()._campaign_job(campaign, now)

    await create(campaigns, "broken", campaign_spec())
    await create(campaigns, "weekly", campaign_spec())
    scheduler = Breaking(aredis, scheduler_settings(shop_settings), runner, clock=clock, fire_jobs=False)
    try:
        await scheduler.tick()
        assert job_ids(scheduler) == {"campaign:weekly", *POLLING}
    finally:
        await scheduler.stop()


async def test_a_job_whose_trigger_cannot_compute_its_first_firing_is_removed(
    schedulers: Factory, campaigns: CampaignStore
) -> None:
    await create(campaigns, "weekly", campaign_spec())
    scheduler = schedulers("first")
    await scheduler.tick()
    assert scheduler.apscheduler is not None
    start = NOW - timedelta(days=1)  # the next firing lies past the year 9999
    overflowing = IntervalTrigger(minutes=1e12, start_date=start, timezone=UTC)
    wanted = [
        JobSpec("campaign:rare", "rare", campaign_job, overflowing, ("rare",)),
        JobSpec("campaign:daily", "daily", campaign_job, every(timedelta(days=1), NOW), ("daily",)),
    ]
    scheduler.apscheduler.add_job(campaign_job, every(60, NOW), args=("rare",), id="campaign:rare")

    await asyncio.to_thread(apply_jobs, scheduler.apscheduler, wanted, NOW)

    assert job_ids(scheduler) == {"campaign:daily"}


# --- job bodies ---------------------------------------------------------------------------------------


async def test_a_fired_campaign_runs_with_its_scheduled_minute_as_run_id(
    schedulers: Factory, campaigns: CampaignStore, runner: RecordingRunner, clock: ManualClock
) -> None:
    await create(campaigns, "weekly", campaign_spec())
    await create(campaigns, "paused", campaign_spec())
    await campaigns.set_status("paused", "paused")
    scheduler = schedulers("first")

    await scheduler.fire_campaign("weekly", datetime(2024, 2, 2, 9, 0, 42, tzinfo=UTC))
    clock.now = NOW + timedelta(seconds=59)
    await scheduler.fire_campaign("weekly")  # no scheduled time: the clock's minute
    await scheduler.fire_campaign("paused", NOW)
    await scheduler.fire_campaign("deleted", NOW)

    assert runner.calls == [
        RunCall("weekly", "20240202T0900Z", None, {}),
        RunCall("weekly", "20240201T1200Z", None, {}),
    ]


async def test_the_leaders_apscheduler_fires_a_due_job_with_its_scheduled_time(
    schedulers: Factory, campaigns: CampaignStore, runner: RecordingRunner, clock: ManualClock
) -> None:
    clock.now = datetime.now(UTC)  # APScheduler decides what is due by the real time
    at = clock.now - timedelta(seconds=30)
    await create(campaigns, "once", campaign_spec(schedule={"kind": "once", "at": at.isoformat()}))
    scheduler = schedulers("first", fire_jobs=True)

    await scheduler.tick()
    await asyncio.wait_for(runner.called.wait(), timeout=30)

    assert runner.calls == [RunCall("once", run_id_at(at), None, {})]


async def test_unfinished_runs_are_run_again(
    schedulers: Factory, campaigns: CampaignStore, runner: RecordingRunner
) -> None:
    await create(campaigns, "weekly", campaign_spec())
    runner.unfinished = [("gone", "20240201T0800Z"), ("weekly", "20240201T0800Z")]
    scheduler = schedulers("first")

    await scheduler.resume_unfinished()

    assert runner.calls == [RunCall("weekly", "20240201T0800Z", None, {})]


# --- housekeeping -------------------------------------------------------------------------------------


async def test_housekeeping_jobs_follow_the_configuration(
    schedulers: Factory, shop_settings: Settings
) -> None:
    configured = scheduler_settings(shop_settings, archive_cron="*/15 * * * *", retrain_cron="0 3 * * *")
    scheduler = schedulers("first", configured)
    await scheduler.tick()
    assert job_ids(scheduler) == {ARCHIVE_JOB, RETRAIN_JOB, *POLLING}
    assert next_run(scheduler, ARCHIVE_JOB) == NOW  # 12:00 is a quarter hour
    assert next_run(scheduler, RETRAIN_JOB) == datetime(2024, 2, 2, 3, 0, tzinfo=UTC)
    await scheduler.stop()

    turned_off = schedulers("second", scheduler_settings(configured, retrain_cron="0 3 * * *"))
    await turned_off.tick()
    assert job_ids(turned_off) == {RETRAIN_JOB, *POLLING}


async def test_an_invalid_housekeeping_cron_stops_start_up(
    schedulers: Factory, shop_settings: Settings
) -> None:
    with pytest.raises(ConfigError, match="archive_cron"):
        schedulers("first", scheduler_settings(shop_settings, archive_cron="every day"))


async def test_the_archive_job_moves_events_into_the_data_folder(
    schedulers: Factory, store: Store, shop_settings: Settings
) -> None:
    await store.record_events([Event("u1", "a1", "view", NOW)], [None])

    result = await schedulers("first").archive()

    assert result is not None and result.archived == 1
    assert [path.parent for path in result.files] == [shop_settings.data.dir / "events"]


async def test_the_retrain_job_runs_its_command_as_a_process(
    schedulers: Factory, shop_settings: Settings, tmp_path: Path
) -> None:
    flag = tmp_path / "trained"
    write = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('done')"
    command = [sys.executable, "-c", write, str(flag)]

    assert await schedulers("ok", scheduler_settings(shop_settings, retrain_command=command)).retrain() == 0
    assert flag.read_text() == "done"

    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    assert (
        await schedulers("fails", scheduler_settings(shop_settings, retrain_command=failing)).retrain() == 3
    )
    missing = [str(tmp_path / "no-such-program")]
    assert (
        await schedulers("gone", scheduler_settings(shop_settings, retrain_command=missing)).retrain() is None
    )


async def test_a_retrain_command_starting_with_recsvc_needs_no_virtual_environment_on_path(
    schedulers: Factory, shop_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` and service managers start the scheduler without the venv's `bin` on PATH."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    command = ["recsvc", "--help"]
    assert await schedulers("ok", scheduler_settings(shop_settings, retrain_command=command)).retrain() == 0


# --- the process ----------------------------------------------------------------------------------------


async def test_the_scheduler_process_leads_schedules_and_hands_over_on_stop(
    registry: Registry, shop_settings: Settings, campaigns: CampaignStore, aredis: aioredis.Redis
) -> None:
    await create(campaigns, "weekly", campaign_spec())
    stop = asyncio.Event()
    stop.set()  # one round, then a clean stop

    await run_scheduler(scheduler_settings(shop_settings), stop=stop)

    keys = Keys(shop_settings.redis.prefix)
    assert "campaign:weekly" in await aredis.hkeys(keys.scheduler_jobs())
    assert await aredis.get(keys.scheduler_lease()) is None


async def test_a_round_without_redis_is_one_logged_line(
    shop_settings: Settings, runner: RecordingRunner, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """An outage logged a 40-line traceback every round (every `renew_seconds`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once the socket closes
    unreachable = aioredis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
    )
    scheduler = CampaignScheduler(unreachable, scheduler_settings(shop_settings), runner, clock=clock)
    stop = asyncio.Event()
    stop.set()  # one round, then stop
    try:
        with caplog.at_level(logging.ERROR, logger="notifier.scheduler"):
            await scheduler.run_forever(stop)
    finally:
        await unreachable.aclose()
    [record] = [r for r in caplog.records if r.name == "notifier.scheduler"]
    assert record.getMessage().startswith("scheduler round failed: Redis unavailable")
    assert record.exc_info is None
