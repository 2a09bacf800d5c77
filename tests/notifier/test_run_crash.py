"""A run killed half-way (SIGKILL, in another process) and run again sends each user exactly once.

The child process runs a campaign over 3,000 users in batches of 100 against the same Redis and
key prefix. Its injected clock, read at the start of every batch, stops the child once the
outbox holds some messages: the test then kills it, so the kill lands between two batches
(a batch's writes are one transaction, so every kill point looks like one of these).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from runner_support import REACHABLE, campaign, put_profiles, run_stats
from shop import NOW, ManualClock

from notifier.messages import message_id
from notifier.runner import CampaignRunner
from recsvc.config import Settings
from recsvc.current_model import ModelHolder
from recsvc.keys import Keys
from recsvc.state import Store

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
USERS = [f"k-u{n}" for n in range(3000)]
ELIGIBLE = [user for n, user in enumerate(USERS) if n % 10]  # every tenth user has no consent
STOP_AT = 500  # messages in the outbox when the child stops to be killed
RUN = "crash"
CHILD_TIMEOUT_SECONDS = 120.0

CHILD = """
import asyncio, sys
from datetime import datetime

import redis

from notifier.campaign import Campaign
from notifier.runner import CampaignRunner
from recsvc.config import load_settings
from recsvc.current_model import ModelHolder
from recsvc.keys import Keys
from recsvc.redis_conn import connect_async, connect_sync
from recsvc.registry import Registry


async def main() -> None:
    settings = load_settings()
    campaign = Campaign.model_validate_json(sys.argv[1])
    now, stop_at = datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
    outbox = Keys(settings.redis.prefix).outbox()
    probe = connect_sync(settings, timeout=10)

    def clock() -> datetime:
        if probe.xlen(outbox) >= stop_at:
            print("stopped", flush=True)
            sys.stdin.read()  # wait here for the SIGKILL
        return now

    models = ModelHolder(Registry(settings.registry.dir), settings)
    await models.refresh()
    runner = CampaignRunner(connect_async(settings, timeout=10), settings, models, clock=clock)
    await runner.run(campaign, sys.argv[4])
    print("finished", flush=True)


asyncio.run(main())
"""


def child_env(settings: Settings) -> dict[str, str]:
    """This test's settings for the child: the same Redis, key prefix and model registry."""
    return {
        **os.environ,
        "RECSVC_CONFIG": str(REPO / "configs" / "default.toml"),
        "RECSVC_REDIS__URL": settings.redis.url,
        "RECSVC_REDIS__PREFIX": settings.redis.prefix,
        "RECSVC_REGISTRY__DIR": str(settings.registry.dir),
        "RECSVC_NOTIFIER__BATCH_SIZE": "100",
    }


async def test_a_killed_run_resumed_sends_each_user_exactly_once(
    aredis: aioredis.Redis, store: Store, shop_settings: Settings, models: ModelHolder
) -> None:
    keys = Keys(shop_settings.redis.prefix)
    await put_profiles(
        store,
        {
            user: REACHABLE if user in set(ELIGIBLE) else {**REACHABLE, "push_consent": False}
            for user in USERS
        },
    )
    crash = campaign("crash-test")
    await aredis.hset(keys.campaigns(), crash.id, crash.model_dump_json())
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, crash.model_dump_json(), NOW.isoformat(), str(STOP_AT), RUN],
        cwd=REPO,
        env=child_env(shop_settings),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(CHILD_TIMEOUT_SECONDS, child.kill)  # never hang the suite on a stuck child
    watchdog.start()
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.strip() == "stopped", child.stderr.read() if child.stderr else ""
    finally:
        watchdog.cancel()
        child.send_signal(signal.SIGKILL)
        child.communicate()
    before = await aredis.xlen(keys.outbox())
    assert 0 < before < len(ELIGIBLE)
    assert await aredis.hget(keys.campaign_run(crash.id, RUN), "status") == "running"

    runner = CampaignRunner(aredis, shop_settings, models, clock=ManualClock(NOW))
    assert await runner.unfinished_runs() == []  # the dead child's leases have not lapsed yet
    assert str(await aredis.get(keys.campaign_writer())).startswith(f"{crash.id}/{RUN}/")
    await aredis.delete(keys.campaign_run_lock(crash.id, RUN), keys.campaign_writer())  # ... now they have
    assert await runner.unfinished_runs() == [(crash.id, RUN)]
    summary = await runner.run(crash, RUN)
    assert summary.resumed and summary.counts["sent"] == len(ELIGIBLE) - before

    # Exactly one message per eligible user: in the outbox once, stored, and in the push records.
    queued = [fields["message_id"] for _, fields in await aredis.xrange(keys.outbox())]
    expected = {message_id(crash.id, RUN, user) for user in ELIGIBLE}
    assert len(queued) == len(set(queued)) == len(ELIGIBLE) and set(queued) == expected
    async with aredis.pipeline(transaction=False) as pipe:
        for user in USERS:
            pipe.exists(keys.message(message_id(crash.id, RUN, user)))
            pipe.zcard(keys.user_pushes(user))
        replies = await pipe.execute()
    eligible = set(ELIGIBLE)
    assert replies[0::2] == [int(user in eligible) for user in USERS]
    assert replies[1::2] == [int(user in eligible) for user in USERS]
    # Counters equal a clean run's.
    clean = {
        "targeted": len(USERS),
        "sent": len(ELIGIBLE),
        "suppressed:no_consent": len(USERS) - len(ELIGIBLE),
    }
    assert await run_stats(aredis, keys, crash.id, RUN) == clean
    assert await run_stats(aredis, keys, crash.id, None) == clean
    assert await aredis.hget(keys.campaign_run(crash.id, RUN), "status") == "done"
    assert await runner.unfinished_runs() == []
