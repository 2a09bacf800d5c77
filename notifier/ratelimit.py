"""A provider's send rate, shared by every delivery worker: one token bucket in Redis.

Push services throttle (FCM answers 429 past its quota) and webhooks have limited capacity, so
the limit must hold across all workers together, not per process. The bucket lives in one
Redis hash and is updated by one Lua script, which is atomic, with the time passed in from the
caller's clock (so tests drive it by hand). The bucket holds at most one second of sends, so a
quiet period allows a short burst at most; its key expires once it would be full again anyway.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

import redis.asyncio as aioredis

from recsvc.errors import RecsvcError
from recsvc.redis_conn import text
from recsvc.state import utc_now

# KEYS: the bucket hash (fields tokens, ts). ARGV: rate (tokens/s), capacity, now (unix s),
# tokens wanted, TTL (ms). Returns the seconds to wait (as a string: Lua numbers returned to
# Redis become integers) before that many tokens are there; 0 means they were taken. A denied
# request takes nothing, so the caller waits and asks again. A clock behind the bucket's (another
# worker's) adds no tokens and never moves the bucket back in time.
_ACQUIRE = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local wanted = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = capacity
  ts = now
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate)
  ts = now
end
local wait = 0
if tokens >= wanted then
  tokens = tokens - wanted
else
  wait = (wanted - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return string.format('%.17g', wait)
"""

# Kept a little longer than a refill takes, so clock differences between workers cannot reset it.
_TTL_MARGIN_SECONDS = 5.0


class RateLimiter:
    """A token bucket of `rate_per_second` with room for one second of sends (at least one)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        key: str,
        rate_per_second: float,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.rate = rate_per_second
        self.capacity = max(1.0, rate_per_second)
        self._redis = redis
        self._key = key
        self._clock = clock
        self._ttl_ms = math.ceil((self.capacity / self.rate + _TTL_MARGIN_SECONDS) * 1000)
        self._script = redis.register_script(_ACQUIRE)

    async def acquire(self, n: int = 1) -> float:
        """Take `n` tokens: 0.0 when taken, else the seconds until they would be there (none taken)."""
        if n > self.capacity:
            raise RecsvcError(
                f"{n} tokens can never fit a bucket of {self.capacity}", wanted=n, capacity=self.capacity
            )
        now = self._clock().timestamp()
        args = [repr(self.rate), repr(self.capacity), repr(now), str(n), str(self._ttl_ms)]
        wait = await self._script(keys=[self._key], args=args)
        return float(text(wait))
