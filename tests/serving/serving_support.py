"""Helpers of the API suites: the app under test with its clients, and assertions.

The planted shop, the test keys and the manual clock are shared with the notifier suites (`shop`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from shop import ADMIN, APP, ManualClock

from recsvc.config import Settings
from recsvc.redis_conn import connect_async
from recsvc.registry import Registry
from serving.app import create_app


@dataclass
class Api:
    """The app under test with clients for both roles and one without a key."""

    app: FastAPI
    app_client: httpx.AsyncClient
    admin: httpx.AsyncClient
    anonymous: httpx.AsyncClient
    settings: Settings
    registry: Registry
    clock: ManualClock


async def open_api(
    settings: Settings, registry: Registry, clock: ManualClock, redis: Any = None
) -> AsyncIterator[Api]:
    """The app, started (lifespan run), with three clients over ASGI."""
    client = redis if redis is not None else connect_async(settings)
    app = create_app(settings, registry=registry, redis=client, clock=clock)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        base = "http://recsvc.test"
        async with (
            httpx.AsyncClient(transport=transport, base_url=base, headers=APP) as app_client,
            httpx.AsyncClient(transport=transport, base_url=base, headers=ADMIN) as admin,
            httpx.AsyncClient(transport=transport, base_url=base) as anonymous,
        ):
            yield Api(app, app_client, admin, anonymous, settings, registry, clock)
    await client.aclose()


def assert_problem(response: httpx.Response, status: int, *, detail: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with `status`; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= set(body), body
    assert isinstance(body["title"], str) and body["title"]
    assert body["instance"] == response.request.url.path
    assert body["request_id"] == response.headers["x-request-id"]
    if detail is not None:
        assert detail in body["detail"], body["detail"]
    return body


def category_count(items: list[dict[str, Any]], category: str) -> int:
    return sum(1 for item in items if item["category"] == category)
