"""The one boundary where Redis failures become HTTP answers.

`recsvc.state` already turns connection failures and timeouts into `RedisUnavailable`; any
other Redis error (a server refusing writes, out of memory, a read-only replica) is no bug of
the request either. Both become `ServiceUnavailable` (503 with `Retry-After`) here and are
counted, so a Redis problem is never a 500. Routes that can answer without Redis catch
`ServiceUnavailable` and degrade instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from recsvc.redis_conn import RedisUnavailable
from serving.errors import ServiceUnavailable
from serving.metrics import Metrics

log = logging.getLogger(__name__)


@contextmanager
def map_redis_errors(operation: str, *, metrics: Metrics, retry_after: int) -> Iterator[None]:
    """Run Redis calls; a failure is counted and raised as `ServiceUnavailable`."""
    try:
        yield
    except (RedisUnavailable, RedisError, OSError) as exc:
        metrics.redis_errors.labels(operation=operation).inc()
        log.warning("Redis failed during %s: %s", operation, exc)
        raise ServiceUnavailable(
            f"real-time state is unavailable ({operation}); retry later", retry_after=retry_after
        ) from exc
