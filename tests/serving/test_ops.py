"""Liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from fastapi.routing import APIRoute
from fastapi.security.base import SecurityBase
from serving_support import Api, open_api
from shop import ManualClock

from recsvc.config import Settings
from recsvc.redis_conn import ensure_redis
from recsvc.registry import Registry
from serving.app import ROUTERS

pytestmark = pytest.mark.anyio


async def test_health_and_readiness_need_no_key(api: Api) -> None:
    assert (await api.anonymous.get("/healthz")).json() == {"status": "ok"}
    ready = await api.anonymous.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model_version": "v000001", "redis": True}


async def test_metrics_after_calls(api: Api) -> None:
    await api.app_client.get("/v1/users/gA-u1/recommendations")
    await api.app_client.get("/v1/users/somebody-new/recommendations")
    await api.app_client.get("/v1/popular")
    await api.app_client.post("/v1/events", json={"user_id": "u1", "item_id": "a1", "type": "view"})
    await api.anonymous.get("/v1/popular")
    await api.app_client.get("/v1/no-such-route")
    response = await api.anonymous.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    route = 'method="GET",route="/v1/users/{user_id}/recommendations",status="200"'
    assert f'recsvc_http_request_duration_seconds_bucket{{le="+Inf",{route}}} 2.0' in text
    assert f"recsvc_http_request_duration_seconds_count{{{route}}} 2.0" in text
    assert 'route="/v1/popular",status="401"' in text
    assert 'route="<unmatched>",status="404"' in text
    assert 'recsvc_recommendations_total{endpoint="recommendations",strategy="personalized"} 1.0' in text
    assert 'recsvc_recommendations_total{endpoint="recommendations",strategy="popular"} 1.0' in text
    assert 'recsvc_events_ingested_total{type="view"} 1.0' in text
    assert 'recsvc_model_version_info{version="v000001"} 1.0' in text


async def test_each_app_has_its_own_metrics(api: Api) -> None:
    # Apps built earlier in this process recorded requests; this one starts from nothing.
    text = (await api.anonymous.get("/metrics")).text
    assert "recsvc_events_ingested_total{" not in text


async def test_openapi_has_examples_for_every_schema_and_route(api: Api) -> None:
    spec = (await api.anonymous.get("/openapi.json")).json()
    helpers = {"ProblemError", "ValidationError", "HTTPValidationError"}
    missing = [
        name
        for name, schema in spec["components"]["schemas"].items()
        if name not in helpers and "examples" not in schema and "example" not in schema
    ]
    assert not missing, missing
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), (method, path)
            for parameter in operation.get("parameters", []):
                assert "examples" in parameter["schema"] or "example" in parameter, (method, path, parameter)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert set(response["content"]) == {"application/problem+json"}, (method, path, status)
    problem: dict[str, Any] = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "instance"} <= set(problem["required"])


def test_providers_read_services_from_the_request_not_from_each_other() -> None:
    """FastAPI walks a dependency's sub-tree again wherever it is asked for, cached or not, so
    a provider asking for another (settings via services, say) costs every request; only the
    security schemes that `get_caller` and `require_admin` read the key through sit one level down."""
    nested: dict[str, list[str]] = {}
    for route in (route for router in ROUTERS for route in router.routes):
        assert isinstance(route, APIRoute)
        for provider in route.dependant.dependencies:
            for inner in provider.dependencies:
                if not isinstance(inner.call, SecurityBase) or inner.dependencies:
                    nested.setdefault(route.path, []).append(
                        getattr(inner.call, "__name__", repr(inner.call))
                    )
    assert nested == {}


async def test_a_started_server_has_its_redis_connections_open_before_any_request(
    shop_settings: Settings,
    registry: Registry,
    clock: ManualClock,
    first_version: str,
    redis_client: redis.Redis,
) -> None:
    serving = shop_settings.serving.model_copy(update={"redis_connections_at_start": 6})
    settings = shop_settings.model_copy(update={"serving": serving})
    name = f"recsvc-test-{uuid.uuid4().hex[:8]}"  # the only connections of this name are the app's
    client = aioredis.Redis.from_url(ensure_redis(settings), client_name=name, decode_responses=True)
    async for _ in open_api(settings, registry, clock, redis=client):
        assert len([entry for entry in redis_client.client_list() if entry["name"] == name]) == 6
