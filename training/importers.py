"""Converters from public datasets (MovieLens, Taobao UserBehavior, Last.fm) to a dataset folder.

Real data finds what synthetic data cannot (ids with gaps, skewed popularity, a truncated last
line), so demos and tests import these with one call. A converter only maps columns: reading,
validation and writing belong to `training.io`, so an imported dataset obeys the same rules as a
customer's files, and every row it cannot use is counted in the summary, never dropped silently.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from recsvc.config import EventsConfig
from recsvc.errors import EventFileError, InputError
from recsvc.schema import UTC_MICROS
from training.io import (
    LoadedEvents,
    RawRows,
    parse_timestamps,
    read_csv_rows,
    validate_events,
    write_events,
    write_items,
)

log = logging.getLogger(__name__)

DatasetKind = Literal["movielens", "taobao", "lastfm"]
# Last.fm's user_artists has no times at all; every play gets this one moment (the dataset's year).
LASTFM_TIME = datetime(2011, 1, 1, tzinfo=UTC)
TAOBAO_TYPES = {"pv": "view", "cart": "add_to_cart", "fav": "favorite", "buy": "purchase"}
_ML100K_RATINGS = ("u.data.gz", "u.data")
_ML_LATEST_RATINGS = ("ratings.csv.gz", "ratings.csv")
_TAOBAO_FILES = (
    "UserBehavior_head.csv.gz",
    "UserBehavior.csv.gz",
    "UserBehavior_head.csv",
    "UserBehavior.csv",
)
_LASTFM_FILES = ("user_artists.dat.gz", "user_artists.dat")


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote: kept events, distinct users and items among them, rows skipped by reason."""

    events: int
    users: int
    items: int
    skipped: dict[str, int]
    out: Path


def import_dataset(kind: DatasetKind, src: Path, out: Path) -> ImportSummary:
    """Convert `src` into `out/events/events.parquet` and, where the dataset has one, `out/items.parquet`."""
    if kind == "movielens":
        loaded, items = import_movielens(src)
    elif kind == "taobao":
        loaded, items = import_taobao(src)
    elif kind == "lastfm":
        loaded, items = import_lastfm(src), None
    else:
        raise InputError(f"unknown dataset kind {kind!r}: expected movielens, taobao or lastfm", kind=kind)
    write_events(loaded.table, out / "events" / "events.parquet")
    if items is not None:
        write_items(items, out / "items.parquet")
    events = loaded.table
    summary = ImportSummary(
        events=events.num_rows,
        users=int(pc.count_distinct(events["user_id"]).as_py()),
        items=int(pc.count_distinct(events["item_id"]).as_py()),
        skipped=loaded.skipped,
        out=out,
    )
    log.info("imported %s from %s into %s: %s", kind, src, out, summary)
    return summary


def import_movielens(src: Path) -> tuple[LoadedEvents, pa.Table | None]:
    """Ratings (type `rate`, value = stars) and titles of ml-100k or ml-latest-small.

    `src` is the dataset folder or its ratings file; the catalog is read from beside it.
    """
    ratings = _locate(src, (*_ML100K_RATINGS, *_ML_LATEST_RATINGS), "MovieLens")
    if ratings.name in _ML100K_RATINGS:
        rows = read_csv_rows(ratings, column_names=["user", "item", "rating", "ts"], delimiter="\t")
        names = {"user_id": "user", "item_id": "item", "ts": "ts", "value": "rating"}
        catalog = _ml100k_items(ratings.parent)
    else:
        rows = read_csv_rows(ratings)
        names = {"user_id": "userId", "item_id": "movieId", "ts": "timestamp", "value": "rating"}
        catalog = _ml_latest_items(ratings.parent)
    columns = {name: _column(rows, raw) for name, raw in names.items()}
    columns["type"] = pa.repeat(pa.scalar("rate"), rows.table.num_rows)
    return _validate(rows, columns, {"rate"}), catalog


def import_taobao(src: Path) -> tuple[LoadedEvents, pa.Table]:
    """Taobao UserBehavior: pv/cart/fav/buy events, and each item's category.

    The published head-of-file sample ends in a line cut before its timestamp; it is counted as
    `bad_timestamp` (and logged with its line), like any other unusable row.
    """
    path = _locate(src, _TAOBAO_FILES, "Taobao UserBehavior")
    names = ["user_id", "item_id", "category_id", "behavior", "ts"]
    rows = read_csv_rows(path, column_names=names)
    behavior = rows.table["behavior"]
    ours = pc.take(pa.array(list(TAOBAO_TYPES.values())), pc.index_in(behavior, pa.array(list(TAOBAO_TYPES))))
    columns = {name: rows.table[name] for name in ("user_id", "item_id", "ts")}
    columns["type"] = pc.coalesce(ours, behavior)  # an unknown behaviour keeps its name for the report
    return _validate(rows, columns, set(TAOBAO_TYPES.values())), _taobao_items(rows)


def import_lastfm(src: Path) -> LoadedEvents:
    """Last.fm HetRec 2011 user_artists: one `play` event per user and artist, value = play count.

    The file has no timestamps, so every event is stamped with LASTFM_TIME (2011-01-01T00:00:00Z);
    time decay and temporal splits therefore see all of them as simultaneous.
    """
    rows = read_csv_rows(_locate(src, _LASTFM_FILES, "Last.fm user_artists"), delimiter="\t")
    count = rows.table.num_rows
    columns = {"user_id": _column(rows, "userID"), "item_id": _column(rows, "artistID")}
    columns["value"] = _column(rows, "weight")
    columns["type"] = pa.repeat(pa.scalar("play"), count)
    columns["ts"] = pa.repeat(pa.scalar(LASTFM_TIME, UTC_MICROS), count)
    return _validate(rows, columns, {"play"})


def _locate(src: Path, names: Sequence[str], dataset: str) -> Path:
    """`src` itself if it is one of the dataset's files, else the first of them inside the folder `src`."""
    if src.is_file() and src.name in names:
        return src
    if src.is_dir():
        for name in names:
            if (src / name).is_file():
                return src / name
    raise InputError(f"{src}: not a {dataset} file or folder (looked for {', '.join(names)})", path=str(src))


def _column(rows: RawRows, name: str) -> pa.ChunkedArray:
    if name not in rows.table.column_names:
        raise EventFileError(rows.source, None, f"missing column '{name}'")
    return rows.table[name]


def _validate(rows: RawRows, columns: dict[str, pa.ChunkedArray], types: set[str]) -> LoadedEvents:
    """The shared rules of `training.io`, in skip mode: an import reports bad rows instead of stopping."""
    mapped = dataclasses.replace(rows, table=pa.table(columns))
    max_id_length = EventsConfig().max_id_length
    return validate_events(mapped, event_types=types, max_id_length=max_id_length, on_error="skip")


def _ml100k_items(folder: Path) -> pa.Table | None:
    """u.item: `id|title|release|video release|IMDb URL|19 genre flags`, latin-1, no quoting."""
    genre_file = folder / "u.genre"
    item_file = next((folder / n for n in ("u.item.gz", "u.item") if (folder / n).is_file()), None)
    if item_file is None or not genre_file.is_file():
        log.warning("%s: no u.item and u.genre, so no catalog is written", folder)
        return None
    genres = [line.split("|")[0] for line in genre_file.read_text("latin-1").splitlines() if line.strip()]
    flags = [f"genre_{i}" for i in range(len(genres))]
    table = pcsv.read_csv(
        item_file,
        read_options=pcsv.ReadOptions(
            column_names=["item_id", "title", "release", "video", "url", *flags], encoding="latin1"
        ),
        parse_options=pcsv.ParseOptions(delimiter="|", quote_char=False),
        convert_options=pcsv.ConvertOptions(
            column_types=dict.fromkeys(["item_id", "title", "url"], pa.string()),
            include_columns=["item_id", "title", "url", *flags],
        ),
    )
    marked = np.column_stack([table[f].to_numpy() == 1 for f in flags])
    marked[:, [i for i, g in enumerate(genres) if g == "unknown"]] = False  # "unknown" is no category
    first = np.array(genres, dtype=object)[marked.argmax(axis=1)]
    category = pa.array(np.where(marked.any(axis=1), first, None), pa.string())
    return _catalog(table["item_id"], table["title"], category, table["url"])


def _ml_latest_items(folder: Path) -> pa.Table | None:
    """movies.csv (movieId, title, genres `A|B`), with IMDb links from links.csv where present."""
    movie_file = next((folder / n for n in ("movies.csv.gz", "movies.csv") if (folder / n).is_file()), None)
    if movie_file is None:
        log.warning("%s: no movies.csv, so no catalog is written", folder)
        return None
    movies = pcsv.read_csv(
        movie_file, convert_options=pcsv.ConvertOptions(column_types={"movieId": pa.string()})
    )
    genre = pc.list_element(pc.split_pattern(movies["genres"], "|", max_splits=1), 0)
    category = pc.if_else(pc.equal(genre, "(no genres listed)"), pa.scalar(None, pa.string()), genre)
    url = pa.nulls(movies.num_rows, pa.string())
    link_file = next((folder / n for n in ("links.csv.gz", "links.csv") if (folder / n).is_file()), None)
    if link_file is not None:
        links = pcsv.read_csv(
            link_file,
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(["movieId", "imdbId"], pa.string())
            ),
        )
        imdb = pc.take(links["imdbId"], pc.index_in(movies["movieId"], links["movieId"]))
        url = pc.binary_join_element_wise("https://www.imdb.com/title/tt", imdb, "/", "")
    return _catalog(movies["movieId"], movies["title"], category, url)


def _taobao_items(rows: RawRows) -> pa.Table:
    """One row per item; an item filed under several categories gets the one of its latest event."""
    micros, ok = parse_timestamps(rows.table["ts"], rows.source)
    seen = pa.table(
        {"item_id": rows.table["item_id"], "category": rows.table["category_id"], "ts": pa.array(micros)}
    ).filter(pa.array(ok))
    seen = seen.filter(pc.and_(pc.not_equal(seen["item_id"], ""), pc.not_equal(seen["category"], "")))
    latest = seen.sort_by([("ts", "descending")]).group_by("item_id", use_threads=False)
    table = latest.aggregate([("category", "first")]).sort_by("item_id")
    count = table.num_rows
    return _catalog(
        table["item_id"], pa.nulls(count, pa.string()), table["category_first"], pa.nulls(count, pa.string())
    )


def _catalog(item_id: pa.Array, title: pa.Array, category: pa.Array, url: pa.Array) -> pa.Table:
    """ITEM_SCHEMA columns; empty text means unknown, and every listed item is available."""

    def text(values: pa.Array) -> pa.Array:
        values = pc.cast(values, pa.string())
        return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)

    count = len(item_id)
    return pa.table(
        {
            "item_id": pc.cast(item_id, pa.string()),
            "title": text(title),
            "category": text(category),
            "url": text(url),
            "available": pa.repeat(pa.scalar(True), count),
        }
    )
