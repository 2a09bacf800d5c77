"""The event archive: exact Parquet round trip, idempotence, crashes at every step, forgotten users."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis

from recsvc import archive
from recsvc.archive import ARCHIVE_FILE, ArchiveBusy, archive_events, forgotten_users
from recsvc.cli import main
from recsvc.config import Settings
from recsvc.keys import NOTIFIER_EVENTS_GROUP, Keys
from recsvc.redis_conn import connect_async
from recsvc.schema import EVENT_SCHEMA
from recsvc.state import Event, Store
from training import io

REPO = Path(__file__).resolve().parents[2]
START = datetime(2025, 3, 1, 12, 0, 0, 123_456, tzinfo=UTC)
TYPES = ("view", "add_to_cart", "purchase", "rate")


def make_events(count: int, *, first: int = 0, users: int = 4) -> list[Event]:
    return [
        Event(
            user_id=f"u{n % users}",
            item_id=f"i{n * 7 % 11}",
            type=TYPES[n % len(TYPES)],
            ts=START + timedelta(seconds=n, microseconds=n),
            value=n / 3 if TYPES[n % len(TYPES)] == "rate" else None,
        )
        for n in range(first, first + count)
    ]


def record(settings: Settings, events: Sequence[Event], *, forget: Sequence[str] = ()) -> list[str]:
    """Post events through the store, as the API does; then forget some users."""

    async def run() -> list[str]:
        client = connect_async(settings)
        try:
            store = Store(client, settings, clock=lambda: START)
            ids = await store.record_events(events, [None] * len(events))
            for user in forget:
                await store.forget_user(user)
            return ids
        finally:
            await client.aclose()

    return asyncio.run(run())


def archived_rows(folder: Path) -> list[tuple[str, str, str, datetime, float | None]]:
    """Every archived event, in stream order (files sorted by their first id)."""

    def first_id(path: Path) -> tuple[int, ...]:
        found = ARCHIVE_FILE.match(path.name)
        assert found is not None
        return tuple(int(part) for part in found[1].split("-"))

    files = sorted((path for path in folder.iterdir() if ARCHIVE_FILE.match(path.name)), key=first_id)
    rows = []
    for path in files:
        table = pq.read_table(path)
        assert table.schema.equals(EVENT_SCHEMA)
        rows += [(r["user_id"], r["item_id"], r["type"], r["ts"], r["value"]) for r in table.to_pylist()]
    return rows


def as_rows(events: Sequence[Event]) -> list[tuple[str, str, str, datetime, float | None]]:
    return [(e.user_id, e.item_id, e.type, e.ts, e.value) for e in events]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def test_events_round_trip_exactly_into_parquet(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path
) -> None:
    events = make_events(25)
    ids = record(redis_settings, events)

    result = archive_events(redis_client, redis_settings, folder, batch=10)

    assert result.archived == 25 and result.dropped == 0 and result.mark == ids[-1]
    assert [path.name for path in result.files] == [
        f"stream-{ids[0]}-{ids[9]}.parquet",
        f"stream-{ids[10]}-{ids[19]}.parquet",
        f"stream-{ids[20]}-{ids[24]}.parquet",
    ]
    assert archived_rows(folder) == as_rows(events)
    metadata = pq.ParquetFile(result.files[0]).metadata
    assert metadata.row_group(0).column(0).compression == "ZSTD"
    keys = Keys(redis_settings.redis.prefix)
    assert redis_client.xlen(keys.events()) == 0
    assert redis_client.get(keys.events_archived()) == ids[-1]


def test_the_trainer_reads_the_archive_from_the_data_folder(
    redis_settings: Settings, redis_client: redis.Redis
) -> None:
    events = make_events(6)
    record(redis_settings, events)

    result = archive_events(redis_client, redis_settings)

    event_files, _ = io.resolve_dataset(redis_settings.data.dir)
    assert event_files == list(result.files)
    loaded = io.read_events(event_files, event_types=None, max_id_length=256, on_error="fail")
    assert loaded.table.num_rows == 6 and loaded.skipped == {}


def test_a_second_run_archives_only_what_is_new(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path
) -> None:
    record(redis_settings, make_events(5))
    first = archive_events(redis_client, redis_settings, folder)

    again = archive_events(redis_client, redis_settings, folder)
    assert (again.archived, again.files, again.mark) == (0, (), first.mark)

    record(redis_settings, make_events(3, first=5))
    later = archive_events(redis_client, redis_settings, folder)
    assert later.archived == 3 and len(later.files) == 1
    assert archived_rows(folder) == as_rows(make_events(8))


class Crash(Exception):
    pass


@pytest.mark.parametrize("step", ["written", "marked", "trimmed"])
@pytest.mark.parametrize("batch_number", [1, 2])
def test_a_crash_at_any_step_neither_loses_nor_duplicates(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path, step: str, batch_number: int
) -> None:
    events = make_events(25)
    record(redis_settings, events)
    seen: list[str] = []

    def crash(name: str, path: Path | None) -> None:
        seen.append(name)
        if name == step and seen.count(step) == batch_number:
            raise Crash(f"killed after {step} of batch {batch_number}")

    with pytest.raises(Crash):
        archive_events(redis_client, redis_settings, folder, batch=10, checkpoint=crash)
    (folder / ".stream-1-0-2-0.parquet.0123abcd.tmp").write_bytes(b"half a file")  # a crash mid-write

    rerun = archive_events(redis_client, redis_settings, folder, batch=7)

    assert archived_rows(folder) == as_rows(events)
    assert rerun.archived == 25 - 10 * batch_number
    assert not [path for path in folder.iterdir() if path.name.startswith(".")]
    assert redis_client.xlen(Keys(redis_settings.redis.prefix).events()) == 0


def test_a_lost_mark_is_restored_from_the_files(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path
) -> None:
    record(redis_settings, make_events(4))
    archive_events(redis_client, redis_settings, folder)
    redis_client.delete(Keys(redis_settings.redis.prefix).events_archived())
    record(redis_settings, make_events(2, first=4))

    result = archive_events(redis_client, redis_settings, folder)

    assert result.archived == 2
    assert archived_rows(folder) == as_rows(make_events(6))


def test_events_of_forgotten_users_are_dropped(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path
) -> None:
    events = make_events(12, users=3)
    record(redis_settings, events, forget=["u1"])

    result = archive_events(redis_client, redis_settings, folder, batch=5)

    kept = [event for event in events if event.user_id != "u1"]
    assert (result.archived, result.dropped) == (len(kept), 4)
    assert archived_rows(folder) == as_rows(kept)
    assert forgotten_users(redis_client, redis_settings) == {"u1"}


def test_a_batch_of_forgotten_users_only_writes_no_file_but_moves_on(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path
) -> None:
    ids = record(redis_settings, make_events(3, users=1), forget=["u0"])

    result = archive_events(redis_client, redis_settings, folder)

    assert (result.archived, result.dropped, result.files, result.mark) == (0, 3, (), ids[-1])
    assert redis_client.xlen(Keys(redis_settings.redis.prefix).events()) == 0


def test_only_one_run_at_a_time(redis_settings: Settings, redis_client: redis.Redis, folder: Path) -> None:
    lease = redis_client.lock(Keys(redis_settings.redis.prefix).events_archive_lock(), timeout=60)
    assert lease.acquire(blocking=False)
    try:
        with pytest.raises(ArchiveBusy):
            archive_events(redis_client, redis_settings, folder)
    finally:
        lease.release()


def test_the_lease_is_renewed_while_a_batch_takes_longer_than_its_ttl(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TTL can then be short (30 s), so a run killed with `kill -9` no longer refuses every
    rerun for ten minutes."""
    monkeypatch.setattr(archive, "ARCHIVE_LOCK_TTL_SECONDS", 1)
    key = Keys(redis_settings.redis.prefix).events_archive_lock()
    record(redis_settings, make_events(4, users=2))
    remaining: list[int] = []

    def slow_batch(step: str, path: Path | None) -> None:
        if step == "written":
            time.sleep(1.5)  # a batch longer than the lease's TTL
            remaining.append(redis_client.pttl(key))

    result = archive_events(redis_client, redis_settings, folder, batch=2, checkpoint=slow_batch)

    assert result.archived == 4 and len(remaining) == 2
    assert all(0 < milliseconds <= 1000 for milliseconds in remaining), remaining  # renewed meanwhile
    assert redis_client.exists(key) == 0  # released at the end


def test_the_command_archives_into_the_data_folder(
    redis_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = record(redis_settings, make_events(3))
    monkeypatch.setenv("RECSVC_REDIS__URL", redis_settings.redis.url)
    monkeypatch.setenv("RECSVC_REDIS__PREFIX", redis_settings.redis.prefix)

    assert main(["events", "archive", "--config", str(REPO / "configs" / "default.toml")]) == 0

    out = capsys.readouterr().out
    folder = redis_settings.data.dir / "events"
    assert f"archived 3 events into 1 file(s) in {folder}" in out
    assert f"stream-{ids[0]}-{ids[2]}.parquet" in out
    assert archived_rows(folder) == as_rows(make_events(3))
    assert main(["events", "archive", "--config", str(REPO / "configs" / "default.toml")]) == 0
    assert "archived 0 events into 0 file(s)" in capsys.readouterr().out


def test_parquet_values_keep_full_precision(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path
) -> None:
    value = 0.1 + 0.2  # not representable in few digits
    record(redis_settings, [Event("u", "i", "rate", START, value)])
    archive_events(redis_client, redis_settings, folder)
    assert archived_rows(folder)[0][4] == value


def test_the_trim_keeps_what_the_notifier_group_has_not_finished(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path
) -> None:
    keys = Keys(redis_settings.redis.prefix)
    stream, group = keys.events(), NOTIFIER_EVENTS_GROUP
    redis_client.xgroup_create(stream, group, id="0", mkstream=True)
    ids = record(redis_settings, make_events(10))

    def kept() -> list[str]:
        return [entry_id for entry_id, _ in redis_client.xrange(stream)]

    assert archive_events(redis_client, redis_settings, folder).archived == 10
    assert kept() == ids  # archived, but the group has not read any of them

    redis_client.xreadgroup(group, "c", {stream: ">"}, count=4)
    redis_client.xack(stream, group, ids[0], ids[2], ids[3])  # ids[1] stays pending
    archive_events(redis_client, redis_settings, folder)
    assert kept() == ids[1:]

    redis_client.xack(stream, group, ids[1])
    archive_events(redis_client, redis_settings, folder)
    assert kept() == ids[4:]  # delivered and acknowledged up to ids[3]; the rest is unread

    redis_client.xreadgroup(group, "c", {stream: ">"})
    redis_client.xack(stream, group, *ids[4:])
    archive_events(redis_client, redis_settings, folder)
    assert kept() == []
    assert archived_rows(folder) == as_rows(make_events(10))  # each event archived exactly once


def test_without_the_notifier_group_the_trim_follows_the_archive_alone(
    redis_settings: Settings, redis_client: redis.Redis, folder: Path
) -> None:
    keys = Keys(redis_settings.redis.prefix)
    redis_client.xgroup_create(keys.events(), "someone-else", id="0", mkstream=True)
    record(redis_settings, make_events(3))

    archive_events(redis_client, redis_settings, folder)

    assert redis_client.xlen(keys.events()) == 0
