"""Event, item and user files: what is read, what is refused, and where the error points."""

from __future__ import annotations

import gzip
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsvc.errors import EventFileError
from recsvc.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA, UTC_MICROS
from training import io

TYPES = {"view", "purchase", "rate"}
NOV_25 = datetime(2017, 11, 25, tzinfo=UTC)
UNIX_NOV_25 = int(NOV_25.timestamp())
HEADER = "user_id,item_id,type,ts,value"
GOOD = f"u1,i1,view,{UNIX_NOV_25},\nu2,i2,purchase,{UNIX_NOV_25 + 60},2.5\n"


def read(*paths: Path, on_error: str = "fail", event_types: set[str] | None = TYPES) -> io.LoadedEvents:
    assert on_error in ("fail", "skip")
    return io.read_events(
        list(paths),
        event_types=event_types,
        max_id_length=16,
        on_error="fail" if on_error == "fail" else "skip",
    )


def write_text(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, newline="")
    return path


def sample_events() -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"user_id": "u1", "item_id": "i1", "type": "view", "ts": NOV_25, "value": None},
            {
                "user_id": "ü2",
                "item_id": "i,2",
                "type": "rate",
                "ts": NOV_25 + timedelta(microseconds=5),
                "value": 4.5,
            },
            {
                "user_id": "u3",
                "item_id": '"i3"',
                "type": "purchase",
                "ts": NOV_25 - timedelta(days=400),
                "value": 0.0,
            },
        ],
        schema=EVENT_SCHEMA,
    )


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz", "events.parquet"])
def test_written_events_read_back_identical(tmp_path: Path, name: str) -> None:
    io.write_events(sample_events(), tmp_path / name)
    loaded = read(tmp_path / name)
    assert loaded.table.schema == EVENT_SCHEMA
    assert loaded.table.to_pylist() == sample_events().to_pylist()
    assert loaded.skipped == {}
    assert loaded.files == (str(tmp_path / name),)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # the temporary file is gone


def test_unix_seconds_and_iso_8601_give_the_same_instant(tmp_path: Path) -> None:
    stamps = [
        str(UNIX_NOV_25),
        "2017-11-25T00:00:00Z",
        "2017-11-25T01:00:00+01:00",
        "2017-11-24T19:00:00-0500",
        "2017-11-25 00:00:00",
        "2017-11-25T00:00",
        "2017-11-25",
        " 2017-11-25T00:00:00.000000Z ",
    ]
    rows = "".join(f"u{i},i1,view,{ts}\n" for i, ts in enumerate(stamps))
    loaded = read(write_text(tmp_path / "events.csv", "user_id,item_id,type,ts\n" + rows))
    assert loaded.table.column("ts").to_pylist() == [NOV_25] * len(stamps)
    assert loaded.table.column("value").null_count == len(stamps)


def test_fractions_and_negative_offsets(tmp_path: Path) -> None:
    rows = ["u,i,view,2017-11-25T00:00:00.25Z", "u,i,view,2017-11-24T23:30:00.1234567-00:30"]
    text = "user_id,item_id,type,ts\n" + "\n".join(rows) + "\n"
    stamps = read(write_text(tmp_path / "events.csv", text)).table.column("ts").to_pylist()
    assert stamps == [NOV_25 + timedelta(microseconds=250_000), NOV_25 + timedelta(microseconds=123_456)]


@pytest.mark.parametrize(
    "ts",
    [
        pa.array([UNIX_NOV_25], pa.int64()),
        pa.array([float(UNIX_NOV_25)], pa.float64()),
        pa.array([NOV_25.replace(tzinfo=None)], pa.timestamp("ns")),  # naive means UTC
        pa.array([NOV_25], pa.timestamp("s", tz="Europe/Berlin")),
        pa.array(["2017-11-25T01:00:00+01:00"], pa.string()),
    ],
)
def test_parquet_timestamp_column_kinds(tmp_path: Path, ts: pa.Array) -> None:
    table = pa.table({"user_id": [7], "item_id": ["i"], "type": ["view"], "ts": ts})
    pq.write_table(table, tmp_path / "events.parquet")
    loaded = read(tmp_path / "events.parquet")
    assert loaded.table.column("ts").type == UTC_MICROS
    assert loaded.table.column("ts").to_pylist() == [NOV_25]
    assert loaded.table.column("user_id").to_pylist() == ["7"]  # numeric ids become strings


BAD_ROWS = [
    (f",i1,view,{UNIX_NOV_25},", "missing user_id"),
    (f"u3,,view,{UNIX_NOV_25},", "missing item_id"),
    (f"{'u' * 17},i1,view,{UNIX_NOV_25},", f"user_id longer than 16 characters: '{'u' * 17}'"),
    (f"u3,{'i' * 17},view,{UNIX_NOV_25},", "item_id longer than 16 characters"),
    (f"u3,i1,clik,{UNIX_NOV_25},", "unknown event type 'clik' (known: purchase, rate, view)"),
    (f"u3,i1,,{UNIX_NOV_25},", "missing event type"),
    ("u3,i1,view,2017-13-45,", "unparsable timestamp '2017-13-45'"),
    ("u3,i1,view,2017-02-29T10:00:00Z,", "unparsable timestamp '2017-02-29T10:00:00Z'"),
    ("u3,i1,view,2017-11-25T24:00:00,", "unparsable timestamp"),
    ("u3,i1,view,2017-11-25T10:00:00+25:00,", "unparsable timestamp"),
    ("u3,i1,view,yesterday,", "unparsable timestamp 'yesterday'"),
    (f"u3,i1,view,{UNIX_NOV_25}000,", "(unix time must be in seconds)"),
    ("u3,i1,view,,", "missing timestamp"),
    ("u3,i1,view", "missing timestamp"),  # a short line is padded, so the missing field is named
    (f"u3,i1,view,{UNIX_NOV_25},abc", "non-numeric value 'abc'"),
    (f"u3,i1,view,{UNIX_NOV_25},inf", "non-numeric value 'inf'"),
    (f"u3,i1,view,{UNIX_NOV_25},1,extra", "expected 5 fields, found 6"),
    ("", "empty row"),
]


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
@pytest.mark.parametrize(("row", "reason"), BAD_ROWS)
def test_fail_mode_names_file_and_line(tmp_path: Path, name: str, row: str, reason: str) -> None:
    path = write_text(tmp_path / name, f"{HEADER}\n{GOOD}{row}\nu4,i4,view,{UNIX_NOV_25},\n")
    with pytest.raises(EventFileError) as caught:
        read(path)
    assert caught.value.path == str(path)
    assert caught.value.line == 4
    assert str(caught.value).startswith(f"{path}:4: ")
    assert reason in caught.value.reason


def test_fail_mode_reports_the_first_bad_line(tmp_path: Path) -> None:
    rows = f"u1,i1,view,{UNIX_NOV_25}\nu2,i2,view,never\nu3,i3,view\n,i4,view,{UNIX_NOV_25}\n"
    with pytest.raises(EventFileError, match=r"events\.csv:3: unparsable timestamp 'never'$"):
        read(write_text(tmp_path / "events.csv", "user_id,item_id,type,ts\n" + rows))


def test_a_line_without_the_optional_value_field_is_kept_in_place(tmp_path: Path) -> None:
    rows = [f"u1,i1,view,{UNIX_NOV_25},1", f"u2,i2,view,{UNIX_NOV_25}", f"u3,i3,view,{UNIX_NOV_25},3"]
    path = write_text(tmp_path / "events.csv", "\n".join([HEADER, *rows, "u4,i4,view,soon,4"]) + "\n")
    with pytest.raises(EventFileError, match=r"events\.csv:5: unparsable timestamp 'soon'$"):
        read(path)
    loaded = read(path, on_error="skip")
    assert loaded.table.column("user_id").to_pylist() == ["u1", "u2", "u3"]
    assert loaded.table.column("value").to_pylist() == [1.0, None, 3.0]


def test_skip_mode_logs_the_line_of_each_reason(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        f"u1,i1,view,{UNIX_NOV_25}",  # line 2
        "u2,i2,view",  # 3: short, so padded
        f"u3,i3,view,{UNIX_NOV_25},4,5",  # 4: one field too many, so not a row at all
        f"u4,i4,view,{UNIX_NOV_25}",  # 5
        "u5,,view,1",  # 6
    ]
    path = write_text(tmp_path / "events.csv", "\n".join([HEADER, *rows]) + "\n")
    with caplog.at_level(logging.WARNING, logger="training.io"):
        read(path, on_error="skip")
    (record,) = [r for r in caplog.records if r.name == "training.io"]
    message = record.getMessage()
    assert f"{path}:3: missing timestamp" in message
    assert f"{path}:4: expected 5 fields, found 6" in message
    assert f"{path}:6: missing item_id" in message
    assert "skipped 3 bad rows" in message


def test_parquet_errors_name_the_row_number(tmp_path: Path) -> None:
    table = pa.table(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "item_id": ["i1", "i2", "i3", None],
            "type": ["view"] * 4,
            "ts": ["2017-11-25", "2017-11-26", "2017-11-31", "2017-11-27"],
        }
    )
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=2)
    with pytest.raises(EventFileError, match=r"events\.parquet:3: unparsable timestamp '2017-11-31'"):
        read(tmp_path / "events.parquet")
    loaded = read(tmp_path / "events.parquet", on_error="skip")
    assert loaded.skipped == {"bad_timestamp": 1, "missing_item_id": 1}


def test_parquet_null_timestamps_and_values(tmp_path: Path) -> None:
    table = pa.table(
        {
            "user_id": ["u1", "u2", "u3"],
            "item_id": ["i1", "i2", "i3"],
            "type": ["view"] * 3,
            "ts": pa.array([NOV_25, None, NOV_25], pa.timestamp("us")),
            "value": [1.0, 2.0, float("nan")],
        }
    )
    pq.write_table(table, tmp_path / "events.parquet")
    with pytest.raises(EventFileError, match=r"events\.parquet:2: missing timestamp"):
        read(tmp_path / "events.parquet")
    loaded = read(tmp_path / "events.parquet", on_error="skip")
    assert loaded.skipped == {"bad_timestamp": 1, "bad_value": 1}
    assert loaded.table.column("user_id").to_pylist() == ["u1"]


def test_skip_mode_counts_each_bad_row_once_and_keeps_the_good(tmp_path: Path) -> None:
    rows = [row for row, _ in BAD_ROWS] + [",,clik,never,abc"]  # several problems: the first one counts
    path = write_text(tmp_path / "events.csv", f"{HEADER}\n{GOOD}" + "\n".join(rows) + "\n")
    loaded = read(path, on_error="skip")
    assert loaded.table.column("user_id").to_pylist() == ["u1", "u2"]
    assert loaded.table.column("value").to_pylist() == [None, 2.5]
    assert loaded.skipped == {
        "missing_user_id": 3,
        "missing_item_id": 1,
        "id_too_long": 2,
        "unknown_type": 2,
        "bad_timestamp": 8,
        "bad_value": 2,
        "malformed_row": 1,
    }
    assert sum(loaded.skipped.values()) == len(rows)


def test_without_known_types_only_an_empty_type_is_refused(tmp_path: Path) -> None:
    text = f"user_id,item_id,type,ts\nu1,i1,anything,{UNIX_NOV_25}\nu2,i2,,{UNIX_NOV_25}\n"
    loaded = read(write_text(tmp_path / "events.csv", text), on_error="skip", event_types=None)
    assert loaded.table.column("type").to_pylist() == ["anything"]
    assert loaded.skipped == {"unknown_type": 1}


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_missing_column_is_fatal_in_every_mode(tmp_path: Path, on_error: str) -> None:
    csv_path = write_text(tmp_path / "a.csv", f"user_id,item_id,type,when\nu1,i1,view,{UNIX_NOV_25}\n")
    with pytest.raises(EventFileError, match=r"a\.csv: missing required column 'ts'") as caught:
        read(csv_path, on_error=on_error)
    assert caught.value.line is None
    pq.write_table(pa.table({"user_id": ["u"], "type": ["view"], "ts": [1]}), tmp_path / "b.parquet")
    with pytest.raises(EventFileError, match=r"b\.parquet: missing required column 'item_id'"):
        read(tmp_path / "b.parquet", on_error=on_error)


def test_columns_in_any_order_and_extra_columns_ignored(tmp_path: Path) -> None:
    text = "\ufeffsession,ts,type,item_id,user_id\r\ns1,2017-11-25T00:00:00Z,view,i1,u1\r\n"
    loaded = read(write_text(tmp_path / "events.csv", text))
    assert loaded.table.to_pylist() == [
        {"user_id": "u1", "item_id": "i1", "type": "view", "ts": NOV_25, "value": None}
    ]


def test_empty_file_and_header_only_file(tmp_path: Path) -> None:
    with pytest.raises(EventFileError, match="empty file"):
        read(write_text(tmp_path / "empty.csv", ""))
    loaded = read(write_text(tmp_path / "header.csv", HEADER + "\n"))
    assert loaded.table.num_rows == 0
    assert loaded.table.schema == EVENT_SCHEMA


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path: Path) -> None:
    rows = [f"u{n},i{n},view,2017-11-25T00:00:00Z," for n in range(40_000)]
    for line in (38, 30_001):  # within the header's first read chunk, and far past it
        body = [row.encode() for row in rows]
        body[line - 2] = b"u\xe9,i1,view,2017-11-25T00:00:00Z,"  # Latin-1, line 1 being the header
        path = tmp_path / f"latin1-{line}.csv"
        path.write_bytes(b"\n".join([HEADER.encode(), *body]) + b"\n")
        with pytest.raises(EventFileError, match=rf"latin1-{line}\.csv:{line}: not UTF-8"):
            read(path)


def test_a_truncated_gzip_file_is_named(tmp_path: Path) -> None:
    text = HEADER + "\n" + "".join(f"u{n},i{n},view,2017-11-25T00:00:00Z,\n" for n in range(5_000))
    whole = gzip.compress(text.encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(EventFileError, match=r"cut\.csv\.gz: cannot read CSV"):
        read(path)


def test_folders_are_scanned_recursively_and_sorted(tmp_path: Path) -> None:
    for relative in ["b/2.csv", "b/a/1.csv.gz", "a.parquet", "notes.txt", "b/.a.parquet.tmp"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    found = io.find_event_files([tmp_path, tmp_path / "a.parquet"])
    assert found == [tmp_path / "a.parquet", tmp_path / "b/2.csv", tmp_path / "b/a/1.csv.gz"]
    with pytest.raises(EventFileError, match="no such file or folder"):
        io.find_event_files([tmp_path / "missing"])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(EventFileError, match="holds no event files"):
        io.find_event_files([tmp_path / "nothing"])
    with pytest.raises(EventFileError, match="not an event file"):
        io.find_event_files([tmp_path / "notes.txt"])


def test_a_folder_of_files_reads_as_one_table(tmp_path: Path) -> None:
    write_text(tmp_path / "day2.csv", f"user_id,item_id,type,ts\nu2,i2,view,{UNIX_NOV_25 + 86400}\n")
    io.write_events(sample_events(), tmp_path / "nested" / "day1.parquet")
    loaded = read(tmp_path)
    assert loaded.files == (str(tmp_path / "day2.csv"), str(tmp_path / "nested" / "day1.parquet"))
    assert loaded.table.column("user_id").to_pylist() == ["u2", "u1", "ü2", "u3"]


def test_resolve_dataset(tmp_path: Path) -> None:
    io.write_events(sample_events(), tmp_path / "data" / "events" / "part-0.parquet")
    assert io.resolve_dataset(tmp_path / "data") == ([tmp_path / "data/events/part-0.parquet"], None)
    io.write_items(pa.table({"item_id": ["i1"]}), tmp_path / "data" / "items.parquet")
    assert io.resolve_dataset(tmp_path / "data") == (
        [tmp_path / "data/events/part-0.parquet"],
        tmp_path / "data/items.parquet",
    )
    plain = tmp_path / "plain.csv"
    write_text(plain, HEADER + "\n")
    assert io.resolve_dataset(plain) == ([plain], None)
    assert io.resolve_dataset(tmp_path / "data" / "events") == (
        [tmp_path / "data/events/part-0.parquet"],
        None,
    )


@pytest.mark.parametrize("name", ["items.csv", "items.parquet"])
def test_items_round_trip_and_defaults(tmp_path: Path, name: str) -> None:
    given = pa.table({"item_id": ["i1", "i2"], "title": ["Lamp, red", None], "available": [False, None]})
    io.write_items(given, tmp_path / name)
    items = io.read_items(tmp_path / name)
    assert items.schema == ITEM_SCHEMA
    assert items.column("title").to_pylist() == ["Lamp, red", None]
    assert items.column("available").to_pylist() == [False, True]  # unknown availability: available
    assert items.column("price").to_pylist() == [None, None]


def test_items_csv_with_partial_columns(tmp_path: Path) -> None:
    path = write_text(tmp_path / "items.csv", "item_id,price,colour\n42,9.5,red\n43,,blue\n")
    items = io.read_items(path)
    assert items.column("item_id").to_pylist() == ["42", "43"]
    assert items.column("price").to_pylist() == [9.5, None]
    assert items.column("available").to_pylist() == [True, True]


def test_items_need_a_unique_item_id(tmp_path: Path) -> None:
    with pytest.raises(EventFileError, match=r"items\.csv: missing required column 'item_id'"):
        io.read_items(write_text(tmp_path / "items.csv", "title\nLamp\n"))
    with pytest.raises(EventFileError, match=r"items\.csv:3: missing item_id"):
        io.read_items(write_text(tmp_path / "items.csv", "item_id,title\ni1,Lamp\n,Vase\n"))
    with pytest.raises(EventFileError, match=r"items\.csv:4: duplicate item_id 'i1'"):
        io.read_items(write_text(tmp_path / "items.csv", "item_id,title\ni1,Lamp\ni2,Vase\ni1,Rug\n"))


@pytest.mark.parametrize("name", ["users.csv.gz", "users.parquet"])
def test_users_round_trip(tmp_path: Path, name: str) -> None:
    given = pa.table({"user_id": ["u1", "u2"], "points": [10, None], "push_consent": [True, False]})
    io.write_users(given, tmp_path / name)
    users = io.read_users(tmp_path / name)
    assert users.schema == USER_SCHEMA
    assert users.to_pylist() == [
        {"user_id": "u1", "timezone": None, "tier": None, "points": 10, "locale": None, "push_consent": True},
        {
            "user_id": "u2",
            "timezone": None,
            "tier": None,
            "points": None,
            "locale": None,
            "push_consent": False,
        },
    ]


def test_writing_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    io.write_events(sample_events(), path)
    io.write_events(sample_events().slice(0, 1), path)
    assert read(path).table.num_rows == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.parquet"]
