"""Load user profiles from a file (`users.parquet` or CSV) into Redis, where campaigns select from.

Profiles usually arrive one at a time through `PUT /v1/users/{id}`; this bulk path seeds Redis from
a dataset (a synthetic shop, or an export of an existing app), with the same merge rules as the API:
`timezone` and `push_consent` are profile fields, every other column becomes an attribute. Users
who were forgotten are not brought back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import redis

from recsvc.archive import forgotten_users
from recsvc.config import Settings
from recsvc.keys import Keys
from recsvc.state import profile_changes

BATCH = 5_000
PROFILE_COLUMNS = ("user_id", "timezone", "push_consent")
# A device for every imported user, for local runs with the log provider: real tokens come from apps.
DEMO_DEVICE = "demo-phone"


def import_profiles(client: redis.Redis, settings: Settings, users: pa.Table, *, demo_devices: bool) -> int:
    """Merge every row of `users` into its Redis profile; the number of profiles written."""
    keys = Keys(settings.redis.prefix)
    forgotten = forgotten_users(client, settings)
    written = 0
    for batch in _batches(users):
        with client.pipeline(transaction=False) as pipe:
            for row in batch:
                user_id = row["user_id"]
                if user_id in forgotten:
                    continue
                write, remove = profile_changes(_profile(row, demo_devices=demo_devices))
                pipe.hset(keys.profile(user_id), mapping=write)  # type: ignore[arg-type]
                if remove:
                    pipe.hdel(keys.profile(user_id), *remove)
                pipe.sadd(keys.profiles(), user_id)
                written += 1
            pipe.execute()
    return written


def _batches(users: pa.Table) -> Iterator[list[dict[str, Any]]]:
    for batch in users.to_batches(max_chunksize=BATCH):
        yield batch.to_pylist()


def _profile(row: dict[str, Any], *, demo_devices: bool) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "attributes": {
            name: value for name, value in row.items() if name not in PROFILE_COLUMNS and _present(value)
        }
    }
    if row.get("timezone"):
        profile["timezone"] = row["timezone"]
    if row.get("push_consent") is not None:
        profile["push_consent"] = bool(row["push_consent"])
    if demo_devices:
        profile["devices"] = {DEMO_DEVICE: {"token": f"demo-token-{row['user_id']}", "platform": "android"}}
    return profile


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))
