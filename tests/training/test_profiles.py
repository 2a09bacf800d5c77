"""Bulk import of user profiles into Redis (`recsvc users import`)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import redis

from recsvc.config import Settings
from recsvc.keys import Keys
from training import io
from training.profiles import import_profiles


def users_file(folder: Path) -> Path:
    table = pa.table(
        {
            "user_id": ["u1", "u2", "gone"],
            "timezone": ["Europe/Berlin", None, "UTC"],
            "tier": ["gold", "silver", "bronze"],
            "points": [1200, None, 5],
            "locale": ["de-DE", "en-US", "en-GB"],
            "push_consent": [True, False, True],
        }
    )
    path = folder / "users.parquet"
    io.write_users(table, path)
    return path


def test_profiles_become_redis_profiles_in_the_population(
    tmp_path: Path, redis_settings: Settings, redis_client: redis.Redis
) -> None:
    keys = Keys(redis_settings.redis.prefix)
    redis_client.sadd(keys.forgotten(), "gone")

    written = import_profiles(
        redis_client, redis_settings, io.read_users(users_file(tmp_path)), demo_devices=False
    )

    assert written == 2
    assert redis_client.smembers(keys.profiles()) == {"u1", "u2"}
    first = redis_client.hgetall(keys.profile("u1"))
    assert first["timezone"] == "Europe/Berlin" and first["push_consent"] == "1"
    assert json.loads(first["attributes"]) == {"tier": "gold", "points": 1200, "locale": "de-DE"}
    second = redis_client.hgetall(keys.profile("u2"))
    assert "timezone" not in second and second["push_consent"] == "0"
    assert json.loads(second["attributes"]) == {"tier": "silver", "locale": "en-US"}
    assert not any(name.startswith("device:") for name in first)
    assert redis_client.exists(keys.profile("gone")) == 0


def test_demo_devices_give_each_user_a_token(
    tmp_path: Path, redis_settings: Settings, redis_client: redis.Redis
) -> None:
    keys = Keys(redis_settings.redis.prefix)
    import_profiles(redis_client, redis_settings, io.read_users(users_file(tmp_path)), demo_devices=True)
    device = json.loads(redis_client.hget(keys.profile("u2"), "device:demo-phone") or "{}")
    assert device == {"token": "demo-token-u2", "platform": "android"}
