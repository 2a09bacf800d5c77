"""`recsvc events archive`: move accepted events from the Redis stream into the training data folder.

Each batch of the stream becomes one Parquet file named by the first and last stream id it covers
(`stream-<first>-<last>.parquet`), written aside and renamed into place. Only then does the
high-water mark in Redis (the last archived id) move to the batch's end, and only up to the mark
is the stream trimmed, never past an entry the notifier's consumer group (`NOTIFIER_EVENTS_GROUP`:
triggers and conversions) has not finished: one not yet delivered to it, or delivered and not yet
acknowledged (while the notifier is stopped the stream keeps growing, by design). A crash
between any two of these steps is repaired by the next run: a file beyond the mark means the
mark was not advanced yet (the run advances it from the file names), and entries up to the mark
still in the stream are trimmed. No event is written twice and none is trimmed before its file
is on disk. One run at a time holds a lease in Redis, which a thread of the run keeps renewing,
so a killed run's lease lapses within `ARCHIVE_LOCK_TTL_SECONDS`.

Events of forgotten users are left out. Files archived before a user was forgotten still hold
their events: readers of the archive drop them with `forgotten_users`.
"""

from __future__ import annotations

import argparse
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis
from redis.lock import Lock

from recsvc.cli import positive_int
from recsvc.config import Settings
from recsvc.errors import InputError, RecsvcError
from recsvc.keys import ARCHIVE_LOCK_TTL_SECONDS, NOTIFIER_EVENTS_GROUP, Keys
from recsvc.redis_conn import connect_sync, text, unavailable_as_error
from recsvc.schema import EVENT_SCHEMA

ARCHIVE_FILE = re.compile(r"^stream-(\d+-\d+)-(\d+-\d+)\.parquet$")
# The archive reads large batches; a blocking client for it waits longer than a request would.
ARCHIVE_REDIS_TIMEOUT_SECONDS = 30.0

StreamId = tuple[int, int]
# Called after each step with its name ("written", "marked", "trimmed") and the batch's file
# (None when every event of the batch was dropped): a seam for tests to simulate a crash.
Checkpoint = Callable[[str, Path | None], None]


class ArchiveBusy(RecsvcError):
    """Another archive run holds the lease."""

    status = 409
    title = "Archive already running"


@dataclass(frozen=True)
class ArchiveResult:
    """What one run did: events written, events of forgotten users dropped, files, the mark."""

    archived: int
    dropped: int
    files: tuple[Path, ...]
    mark: str | None


def archive_events(
    redis: redis.Redis,
    settings: Settings,
    out_dir: Path | None = None,
    batch: int = 100_000,
    *,
    checkpoint: Checkpoint | None = None,
) -> ArchiveResult:
    """Archive every event in the stream into `out_dir` (default `<data.dir>/events`)."""
    if batch < 1:
        raise InputError(f"batch must be at least 1, not {batch}", field="batch")
    folder = out_dir if out_dir is not None else settings.data.dir / "events"
    folder.mkdir(parents=True, exist_ok=True)
    keys = Keys(settings.redis.prefix)
    step = checkpoint or (lambda _step, _path: None)
    with unavailable_as_error("archive"):
        # Not thread-local: the renewing thread must see the token the run acquired it with.
        lease = redis.lock(
            keys.events_archive_lock(), timeout=ARCHIVE_LOCK_TTL_SECONDS, blocking=False, thread_local=False
        )
        if not lease.acquire():
            raise ArchiveBusy(
                "another `recsvc events archive` is running (the lease of one that was killed lapses "
                f"within {ARCHIVE_LOCK_TTL_SECONDS} s)",
                key=keys.events_archive_lock(),
            )
        try:
            with _renewed(lease, every=ARCHIVE_LOCK_TTL_SECONDS / 3):
                return _archive(redis, keys, folder, batch, step)
        finally:
            if lease.owned():
                lease.release()


@contextmanager
def _renewed(lease: Lock, *, every: float) -> Iterator[None]:
    """Renew `lease` to its full TTL every `every` seconds until the block ends.

    A thread rather than a renewal per batch: a batch may take longer than the TTL (a slow disk,
    a large `--batch`), and the TTL can then stay short. A renewal fails only when Redis is
    unreachable, when the run's own calls fail too, or when the lease was lost.
    """
    done = threading.Event()

    def renew() -> None:
        while not done.wait(every):
            try:
                lease.reacquire()
            except Exception:  # lost, or Redis unreachable: nothing to do but stop renewing
                return

    renewer = threading.Thread(target=renew, name="recsvc-archive-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()


def _archive(client: redis.Redis, keys: Keys, folder: Path, batch: int, step: Checkpoint) -> ArchiveResult:
    mark = _reconcile(client, keys, folder)
    if mark is not None:
        _trim(client, keys, mark)
    archived = dropped = 0
    files: list[Path] = []
    while True:
        start = "-" if mark is None else _format(_successor(_parse(mark)))
        entries = client.xrange(keys.events(), min=start, max="+", count=batch) or []
        if not entries:
            break
        first, last = text(entries[0][0]), text(entries[-1][0])
        table, left_out = _events_table(client, keys, entries)
        path = None
        if table.num_rows:
            path = folder / f"stream-{first}-{last}.parquet"
            _write_parquet(table, path)
            files.append(path)
        step("written", path)
        client.set(keys.events_archived(), last)
        step("marked", path)
        _trim(client, keys, last)
        step("trimmed", path)
        mark, archived, dropped = last, archived + table.num_rows, dropped + left_out
        if len(entries) < batch:
            break
    return ArchiveResult(archived=archived, dropped=dropped, files=tuple(files), mark=mark)


def forgotten_users(client: redis.Redis, settings: Settings) -> set[str]:
    """Users whose events must not be trained on any more."""
    with unavailable_as_error("forgotten_users"):
        return {text(user) for user in client.smembers(Keys(settings.redis.prefix).forgotten())}


def _parse(stream_id: str) -> StreamId:
    milliseconds, _, sequence = stream_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _format(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


def _successor(stream_id: StreamId) -> StreamId:
    milliseconds, sequence = stream_id
    return (milliseconds + 1, 0) if sequence == 2**64 - 1 else (milliseconds, sequence + 1)


def _reconcile(client: redis.Redis, keys: Keys, folder: Path) -> str | None:
    """The mark, advanced past files written by a run that stopped before recording them."""
    for leftover in folder.glob(".stream-*.tmp"):  # half-written by a crashed run; we hold the lease
        leftover.unlink(missing_ok=True)
    stored = client.get(keys.events_archived())
    mark = None if stored is None else _parse(text(stored))
    for path in folder.iterdir():
        found = ARCHIVE_FILE.match(path.name)
        if found and (mark is None or _parse(found[2]) > mark):
            mark = _parse(found[2])
    if mark is None:
        return None
    if stored is None or _parse(text(stored)) != mark:
        client.set(keys.events_archived(), _format(mark))
    return _format(mark)


def _trim(client: redis.Redis, keys: Keys, mark: str) -> None:
    """Drop stream entries up to and including the mark (XTRIM MINID keeps ids >= its argument),
    keeping every entry the notifier's group may still need."""
    keep_from = _successor(_parse(mark))
    needed = _notifier_needs_from(client, keys)
    if needed is not None:
        keep_from = min(keep_from, needed)
    client.xtrim(keys.events(), minid=_format(keep_from), approximate=False)


def _notifier_needs_from(client: redis.Redis, keys: Keys) -> StreamId | None:
    """The first stream id the notifier's consumer group has not finished; None without the group.

    That is its oldest pending (delivered, unacknowledged) entry, else the successor of its last
    delivered id. The group only moves forward, so a value read before trimming stays safe.
    """
    try:
        groups: list[dict[str, Any]] = client.xinfo_groups(keys.events())
    except redis.ResponseError:  # no stream (yet), so no group
        return None
    group = next((found for found in groups if text(found["name"]) == NOTIFIER_EVENTS_GROUP), None)
    if group is None:
        return None
    needed = _successor(_parse(text(group["last-delivered-id"])))
    if int(group["pending"]):
        pending: dict[str, Any] = client.xpending(keys.events(), NOTIFIER_EVENTS_GROUP)
        if pending.get("min") is not None:
            needed = min(needed, _parse(text(pending["min"])))
    return needed


def _events_table(client: redis.Redis, keys: Keys, entries: Any) -> tuple[pa.Table, int]:
    """The batch as EVENT_SCHEMA rows, without forgotten users' events; and how many were dropped."""
    rows: list[dict[str, str]] = [fields for _, fields in entries]
    users = sorted({row["user_id"] for row in rows})
    flags = client.smismember(keys.forgotten(), users)
    forgotten = {user for user, flag in zip(users, flags, strict=True) if flag}
    kept = [row for row in rows if row["user_id"] not in forgotten]
    try:
        columns = {
            "user_id": [row["user_id"] for row in kept],
            "item_id": [row["item_id"] for row in kept],
            "type": [row["type"] for row in kept],
            "ts": pa.array([int(row["ts"]) for row in kept], pa.int64()).cast(EVENT_SCHEMA.field("ts").type),
            "value": [float(row["value"]) if row.get("value") else None for row in kept],
        }
    except (KeyError, ValueError) as exc:
        raise RecsvcError(f"malformed entry in the event stream {keys.events()}: {exc}") from exc
    return pa.table(columns, schema=EVENT_SCHEMA), len(rows) - len(kept)


def _write_parquet(table: pa.Table, path: Path) -> None:
    """Write aside, flush to disk, rename into place: the file is whole before the mark moves."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, aside, compression="zstd")
        _fsync(aside)
        os.replace(aside, path)
        _fsync(path.parent)
    finally:
        aside.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# --- the command --------------------------------------------------------------------------------


def _archive_command(args: argparse.Namespace, settings: Settings) -> int:
    client = connect_sync(settings, timeout=ARCHIVE_REDIS_TIMEOUT_SECONDS)
    try:
        result = archive_events(client, settings, args.out, batch=args.batch)
    finally:
        client.close()
    where = args.out if args.out is not None else settings.data.dir / "events"
    print(f"archived {result.archived:,} events into {len(result.files)} file(s) in {where}")
    for path in result.files:
        print(f"  {path.name}")
    if result.dropped:
        print(f"  left out {result.dropped:,} events of forgotten users")
    return 0


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    events = subparsers.add_parser("events", help="manage the stream of events posted to the API")
    actions = events.add_subparsers(dest="action", required=True)
    archive = actions.add_parser(
        "archive", parents=[parent], help="move events from the Redis stream into Parquet files"
    )
    archive.add_argument("--out", type=Path, help="folder to write (default: <[data] dir>/events)")
    archive.add_argument(
        "--batch", type=positive_int, default=100_000, help="events per file (default: 100000)"
    )
    archive.set_defaults(handler=_archive_command)
