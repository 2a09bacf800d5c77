"""Reading and writing the canonical event, item and user files (CSV, CSV.gz or Parquet).

Every way events enter training (files dropped in a folder, the event archive, the dataset
importers) goes through `validate_events`, so one set of rules decides what a valid event is, and a
bad row is reported with its file and line instead of surfacing later as a strange model. The work is
vectorised with pyarrow and numpy: Python touches a row only to describe one that is bad.
"""

from __future__ import annotations

import csv
import gzip
import logging
import os
import uuid
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, cast

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from recsvc.errors import EventFileError, InputError
from recsvc.schema import EVENT_REQUIRED_COLUMNS, EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA, UTC_MICROS

log = logging.getLogger(__name__)

EVENT_FILE_SUFFIXES = (".parquet", ".csv", ".csv.gz")
# Skip reasons, in the order a row is judged: a row with several problems counts under the first.
REASONS = ("missing_user_id", "missing_item_id", "id_too_long", "unknown_type", "bad_timestamp", "bad_value")
MALFORMED_ROW = "malformed_row"  # a CSV line with more fields than the header

# Up to 11 digits (year ~5138): a 13-digit millisecond timestamp is rejected, not read as seconds.
_UNIX_SECONDS = r"^-?[0-9]{1,11}$"
_MAX_UNIX_SECONDS = 10**11 - 1
_ISO_8601 = (
    r"^(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})"
    r"(?:[T ](?P<hms>[0-9]{2}:[0-9]{2}(?::[0-9]{2})?)(?P<frac>\.[0-9]+)?"
    r"(?P<tz>[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)?)?$"
)
_WALL_CLOCK = "%Y-%m-%dT%H:%M:%S"
_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"

Bools = npt.NDArray[np.bool_]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class LoadedEvents:
    """Valid events (EVENT_SCHEMA), what was dropped and why, and the files they came from."""

    table: pa.Table
    skipped: dict[str, int]
    files: tuple[str, ...]


@dataclass(frozen=True)
class RawRows:
    """Columns as read from one file, before validation, with the way back to each row's line.

    `gaps` are lines that hold no row (CSV lines with more fields than the header); `malformed`
    says what is wrong with each of them.
    """

    table: pa.Table
    source: str
    first_line: int
    gaps: tuple[int, ...] = ()
    malformed: tuple[tuple[int, str], ...] = ()

    def line(self, index: int) -> int:
        """The 1-based line (CSV) or row number (Parquet) of row `index` of `table`."""
        line = self.first_line + index
        for gap in self.gaps:
            if gap > line:
                break
            line += 1
        return line


def is_event_file(path: Path) -> bool:
    """Whether the name says the file holds events we can read."""
    return path.name.endswith(EVENT_FILE_SUFFIXES) and not path.name.startswith(".")


def event_files_under(folder: Path) -> list[Path]:
    """The event files anywhere under `folder`, sorted; none for a folder without any (yet)."""
    return sorted(path for path in folder.rglob("*") if path.is_file() and is_event_file(path))


def find_event_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand files and folders (recursively, sorted) into event files, each once."""
    found: dict[Path, None] = {}
    for given in paths:
        path = Path(given)
        if path.is_file():
            if not is_event_file(path):
                raise EventFileError(str(path), None, f"not an event file: expected {_suffixes()}")
            found.setdefault(path, None)
        elif path.is_dir():
            inside = event_files_under(path)
            if not inside:
                raise EventFileError(str(path), None, f"folder holds no event files ({_suffixes()})")
            found.update(dict.fromkeys(inside))
        else:
            raise EventFileError(str(path), None, "no such file or folder")
    return list(found)


def resolve_dataset(path: Path) -> tuple[list[Path], Path | None]:
    """Event files and catalog of a dataset folder (`events/`, `items.parquet`), or plain event files."""
    events = path / "events"
    if path.is_dir() and events.is_dir():
        items = path / "items.parquet"
        return find_event_files([events]), items if items.is_file() else None
    return find_event_files([path]), None


def read_events(
    paths: Sequence[str | Path],
    *,
    event_types: Collection[str] | None,
    max_id_length: int,
    on_error: Literal["fail", "skip"],
) -> LoadedEvents:
    """Read and validate every event file under `paths` into one EVENT_SCHEMA table."""
    tables: list[pa.Table] = []
    skipped: dict[str, int] = {}
    files = find_event_files(paths)
    for path in files:
        loaded = validate_events(
            read_event_rows(path), event_types=event_types, max_id_length=max_id_length, on_error=on_error
        )
        tables.append(loaded.table)
        for reason, count in loaded.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    table = pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()
    return LoadedEvents(table=table, skipped=skipped, files=tuple(str(p) for p in files))


def read_event_rows(path: Path) -> RawRows:
    """The event columns of one file, unvalidated; a missing required column is fatal here."""
    if path.name.endswith(".parquet"):
        try:
            names = pq.read_schema(path).names
            wanted = _event_columns(names, str(path))
            table = pq.read_table(path, columns=wanted)
        except (OSError, pa.ArrowException) as exc:
            raise EventFileError(str(path), None, f"cannot read Parquet: {exc}") from exc
        return RawRows(table=table, source=str(path), first_line=1)
    header = _csv_header(path, ",")
    return read_csv_rows(path, columns=_event_columns(header, str(path)))


def read_csv_rows(
    path: Path,
    *,
    columns: Sequence[str] | None = None,
    column_names: Sequence[str] | None = None,
    delimiter: str = ",",
) -> RawRows:
    """Every field of a CSV file as strings ("" for empty), keeping track of each row's line.

    `column_names` names the columns of a file without a header; `columns` picks those to keep.
    Lines with too few fields are kept, padded with nulls, so the validation names what is missing;
    lines with too many cannot be assigned to columns and are reported as malformed.
    """
    names = list(column_names) if column_names is not None else _csv_header(path, delimiter)
    keep = list(columns) if columns is not None else names
    invalid: list[tuple[int | None, str]] = []
    header = column_names is None
    table = _parse_csv(path, names, keep, delimiter, invalid, header=header, threaded=True)
    if invalid:  # rare: re-read on one thread, the only way pyarrow tells the line numbers
        invalid.clear()
        table = _parse_csv(path, names, keep, delimiter, invalid, header=header, threaded=False)
    first_line = 2 if header else 1
    padded: list[dict[str, str | None]] = []
    padded_lines: list[int] = []
    malformed: list[tuple[int, str]] = []
    for line, text in invalid:
        fields = next(csv.reader([text], delimiter=delimiter), [])
        if len(fields) > len(names):
            malformed.append((line or 0, f"expected {len(names)} fields, found {len(fields)}: {_show(text)}"))
        else:
            row = dict(zip(names, fields, strict=False))
            padded.append({name: row.get(name) for name in keep})
            padded_lines.append(line or 0)
    if padded:  # put the padded rows back where they were in the file
        lines = np.arange(first_line, first_line + table.num_rows + len(invalid))
        in_order = np.setdiff1d(lines, [line for line, _ in invalid])
        extra = pa.Table.from_pylist(padded, schema=pa.schema([(n, pa.string()) for n in keep]))
        order = np.argsort(np.concatenate([in_order, padded_lines]), kind="stable")
        table = pa.concat_tables([table, extra]).take(pa.array(order))
    gaps = tuple(sorted(line for line, _ in malformed))
    return RawRows(table, str(path), first_line, gaps=gaps, malformed=tuple(malformed))


def validate_events(
    rows: RawRows,
    *,
    event_types: Collection[str] | None,
    max_id_length: int,
    on_error: Literal["fail", "skip"],
) -> LoadedEvents:
    """Check every row, then fail on the first bad line or drop bad rows and count them by reason."""
    table, source = rows.table, rows.source
    _event_columns(table.column_names, source)
    user = _id_strings(table, "user_id", source)
    item = _id_strings(table, "item_id", source)
    types = _string_column(table, "type", source)
    user_length, item_length = pc.utf8_length(user), pc.utf8_length(item)
    micros, ts_ok = parse_timestamps(table["ts"], source)
    if "value" in table.column_names:
        value, value_ok = _parse_values(table["value"], source)
    else:
        value, value_ok = pa.nulls(table.num_rows, pa.float64()), None
    known = pc.invert(_is_missing(types))
    if event_types is not None:
        known = pc.is_in(types, value_set=pa.array(sorted(event_types), pa.string()))
    bad: list[Bools | None] = [
        _bools(pc.fill_null(pc.equal(user_length, 0), True)),
        _bools(pc.fill_null(pc.equal(item_length, 0), True)),
        _bools(
            pc.fill_null(
                pc.or_(pc.greater(user_length, max_id_length), pc.greater(item_length, max_id_length)), False
            )
        ),
        ~_bools(pc.fill_null(known, False)),
        ~ts_ok,
        None if value_ok is None else ~value_ok,
    ]
    code = np.zeros(table.num_rows, dtype=np.uint8)
    for number in range(len(REASONS), 0, -1):  # the first reason of a row wins
        mask = bad[number - 1]
        if mask is not None and mask.any():
            code[mask] = number
    counts = np.bincount(code, minlength=len(REASONS) + 1)
    skipped = {reason: int(counts[k]) for k, reason in enumerate(REASONS, 1) if counts[k]}
    if rows.malformed:
        skipped[MALFORMED_ROW] = len(rows.malformed)
    examples = _first_bad_rows(rows, code, max_id_length, event_types)
    if examples and on_error == "fail":
        line, reason = min(examples.values())
        raise EventFileError(source, line, reason)
    if examples:
        firsts = "; ".join(f"{source}:{line}: {reason}" for line, reason in sorted(examples.values()))
        log.warning(
            "%s: skipped %d bad rows %s; first of each: %s", source, sum(skipped.values()), skipped, firsts
        )
    columns = [user, item, types, pa.array(micros, type=UTC_MICROS), value]
    events = pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)
    if counts[0] != table.num_rows:
        events = events.filter(pa.array(code == 0))
    return LoadedEvents(table=events, skipped=skipped, files=(source,))


def parse_timestamps(column: pa.ChunkedArray, source: str) -> tuple[Ints, Bools]:
    """UTC microseconds and a validity mask from unix seconds, ISO 8601 text or Arrow timestamps."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = pc.cast(column, kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        with ThreadPoolExecutor() as pool:  # pyarrow and numpy release the GIL
            parts = list(pool.map(_parse_timestamp_text, column.chunks))
        if not parts:
            return np.zeros(0, np.int64), np.zeros(0, np.bool_)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        seconds = np.asarray(pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(), np.float64)
        ok = np.isfinite(seconds) & (np.abs(seconds) <= _MAX_UNIX_SECONDS)
        return np.round(np.where(ok, seconds, 0.0) * 1e6).astype(np.int64), ok
    if pa.types.is_timestamp(kind):
        utc = pc.cast(column, options=pc.CastOptions(UTC_MICROS, allow_time_truncate=True))
        return _ints(pc.fill_null(pc.cast(utc, pa.int64()), 0)), _bools(pc.is_valid(utc))
    if pa.types.is_null(kind):
        return np.zeros(len(column), np.int64), np.zeros(len(column), np.bool_)
    raise EventFileError(source, None, f"column 'ts' has type {kind}; expected unix seconds or timestamps")


def write_events(table: pa.Table, path: Path) -> None:
    """Write events in EVENT_SCHEMA as Parquet or CSV (by suffix), replacing `path` atomically."""
    _write_table(_conform(table, EVENT_SCHEMA, str(path)), path)


def read_items(path: Path) -> pa.Table:
    """A catalog (ITEM_SCHEMA); absent columns are nulls, and an item of unknown availability is available."""
    table = _read_keyed(path, ITEM_SCHEMA)
    available = pc.fill_null(table["available"], True)
    return table.set_column(
        table.schema.get_field_index("available"), ITEM_SCHEMA.field("available"), available
    )


def write_items(table: pa.Table, path: Path) -> None:
    """Write a catalog in ITEM_SCHEMA as Parquet or CSV (by suffix), replacing `path` atomically."""
    _write_table(_conform(table, ITEM_SCHEMA, str(path)), path)


def read_users(path: Path) -> pa.Table:
    """User profiles (USER_SCHEMA); absent columns are nulls."""
    return _read_keyed(path, USER_SCHEMA)


def write_users(table: pa.Table, path: Path) -> None:
    """Write user profiles in USER_SCHEMA as Parquet or CSV (by suffix), replacing `path` atomically."""
    _write_table(_conform(table, USER_SCHEMA, str(path)), path)


def _suffixes() -> str:
    return ", ".join(f"*{s}" for s in EVENT_FILE_SUFFIXES)


def _event_columns(names: Sequence[str], source: str) -> list[str]:
    missing = [c for c in EVENT_REQUIRED_COLUMNS if c not in names]
    if missing:
        found = ", ".join(names) or "none"
        raise EventFileError(source, None, f"missing required column '{missing[0]}' (columns: {found})")
    return [*EVENT_REQUIRED_COLUMNS, *(["value"] if "value" in names else [])]


def _csv_header(path: Path, delimiter: str) -> list[str]:
    # Bytes first: a text stream decodes a whole chunk ahead, so a bad byte on a later line was
    # reported as a header that cannot be read.
    try:
        with _open_bytes(path) as stream:
            raw = stream.readline()
    except OSError as exc:
        raise EventFileError(str(path), None, f"cannot read the header line: {exc}") from exc
    try:
        first = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EventFileError(str(path), 1, f"not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    if not first.strip():
        raise EventFileError(str(path), 1, "empty file: expected a header line naming the columns")
    return next(csv.reader([first], delimiter=delimiter))


def _open_bytes(path: Path) -> BinaryIO:
    if path.name.endswith(".gz"):
        return cast(BinaryIO, gzip.open(path, "rb"))
    return path.open("rb")


def _first_line_not_utf8(path: Path) -> int | None:
    """The number of the first line that is not UTF-8 (Arrow names only the column)."""
    with _open_bytes(path) as stream:
        for number, line in enumerate(stream, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def _parse_csv(
    path: Path,
    names: list[str],
    keep: list[str],
    delimiter: str,
    invalid: list[tuple[int | None, str]],
    *,
    header: bool,
    threaded: bool,
) -> pa.Table:
    def on_invalid(row: pcsv.InvalidRow) -> str:
        invalid.append((row.number, row.text))
        return "skip"

    try:
        return pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(use_threads=threaded, column_names=names, skip_rows=int(header)),
            parse_options=pcsv.ParseOptions(
                delimiter=delimiter, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={name: pa.string() for name in names},
                include_columns=keep,
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowException as exc:
        if "invalid UTF8" in str(exc):
            raise EventFileError(str(path), _first_line_not_utf8(path), "not UTF-8") from exc
        raise EventFileError(str(path), None, f"cannot read CSV: {exc}") from exc
    except OSError as exc:  # e.g. a truncated gzip stream
        raise EventFileError(str(path), None, f"cannot read CSV: {exc}") from exc


def _show(value: object, limit: int = 60) -> str:
    text = str(value)
    return f"{text[:limit]}..." if len(text) > limit else text


def _bools(array: pa.Array | pa.ChunkedArray) -> Bools:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.bool_)


def _ints(array: pa.Array | pa.ChunkedArray) -> Ints:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=np.int64)


def _is_missing(strings: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.equal(pc.utf8_length(strings), 0), True)


def _string_column(table: pa.Table, name: str, source: str) -> pa.ChunkedArray:
    column = table[name]
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return pc.cast(column, pa.string())
    raise EventFileError(source, None, f"column '{name}' has type {column.type}; expected text")


def _id_strings(table: pa.Table, name: str, source: str) -> pa.ChunkedArray:
    if pa.types.is_integer(table[name].type):  # Parquet files often store numeric ids
        return pc.cast(table[name], pa.string())
    return _string_column(table, name, source)


def _parse_timestamp_text(chunk: pa.Array) -> tuple[Ints, Bools]:
    text = pc.utf8_trim_whitespace(chunk)
    is_int = pc.fill_null(pc.match_substring_regex(text, _UNIX_SECONDS), False)
    seconds = _ints(pc.cast(pc.if_else(is_int, text, "0"), pa.int64()))
    micros, ok = seconds * 1_000_000, _bools(is_int)
    rest = np.flatnonzero(~ok)
    if len(rest):
        micros[rest], ok[rest] = _parse_iso_8601(text.take(pa.array(rest)))
    return micros, ok


def _parse_iso_8601(text: pa.Array) -> tuple[Ints, Bools]:
    """ISO 8601 date-times; with no offset they are taken as UTC."""
    parts = pc.extract_regex(text, _ISO_8601)
    matched = _bools(pc.is_valid(parts))

    def field(name: str) -> pa.Array:
        return pc.fill_null(parts.field(name), "")

    date, hms = pc.if_else(matched, field("date"), "1970-01-01"), field("hms")
    hms_length = pc.utf8_length(hms)
    hms = pc.if_else(
        pc.equal(hms_length, 0),
        "00:00:00",
        pc.if_else(pc.equal(hms_length, 5), pc.binary_join_element_wise(hms, "00", ":"), hms),
    )
    wall = pc.binary_join_element_wise(date, hms, "T")
    parsed = pc.strptime(wall, format=_WALL_CLOCK, unit="s", error_is_null=True)
    seconds = _ints(pc.fill_null(pc.cast(parsed, pa.int64()), 0))
    # strptime rolls 2017-02-30 over to March 2; the day of the month then differs from the text.
    day = (seconds // 86400).astype("datetime64[D]")
    day_of_month = (day - day.astype("datetime64[M]")).astype(np.int64) + 1
    exact = pc.is_valid(parsed).to_numpy(zero_copy_only=False) & (
        day_of_month == _ints(pc.cast(pc.utf8_slice_codeunits(date, 8, 10), pa.int64()))
    )
    fraction = pc.utf8_rpad(pc.utf8_slice_codeunits(field("frac"), 1, 7), width=6, padding="0")
    micros = _ints(pc.cast(fraction, pa.int64()))
    zone = pc.replace_substring(field("tz"), ":", "")
    has_offset = pc.match_substring_regex(zone, r"^[+-]")
    hours = _ints(pc.cast(pc.if_else(has_offset, pc.utf8_slice_codeunits(zone, 1, 3), "0"), pa.int64()))
    minutes_text = pc.utf8_rpad(pc.utf8_slice_codeunits(zone, 3, 5), width=2, padding="0")
    minutes = _ints(pc.cast(pc.if_else(has_offset, minutes_text, "0"), pa.int64()))
    sign = np.where(_bools(pc.starts_with(zone, "-")), -1, 1)
    offset = sign * (hours * 3600 + minutes * 60)
    ok = matched & exact & (hours < 24) & (minutes < 60)
    return (seconds - offset) * 1_000_000 + micros, ok


def _parse_values(column: pa.ChunkedArray, source: str) -> tuple[pa.ChunkedArray, Bools]:
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = pc.cast(column, kind.value_type), kind.value_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = pc.utf8_trim_whitespace(column)
        number = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
        empty = _is_missing(text)
        values = pc.cast(pc.if_else(number, text, pa.scalar(None, pa.string())), pa.float64())
        ok = pc.and_(pc.or_(number, empty), pc.fill_null(pc.is_finite(values), True))
        return values, _bools(ok)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        values = pc.cast(column, pa.float64())
        return values, _bools(pc.fill_null(pc.is_finite(values), True))
    raise EventFileError(source, None, f"column 'value' has type {kind}; expected numbers")


def _first_bad_rows(
    rows: RawRows, code: npt.NDArray[np.uint8], max_id_length: int, event_types: Collection[str] | None
) -> dict[str, tuple[int, str]]:
    """For each reason, the lowest bad line and what is wrong with it."""
    examples: dict[str, tuple[int, str]] = {}
    if rows.malformed:
        examples[MALFORMED_ROW] = min(rows.malformed)
    bad = np.flatnonzero(code)
    for number, reason in enumerate(REASONS, 1):
        first = bad[code[bad] == number][:1]
        if len(first):
            index = int(first[0])
            examples[reason] = (
                rows.line(index),
                _describe(rows.table, index, reason, max_id_length, event_types),
            )
    return examples


def _describe(
    table: pa.Table, index: int, reason: str, max_id_length: int, event_types: Collection[str] | None
) -> str:
    def raw(name: str) -> str:
        value = table[name][index].as_py() if name in table.column_names else None
        return "" if value is None else str(value).strip()

    if not any(raw(name) for name in table.column_names):
        return "empty row"
    if reason in ("missing_user_id", "missing_item_id"):
        return f"missing {reason.removeprefix('missing_')}"
    if reason == "id_too_long":
        name = "user_id" if len(raw("user_id")) > max_id_length else "item_id"
        return f"{name} longer than {max_id_length} characters: '{_show(raw(name))}'"
    if reason == "unknown_type":
        if not raw("type"):
            return "missing event type"
        return f"unknown event type '{_show(raw('type'))}' (known: {', '.join(sorted(event_types or ()))})"
    if reason == "bad_timestamp":
        if not raw("ts"):
            return "missing timestamp"
        hint = " (unix time must be in seconds)" if raw("ts").lstrip("-").isdigit() else ""
        return f"unparsable timestamp '{_show(raw('ts'))}'{hint}"
    return f"non-numeric value '{_show(raw('value'))}'"


def _conform(table: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """Exactly `schema`'s columns in its order: others dropped, absent optional ones null."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            try:
                columns.append(pc.cast(table[field.name], field.type))
            except pa.ArrowException as exc:
                raise EventFileError(source, None, f"column '{field.name}': {exc}") from exc
        elif field.nullable:
            columns.append(pa.nulls(table.num_rows, field.type))
        else:
            raise EventFileError(source, None, f"missing required column '{field.name}'")
    return pa.Table.from_arrays(columns, schema=schema)


def _file_format(path: Path) -> Literal["parquet", "csv", "csv.gz"]:
    for suffix in EVENT_FILE_SUFFIXES:
        if path.name.endswith(suffix):
            return "parquet" if suffix == ".parquet" else "csv.gz" if suffix == ".csv.gz" else "csv"
    raise InputError(f"{path}: unsupported file type, expected {_suffixes()}", path=str(path))


def _read_keyed(path: Path, schema: pa.Schema) -> pa.Table:
    """A table keyed by its first column (items, users): every key present and unique."""
    try:
        if _file_format(path) == "parquet":
            table, first_line = pq.read_table(path), 1
        else:
            header = _csv_header(path, ",")
            known = {f.name: f.type for f in schema if f.name in header}
            table, first_line = (
                pcsv.read_csv(
                    path,
                    read_options=pcsv.ReadOptions(column_names=header, skip_rows=1),
                    parse_options=pcsv.ParseOptions(ignore_empty_lines=False),
                    convert_options=pcsv.ConvertOptions(
                        column_types=known,
                        include_columns=list(known),
                        null_values=[""],
                        strings_can_be_null=True,
                        quoted_strings_can_be_null=False,
                    ),
                ),
                2,
            )
    except (OSError, pa.ArrowException) as exc:
        raise EventFileError(str(path), None, f"cannot read: {exc}") from exc
    table = _conform(table, schema, str(path))
    key = schema.field(0).name
    missing = np.flatnonzero(_bools(_is_missing(table[key])))
    if len(missing):
        raise EventFileError(str(path), first_line + int(missing[0]), f"missing {key}")
    if pc.count_distinct(table[key]).as_py() != table.num_rows:
        _, firsts = np.unique(np.asarray(table[key].to_pylist(), dtype=str), return_index=True)
        repeat = int(np.setdiff1d(np.arange(table.num_rows), firsts)[0])
        raise EventFileError(str(path), first_line + repeat, f"duplicate {key} '{table[key][repeat]}'")
    return table


def _write_table(table: pa.Table, path: Path) -> None:
    """Write aside, then `os.replace`, so a reader never sees half a file."""
    kind = _file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        if kind == "parquet":
            pq.write_table(table, temporary, compression="zstd")
        elif kind == "csv.gz":
            with pa.CompressedOutputStream(str(temporary), "gzip") as stream:
                pcsv.write_csv(table, stream)
        else:
            pcsv.write_csv(table, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
