"""With Redis unreachable: reads come from the model alone, writes answer 503 with Retry-After, never 500."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from serving_support import Api, assert_problem, open_api
from shop import ManualClock

from recsvc.config import Settings
from recsvc.registry import Registry

pytestmark = pytest.mark.anyio


def dead_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def down(
    shop_settings: Settings, registry: Registry, clock: ManualClock, first_version: str
) -> AsyncIterator[Api]:
    client = aioredis.Redis.from_url(
        f"redis://127.0.0.1:{dead_port()}/0",
        socket_timeout=0.25,
        socket_connect_timeout=0.25,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    async for api in open_api(shop_settings, registry, clock, redis=client):
        yield api


async def test_reads_are_served_from_the_model(down: Api) -> None:
    known = await down.app_client.get("/v1/users/gA-u1/recommendations", params={"k": 5})
    assert known.status_code == 200, known.text
    body = known.json()
    assert body["realtime"] is False and body["strategy"] == "personalized" and len(body["items"]) == 5
    unknown = (await down.app_client.get("/v1/users/stranger/recommendations")).json()
    assert unknown["realtime"] is False and unknown["strategy"] == "popular" and unknown["items"]
    popular = await down.app_client.get("/v1/popular", params={"k": 5, "category": "B"})
    assert popular.status_code == 200 and popular.json()["realtime"] is False
    assert len(popular.json()["items"]) == 5
    similar = await down.app_client.get("/v1/items/a1/similar", params={"k": 3})
    assert similar.status_code == 200 and similar.json()["realtime"] is False


@pytest.mark.parametrize(
    ("method", "path", "body", "admin"),
    [
        ("POST", "/v1/events", {"user_id": "u1", "item_id": "a1", "type": "view"}, False),
        ("POST", "/v1/feedback", {"user_id": "u1", "item_id": "a1", "kind": "not_interested"}, False),
        ("PUT", "/v1/users/u1", {"push_consent": True}, False),
        ("DELETE", "/v1/users/u1", None, False),
        ("GET", "/v1/users/u1", None, True),
        ("PUT", "/v1/items", {"items": [{"item_id": "a1", "available": False}]}, True),
    ],
)
async def test_writes_answer_503_with_retry_after(
    down: Api, method: str, path: str, body: object, admin: bool
) -> None:
    client = down.admin if admin else down.app_client
    response = await client.request(method, path, json=body)
    problem = assert_problem(response, 503)
    assert response.headers["retry-after"] == str(down.settings.serving.retry_after_seconds)
    assert "retry later" in problem["detail"]


async def test_not_ready_but_alive_and_errors_counted(down: Api) -> None:
    assert (await down.anonymous.get("/healthz")).status_code == 200
    problem = assert_problem(await down.anonymous.get("/readyz"), 503, detail="Redis")
    assert problem["redis"] is False and problem["model_loaded"] is True
    await down.app_client.get("/v1/users/gA-u1/recommendations")
    metrics = (await down.anonymous.get("/metrics")).text
    assert 'recsvc_redis_errors_total{operation="user_state"} 1.0' in metrics
    assert 'recsvc_redis_errors_total{operation="ping"} 1.0' in metrics
