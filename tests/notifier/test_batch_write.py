"""A run's batch write: the recorder refuses what the script could not apply before anything is
sent, and the script writes floats exactly where Redis parses them.

That a batch written under a lost lease applies nothing is tested end to end in test_runner.py
(`test_a_run_that_lost_its_lease_stops_and_is_resumed_later`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from shop import NOW

from notifier.batch_write import APPLY, BatchWrite, Windows, stage_records
from notifier.messages import Message
from notifier.segments import UserData
from recsvc.config import Settings
from recsvc.keys import Keys

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("stage", "command"),
    [
        (lambda batch: batch.hset("k", "f", 1.5), "HSET"),  # Redis would store "1.5" as other text
        (lambda batch: batch.expire("k", 1.5), "EXPIRE"),
        (lambda batch: batch.hset("k", mapping={"f": b"bytes"}), "HSET"),
        (lambda batch: batch.set("k", b"bytes"), "SET"),
        (lambda batch: batch.hset("k", "f", None), "HSET"),
        (lambda batch: batch.hset("k", "f", True), "HSET"),
    ],
    ids=["float-on-hset", "float-on-expire", "bytes-in-mapping", "bytes-value", "none", "bool"],
)
def test_an_argument_the_script_cannot_apply_is_refused_when_staged(
    stage: Callable[[Any], object], command: str
) -> None:
    batch = BatchWrite()
    pipe: Any = batch
    pipe.set("earlier", "kept")
    with pytest.raises(TypeError, match=command):
        stage(pipe)
    assert batch.commands == [("SET", "earlier", "kept")]  # the refused command was not recorded


async def test_floats_reach_redis_exactly_where_redis_parses_them(
    aredis: aioredis.Redis, shop_settings: Settings
) -> None:
    keys = Keys(shop_settings.redis.prefix)
    due = NOW.timestamp() + 0.1234567  # 1706788800.1234567: all 17 significant digits matter
    message = Message("m1", "spring", "r1", "u1", "Grüße", "body", None, ("a1", "a2"), due)
    user = UserData("u1", None, [], frozenset(), (), {})
    batch = BatchWrite()
    pipe: Any = batch
    stage_records(pipe, keys, user, message, NOW.timestamp(), Windows(pushes=86_400.0, items=86_400.0))
    pipe.zincrby(keys.user_pushes("u1"), 0.1, "other|r0")
    pipe.hset(keys.message("m1"), "title", message.title)
    assert ("ZADD", keys.user_pushes("u1"), due, "spring|r1") in batch.commands  # a float, accepted
    lock = keys.campaign_run_lock("spring", "r1")
    await aredis.set(lock, "token")
    applied = await aredis.register_script(APPLY)(keys=[lock], args=["token", batch.encoded()])
    assert applied == 1
    assert await aredis.zscore(keys.user_pushes("u1"), "spring|r1") == due
    assert await aredis.zscore(keys.user_pushes("u1"), "other|r0") == 0.1
    pushed: dict[str, str] = await aredis.hgetall(keys.user_pushed_items("u1"))  # type: ignore[assignment]
    assert {item: json.loads(record)["t"] for item, record in pushed.items()} == {"a1": due, "a2": due}
    assert await aredis.hget(keys.message("m1"), "title") == "Grüße"
    assert 0 < await aredis.ttl(keys.user_pushes("u1")) <= 86_401
