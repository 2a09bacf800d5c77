"""The synthetic dataset has the shape, the invariants and the planted structure callers rely on."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsvc.errors import InputError
from recsvc.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA
from training import synth
from training.synth import SynthSummary, synthesize

END = datetime(2025, 3, 3, 12, tzinfo=UTC)
CATEGORIES = 8


def make(out: Path, seed: int = 7) -> SynthSummary:
    """The shared dataset: 4 event parts, small enough to check row by row."""
    return synthesize(
        out,
        users=400,
        items=300,
        events=30_000,
        categories=CATEGORIES,
        days=14,
        seed=seed,
        end=END,
        chunk_rows=8_000,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth")
    return out, make(out)


def read(out: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    return (
        pq.read_table(out / "events"),
        pq.read_table(out / "items.parquet"),
        pq.read_table(out / "users.parquet"),
    )


def test_counts_schemas_and_summary(dataset: tuple[Path, SynthSummary]) -> None:
    out, summary = dataset
    events, items, users = read(out)
    assert (events.num_rows, items.num_rows, users.num_rows) == (30_000, 300, 400)
    assert events.schema.equals(EVENT_SCHEMA)
    assert items.schema.equals(ITEM_SCHEMA)
    assert users.schema.equals(USER_SCHEMA)
    parts = sorted(path.name for path in (out / "events").iterdir())
    assert parts == [f"part-{i:05d}.parquet" for i in range(4)]
    assert [pq.read_metadata(out / "events" / name).num_rows for name in parts] == [8_000] * 3 + [6_000]
    assert (summary.users, summary.items, summary.events, summary.categories, summary.files) == (
        400,
        300,
        30_000,
        8,
        4,
    )
    assert summary.seconds > 0


def test_ids_are_unique_and_every_event_refers_to_a_known_user_and_item(
    dataset: tuple[Path, SynthSummary],
) -> None:
    events, items, users = read(dataset[0])
    item_ids, user_ids = items["item_id"].to_pylist(), users["user_id"].to_pylist()
    assert len(set(item_ids)) == len(item_ids) and len(set(user_ids)) == len(user_ids)
    assert item_ids[:2] == ["i000", "i001"] and user_ids[:2] == ["u000", "u001"]
    assert set(events["item_id"].to_pylist()) <= set(item_ids)
    assert set(events["user_id"].to_pylist()) <= set(user_ids)


def test_timestamps_are_utc_and_inside_the_window(dataset: tuple[Path, SynthSummary]) -> None:
    events = read(dataset[0])[0]
    assert events.schema.field("ts").type.tz == "UTC"
    lowest, highest = pc.min_max(events["ts"]).values()
    assert END - timedelta(days=14) <= lowest.as_py() and highest.as_py() <= END
    assert highest.as_py() - lowest.as_py() > timedelta(days=13)  # the whole window is used


def test_sessions_that_would_run_past_the_end_are_moved_back_whole(tmp_path: Path) -> None:
    synthesize(tmp_path, users=50, items=40, events=20_000, categories=3, days=1, end=END)
    ts = pq.read_table(tmp_path / "events")["ts"].to_pylist()
    assert max(ts) < END  # rather than cut short or piled up at the end
    assert max(ts) > END - timedelta(minutes=10)


def test_default_end_is_the_current_hour(tmp_path: Path) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    synthesize(tmp_path, users=20, items=10, events=500, categories=2, days=1)
    ts = pq.read_table(tmp_path / "events")["ts"]
    lowest, highest = (value.as_py() for value in pc.min_max(ts).values())
    assert hour - timedelta(days=1) <= lowest and highest <= hour + timedelta(hours=1)


def first_times(events: pa.Table, kind: str) -> dict[tuple[str, str], tuple[datetime, int]]:
    """(user, item) -> (earliest time, count) of the events of one type."""
    grouped = (
        events.filter(pc.equal(events["type"], kind))
        .group_by(["user_id", "item_id"])
        .aggregate([("ts", "min"), ("ts", "count")])
    )
    return {(row["user_id"], row["item_id"]): (row["ts_min"], row["ts_count"]) for row in grouped.to_pylist()}


@pytest.mark.parametrize(("earlier", "later"), [("add_to_cart", "purchase"), ("view", "add_to_cart")])
def test_funnel_steps_follow_their_predecessor(
    dataset: tuple[Path, SynthSummary], earlier: str, later: str
) -> None:
    events = read(dataset[0])[0]
    before, after = first_times(events, earlier), first_times(events, later)
    assert after
    for pair, (first_after, count_after) in after.items():
        assert pair in before, pair
        first_before, count_before = before[pair]
        assert first_before <= first_after and count_before >= count_after, pair


def test_funnel_rates(dataset: tuple[Path, SynthSummary]) -> None:
    counts = Counter(read(dataset[0])[0]["type"].to_pylist())
    assert set(counts) == {"view", "add_to_cart", "favorite", "purchase"}
    assert counts["view"] > counts["add_to_cart"] > counts["purchase"] > 0
    assert 0.07 < counts["add_to_cart"] / counts["view"] < 0.14
    assert 0.2 < counts["purchase"] / counts["add_to_cart"] < 0.4
    assert 0.01 < counts["favorite"] / counts["view"] < 0.06


def test_value_is_the_price_on_purchases_only(dataset: tuple[Path, SynthSummary]) -> None:
    events, items, _ = read(dataset[0])
    price = dict(zip(items["item_id"].to_pylist(), items["price"].to_pylist(), strict=True))
    for row in events.select(["item_id", "type", "value"]).to_pylist():
        assert row["value"] == (price[row["item_id"]] if row["type"] == "purchase" else None)


def test_item_popularity_is_heavy_tailed(dataset: tuple[Path, SynthSummary]) -> None:
    events = read(dataset[0])[0]
    views = Counter(events.filter(pc.equal(events["type"], "view"))["item_id"].to_pylist())
    ranked = sorted(views.values(), reverse=True)
    assert sum(ranked[: 300 // 10]) / sum(ranked) > 0.4


def test_users_concentrate_on_their_taste(dataset: tuple[Path, SynthSummary]) -> None:
    events, items, _ = read(dataset[0])
    category = dict(zip(items["item_id"].to_pylist(), items["category"].to_pylist(), strict=True))
    per_user: dict[str, Counter[str]] = {}
    for user, item in zip(events["user_id"].to_pylist(), events["item_id"].to_pylist(), strict=True):
        per_user.setdefault(user, Counter())[category[item]] += 1
    shares = [max(c.values()) / c.total() for c in per_user.values() if c.total() >= 20]
    assert len(shares) > 100
    assert np.mean(shares) > 3 / CATEGORIES


def test_sessions_follow_the_users_local_clock(dataset: tuple[Path, SynthSummary]) -> None:
    events, _, users = read(dataset[0])
    offset = {zone: minutes for zone, minutes, *_ in synth.TIMEZONES}
    zones = zip(users["user_id"].to_pylist(), users["timezone"].to_pylist(), strict=True)
    user_offset = {user: offset[zone] for user, zone in zones}
    local_hours = Counter(
        int((ts.timestamp() / 60 + user_offset[user]) // 60 % 24)
        for user, ts in zip(events["user_id"].to_pylist(), events["ts"].to_pylist(), strict=True)
    )
    evening = sum(local_hours[h] for h in range(18, 23))
    night = sum(local_hours[h] for h in range(1, 6))
    assert evening > 4 * night


def test_profiles(dataset: tuple[Path, SynthSummary]) -> None:
    users = read(dataset[0])[2].to_pylist()
    known_zones = {zone for zone, *_ in synth.TIMEZONES}
    assert {"Pacific/Auckland", "Pacific/Kiritimati", "Asia/Tokyo"} <= known_zones
    assert {u["timezone"] for u in users} <= known_zones
    tiers = Counter(u["tier"] for u in users)
    assert set(tiers) == {"bronze", "silver", "gold", "platinum"}
    assert tiers["bronze"] > tiers["silver"] > tiers["gold"] > tiers["platinum"]
    median_points = {
        tier: np.median([u["points"] for u in users if u["tier"] == tier]) for tier in ("bronze", "platinum")
    }
    assert median_points["platinum"] > 5 * median_points["bronze"]
    assert 0.7 < np.mean([u["push_consent"] for u in users]) < 0.9


def test_same_seed_same_data_other_seed_other_data(
    dataset: tuple[Path, SynthSummary], tmp_path: Path
) -> None:
    make(tmp_path / "same")
    make(tmp_path / "other", seed=8)
    reference = read(dataset[0])
    assert all(a.equals(b) for a, b in zip(reference, read(tmp_path / "same"), strict=True))
    assert not any(a.equals(b) for a, b in zip(reference, read(tmp_path / "other"), strict=True))


def test_a_rerun_leaves_no_temporary_or_stale_files(tmp_path: Path) -> None:
    synthesize(tmp_path, users=50, items=40, events=3_000, categories=3, end=END, chunk_rows=1_000)
    synthesize(tmp_path, users=50, items=40, events=1_500, categories=3, end=END, chunk_rows=1_000)
    names = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    assert names == [
        "events",
        "events/part-00000.parquet",
        "events/part-00001.parquet",
        "items.parquet",
        "users.parquet",
    ]
    assert pq.read_table(tmp_path / "events").num_rows == 1_500


def test_a_failed_write_leaves_no_file_under_a_final_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_half_then_fail(table: pa.Table, where: Path, **kwargs: object) -> None:
        Path(where).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        synthesize(tmp_path, users=10, items=10, events=100, categories=2, end=END)
    assert list(tmp_path.iterdir()) == []


def test_no_events_still_writes_one_readable_part(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, users=5, items=5, events=0, categories=2, end=END)
    events = pq.read_table(tmp_path / "events")
    assert summary.files == 1 and events.num_rows == 0 and events.schema.equals(EVENT_SCHEMA)


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"users": 0}, "users"),
        ({"events": -1}, "events"),
        ({"categories": 11}, "categories"),
        ({"end": datetime(2025, 1, 1)}, "end"),
    ],
)
def test_bad_arguments_are_input_errors(tmp_path: Path, arguments: dict[str, object], field: str) -> None:
    valid: dict[str, object] = {"users": 5, "items": 10, "events": 10, "categories": 2}
    with pytest.raises(InputError) as caught:
        synthesize(tmp_path, **{**valid, **arguments})  # type: ignore[arg-type]
    assert caught.value.fields["field"] == field
    assert list(tmp_path.iterdir()) == []
