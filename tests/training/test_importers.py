"""Importing the real public datasets in shared/data; every number is a fact from their SOURCE.md."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow.compute as pc
import pytest

from recsvc.errors import InputError
from recsvc.schema import EVENT_SCHEMA
from training import io
from training.importers import LASTFM_TIME, import_dataset


def read_back(out: Path) -> io.LoadedEvents:
    """The imported folder through the same reader training uses, refusing any bad row."""
    files, _ = io.resolve_dataset(out)
    return io.read_events(files, event_types=None, max_id_length=256, on_error="fail")


def day_range(loaded: io.LoadedEvents) -> tuple[date, date]:
    bounds = pc.min_max(loaded.table["ts"]).as_py()
    return bounds["min"].date(), bounds["max"].date()


def test_movielens_100k(shared_data: Path, tmp_path: Path) -> None:
    summary = import_dataset("movielens", shared_data / "movielens-100k", tmp_path)
    assert (summary.events, summary.users, summary.items, summary.skipped) == (100_000, 943, 1_682, {})
    assert summary.out == tmp_path
    loaded = read_back(tmp_path)
    assert loaded.table.schema == EVENT_SCHEMA
    assert set(loaded.table["type"].to_pylist()) == {"rate"}
    stars = Counter(loaded.table["value"].to_pylist())
    assert stars == {1.0: 6_110, 2.0: 11_370, 3.0: 27_145, 4.0: 34_174, 5.0: 21_201}
    assert day_range(loaded) == (date(1997, 9, 20), date(1998, 4, 22))
    first = loaded.table.slice(0, 1).to_pylist()[0]  # u.data's first line: 196 242 3 881250949
    assert first == {
        "user_id": "196",
        "item_id": "242",
        "type": "rate",
        "ts": datetime.fromtimestamp(881250949, UTC),
        "value": 3.0,
    }
    items = {row["item_id"]: row for row in io.read_items(tmp_path / "items.parquet").to_pylist()}
    assert len(items) == 1_682
    assert items["1"]["title"] == "Toy Story (1995)"
    assert items["1"]["category"] == "Animation"  # first of Animation, Children's, Comedy
    assert items["1"]["url"] == "http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)"
    assert items["267"]["category"] is None  # its only genre flag is "unknown"
    assert items["1358"]["url"] is None
    assert all(row["available"] for row in items.values())


def test_movielens_from_the_ratings_file_itself(shared_data: Path, tmp_path: Path) -> None:
    summary = import_dataset("movielens", shared_data / "movielens-100k" / "u.data.gz", tmp_path)
    assert (summary.events, summary.users, summary.items) == (100_000, 943, 1_682)
    assert io.read_items(tmp_path / "items.parquet").num_rows == 1_682


def test_movielens_latest_small(shared_data: Path, tmp_path: Path) -> None:
    summary = import_dataset("movielens", shared_data / "movielens-latest-small", tmp_path)
    assert (summary.events, summary.users, summary.items, summary.skipped) == (100_836, 610, 9_724, {})
    loaded = read_back(tmp_path)
    assert set(loaded.table["value"].to_pylist()) == {x / 2 for x in range(1, 11)}  # 0.5 to 5.0
    assert day_range(loaded) == (date(1996, 3, 29), date(2018, 9, 24))
    items = {row["item_id"]: row for row in io.read_items(tmp_path / "items.parquet").to_pylist()}
    assert len(items) == 9_742  # the catalog also lists the 18 movies nobody rated
    assert items["1"]["title"] == "Toy Story (1995)"
    assert items["1"]["category"] == "Adventure"
    assert items["1"]["url"] == "https://www.imdb.com/title/tt0114709/"
    assert sum(row["category"] is None for row in items.values()) == 34  # "(no genres listed)"


def test_taobao_counts_the_truncated_last_line(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        summary = import_dataset("taobao", shared_data / "taobao-userbehavior-head", tmp_path)
    assert (summary.events, summary.users, summary.items) == (84_475, 815, 55_368)
    assert summary.skipped == {"bad_timestamp": 1}
    assert "UserBehavior_head.csv.gz:84476: missing timestamp" in caplog.text
    loaded = read_back(tmp_path)
    # SOURCE.md counts 75,873 pv among all 84,476 rows; the cut-off last row is one of them.
    assert Counter(loaded.table["type"].to_pylist()) == {
        "view": 75_872,
        "add_to_cart": 4_497,
        "favorite": 2_356,
        "purchase": 1_750,
    }
    buyers = pc.count_distinct(loaded.table.filter(pc.equal(loaded.table["type"], "purchase"))["user_id"])
    assert buyers.as_py() == 559
    assert day_range(loaded)[0] == date(2017, 9, 11)
    items = io.read_items(tmp_path / "items.parquet")
    assert items.num_rows == 55_368
    assert pc.count_distinct(items["category"]).as_py() == 2_914
    categories = dict(zip(items["item_id"].to_pylist(), items["category"].to_pylist(), strict=True))
    assert categories["2633450"] == "3002561"  # filed under two categories; its latest event wins


def test_lastfm(shared_data: Path, tmp_path: Path) -> None:
    summary = import_dataset("lastfm", shared_data / "lastfm-hetrec2011-2k", tmp_path)
    assert (summary.events, summary.users, summary.items, summary.skipped) == (92_834, 1_892, 17_632, {})
    loaded = read_back(tmp_path)
    assert set(loaded.table["type"].to_pylist()) == {"play"}
    assert set(loaded.table["ts"].to_pylist()) == {LASTFM_TIME}
    plays = pc.min_max(loaded.table["value"]).as_py()
    assert (plays["min"], plays["max"]) == (1.0, 352_698.0)
    assert not (tmp_path / "items.parquet").exists()


def test_a_folder_without_the_dataset_is_refused(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"not a Last\.fm user_artists file or folder"):
        import_dataset("lastfm", shared_data / "movielens-100k", tmp_path)
    assert not (tmp_path / "events").exists()
