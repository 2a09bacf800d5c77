"""`/v1/dead-letters`: an admin lists the pushes given up after the last attempt and replays them."""

from __future__ import annotations

import pytest
from serving_support import Api, assert_problem
from shop import NOW

from notifier import outbox, stats
from notifier.messages import Message, stage_messages
from recsvc.keys import Keys

pytestmark = pytest.mark.anyio


async def give_up(api: Api, message_id: str, campaign_id: str) -> None:
    """A stored message the worker gave up on: dead, in the stream, counted failed."""
    keys = Keys(api.settings.redis.prefix)
    message = Message(
        message_id, campaign_id, "run-1", "u1", "Hi", "New for you", None, ("a1",), NOW.timestamp()
    )
    async with api.app.state.services.redis.pipeline(transaction=True) as pipe:
        stage_messages(pipe, keys, [message], now=NOW.timestamp(), ttl_seconds=3600)
        outbox.stage_dead_letter(pipe, keys, message, attempts=5, error="phone: 503 down")
        stats.stage_counts(pipe, keys, campaign_id, "run-1", {stats.FAILED: 1})
        await pipe.execute()


async def test_dead_letters_are_listed_and_replayed_per_campaign(api: Api) -> None:
    await give_up(api, "m-1", "weekly")
    await give_up(api, "m-2", "cart")

    listed = await api.admin.get("/v1/dead-letters")
    assert listed.status_code == 200
    assert [
        (letter["message_id"], letter["campaign_id"], letter["attempts"]) for letter in listed.json()
    ] == [
        ("m-1", "weekly", 5),
        ("m-2", "cart", 5),
    ]
    assert [letter["message_id"] for letter in (await api.admin.get("/v1/dead-letters?limit=1")).json()] == [
        "m-1"
    ]

    replayed = await api.admin.post("/v1/dead-letters/replay?campaign=weekly")
    assert replayed.status_code == 200 and replayed.json() == {"replayed": 1, "skipped": 0}
    assert [letter["message_id"] for letter in (await api.admin.get("/v1/dead-letters")).json()] == ["m-2"]
    keys = Keys(api.settings.redis.prefix)
    redis = api.app.state.services.redis
    assert await redis.hget(keys.message("m-1"), "status") == "queued"
    assert await redis.zscore(keys.outbox_delayed(), "m-1") == NOW.timestamp()  # due now, by the app's clock
    assert await redis.hget(keys.campaign_stats("weekly"), stats.FAILED) == "0"  # no longer failed
    assert await redis.hget(keys.campaign_stats("cart"), stats.FAILED) == "1"


async def test_dead_letters_are_for_admins_and_limits_are_checked(api: Api) -> None:
    assert_problem(await api.app_client.get("/v1/dead-letters"), 403)
    assert_problem(await api.anonymous.post("/v1/dead-letters/replay"), 401)
    assert_problem(await api.admin.get("/v1/dead-letters?limit=0"), 422)
