"""Who may execute a campaign run and write its batches: two leases in Redis, both holding the
execution's token.

- The run's lease (`Keys.campaign_run_lock`): one process executes a run at a time; a run left
  `running` without it was abandoned, and the scheduler resumes it.
- The deployment's writer lease (`Keys.campaign_writer`): one run writes pushes at a time.
  Runs read a batch's caps before they write its pushes, so two at once (two campaigns due
  together, or `recsvc campaigns run` beside the scheduler) could both push a user past a cap.
  A run waits for it, polling, before it takes its own lease: a run that held its own lease
  while waiting could see it lapse, and be resumed meanwhile.

Every batch write presents the token and renews both (`notifier.batch_write.APPLY`); a process
that lost either writes nothing more. After a crash both lapse after `run_lock_seconds`.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from recsvc.errors import ConflictError
from recsvc.keys import Keys
from recsvc.redis_conn import unavailable_as_error

WRITER_POLL_SECONDS = 1.0  # how often a run waiting for another process's run asks again

# Delete each lease in KEYS that this execution still holds.
_RELEASE = """
for _, lease in ipairs(KEYS) do
  if redis.call('GET', lease) == ARGV[1] then redis.call('DEL', lease) end
end
return 0
"""

log = logging.getLogger(__name__)


class RunConflict(ConflictError):
    """Another process executes this run (or took its lease over after it lapsed)."""

    title = "Campaign run in progress"


@dataclass(frozen=True)
class Held:
    """One execution's leases: the token a batch write presents, and the lease keys it renews."""

    campaign_id: str
    run_id: str
    token: str
    keys: tuple[str, ...]


class RunLeases:
    """Takes, and gives back, the leases of run executions against one deployment's Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        lease_seconds: float,
        *,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.lease_ms = math.ceil(lease_seconds * 1000)
        self._sleep = sleep

    async def acquire(self, campaign_id: str, run_id: str) -> Held:
        """Both leases, the writer's first (waited for); `RunConflict` if the run is executing."""
        token = f"{campaign_id}/{run_id}/{secrets.token_hex(8)}"
        held = Held(
            campaign_id,
            run_id,
            token,
            (self._keys.campaign_run_lock(campaign_id, run_id), self._keys.campaign_writer()),
        )
        await self._await_writer(token)
        with unavailable_as_error("lock campaign run"):
            if not await self._redis.set(held.keys[0], token, nx=True, px=self.lease_ms):
                await self.release(held)
                raise RunConflict(
                    f"run {run_id!r} of campaign {campaign_id!r} is already being executed",
                    campaign_id=campaign_id,
                    run_id=run_id,
                )
        return held

    async def release(self, held: Held) -> None:
        """Give back whichever of the leases this execution still holds."""
        with unavailable_as_error("unlock campaign run"):
            await self._redis.eval(_RELEASE, len(held.keys), *held.keys, held.token)

    def lost(self, held: Held) -> RunConflict:
        """The error of a batch write refused because a lease had passed to another process."""
        return RunConflict(
            f"run {held.run_id!r} of campaign {held.campaign_id!r} lost its lease to another process",
            campaign_id=held.campaign_id,
            run_id=held.run_id,
        )

    async def _await_writer(self, token: str) -> None:
        writer, waiting = self._keys.campaign_writer(), False
        while True:
            with unavailable_as_error("lock campaign writes"):
                if await self._redis.set(writer, token, nx=True, px=self.lease_ms):
                    return
                holder = await self._redis.get(writer)
            if not waiting:
                log.info("run %s waits for run %s, executing in another process", token, holder)
                waiting = True
            await self._sleep(WRITER_POLL_SECONDS)
