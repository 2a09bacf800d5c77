"""A lease in Redis: at most one owner at a time holds a key, for as long as it keeps renewing it.

Leader election for the scheduler: every scheduler process tries to take the lease; the one
that holds it leads. The lease is a key whose value is the owner's id and whose TTL is the
lease's length, so an owner that dies (or stalls past the TTL) loses it without anyone's help,
and no process clock takes part: Redis alone decides when a lease has lapsed. Renewing and
releasing are scripts that act only while the key still names this owner, so an owner whose
lease lapsed and was taken by another can never extend or delete the new owner's lease.
"""

from __future__ import annotations

import math

import redis.asyncio as aioredis

from recsvc.errors import InputError
from recsvc.redis_conn import unavailable_as_error

# KEYS: the lease. ARGV: owner, TTL (ms). Extend the lease only while this owner holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: the lease. ARGV: owner. Delete the lease only while this owner holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """The lease `key` as seen by `owner`; `ttl` is its length in seconds."""

    def __init__(self, redis: aioredis.Redis, key: str, owner: str, ttl: float) -> None:
        if ttl <= 0:
            raise InputError(f"a lease needs a positive TTL, not {ttl}", field="ttl")
        self._redis = redis
        self.key = key
        self.owner = owner
        self._ttl_ms = max(1, math.ceil(ttl * 1000))

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it (SET NX PX); True also when this owner holds it already."""
        with unavailable_as_error("acquire lease"):
            if await self._redis.set(self.key, self.owner, nx=True, px=self._ttl_ms):
                return True
        return await self.renew()

    async def renew(self) -> bool:
        """Extend the lease to a full TTL from now, only if this owner still holds it."""
        with unavailable_as_error("renew lease"):
            renewed = await self._redis.eval(_RENEW, 1, self.key, self.owner, str(self._ttl_ms))
        return bool(renewed)

    async def release(self) -> bool:
        """Give the lease up, only if this owner holds it, so another can take it at once."""
        with unavailable_as_error("release lease"):
            released = await self._redis.eval(_RELEASE, 1, self.key, self.owner)
        return bool(released)

    async def holder(self) -> str | None:
        """The owner holding the lease now, if any."""
        with unavailable_as_error("read lease"):
            value = await self._redis.get(self.key)
        return None if value is None else str(value)
