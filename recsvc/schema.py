"""Arrow schemas of the canonical tables every layer exchanges: events, items, user profiles.

Event files on disk (CSV or Parquet) are read into EVENT_SCHEMA; external ids stay strings and
all times are timezone-aware UTC.
"""

from __future__ import annotations

import pyarrow as pa

UTC_MICROS = pa.timestamp("us", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("ts", UTC_MICROS, nullable=False),
        pa.field("value", pa.float64(), nullable=True),
    ]
)
EVENT_REQUIRED_COLUMNS = ("user_id", "item_id", "type", "ts")

ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("category", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("available", pa.bool_()),
        pa.field("url", pa.string()),
        pa.field("image_url", pa.string()),
    ]
)

USER_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("timezone", pa.string()),
        pa.field("tier", pa.string()),
        pa.field("points", pa.int64()),
        pa.field("locale", pa.string()),
        pa.field("push_consent", pa.bool_()),
    ]
)
