"""The benches' Redis: no forks while timed, and the bench's keys gone at the end.

The embedded server (the bench's own, under its work folder: one bench at a time per folder)
takes no RDB snapshots and does no automatic AOF rewrites, so no child process forks onto the
bench's two cores in the timed part. At the end its AOF is rewritten once, as the data is then
small: without rewrites the file only grew, and replaying 150 MB of it took 30 s at the next
start. Then it is stopped, giving its memory back. A server at `REDIS_URL` is left configured
as it is. Either way the keys under the bench's prefix are deleted at the end, even when the run
fails, so runs do not pile data up for later ones.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from recsvc.config import Settings
from recsvc.redis_conn import connect_sync, redis_url, stop_embedded

DELETE_CHUNK = 10_000
REDIS_TIMEOUT_SECONDS = 600.0


@contextmanager
def bench_redis(settings: Settings, *, appendonly: bool) -> Iterator[redis.Redis]:
    """A blocking client with a generous timeout; see the module docstring for what it sets up.

    `appendonly=False` also stops the embedded server's AOF, for benches whose writes are not
    what they measure; the AOF file then no longer follows the data (the bench's own server).
    """
    embedded = redis_url(settings) is None
    client = connect_sync(settings, timeout=REDIS_TIMEOUT_SECONDS)
    try:
        if embedded:
            client.config_set("save", "")
            client.config_set("auto-aof-rewrite-percentage", 0)
            if not appendonly:
                client.config_set("appendonly", "no")
        yield client
    finally:
        try:
            deleted = delete_prefix(client, settings.redis.prefix)
            print(f"deleted {deleted:,} keys under {settings.redis.prefix}")
            if embedded and appendonly:
                compact_aof(client)
        finally:
            client.close()
            if embedded:
                stop_embedded(settings.redis.embedded_path)


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """UNLINK every key under `prefix`; returns how many there were."""
    deleted = 0
    batch: list[str] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=DELETE_CHUNK):
        batch.append(key)
        if len(batch) >= DELETE_CHUNK:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def compact_aof(client: redis.Redis) -> None:
    """Rewrite the append-only file from the data now in memory, and wait until it is done."""
    client.bgrewriteaof()
    while True:
        persistence = client.info("persistence")
        if not (persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]):
            return
        time.sleep(0.05)
