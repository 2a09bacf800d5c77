"""Property-based fuzzing of every route, from the app's own OpenAPI schema.

The product promises that every error is an RFC 9457 problem with a 4xx status that says what
was wrong, and that a 5xx is always a bug. The other suites test the inputs someone thought of;
here schemathesis derives requests, valid and deliberately invalid, from the schema the app
publishes and sends them to every operation, over the run's real Redis. Ids in paths are now and
then swapped for ones the test stored first (a profile, a campaign, a sent push, the promoted
model, a trained item), so the fuzz also reaches the handlers' paths past "not found".
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from serving_support import open_api
from shop import ADMIN, ManualClock, base_settings

from notifier import messages
from recsvc.config import Settings
from recsvc.registry import Registry
from serving.app import create_app
from serving.problems import PROBLEM_MEDIA_TYPE

USER = "gA-u1"
ITEM = "a1"
CAMPAIGN_ID = "weekly"
RUN_ID = "r1"
CAMPAIGN: dict[str, Any] = {
    "id": CAMPAIGN_ID,
    "name": "Weekly picks",
    "segment": {"push_consent": True},
    "schedule": {"kind": "cron", "cron": "0 10 * * mon", "timezone": "Europe/Berlin"},
    "content": {"title": "{{ item.title }}", "body": "{{ items | length }} picks for you"},
    "rules": {"quiet_start": "00:00", "quiet_end": "00:00"},
}
PROFILE: dict[str, Any] = {
    "attributes": {"tier": "gold", "points": 10},
    "timezone": "Europe/Berlin",
    "push_consent": True,
    "devices": [{"device_id": "phone", "platform": "android", "token": "t-1"}],
}
# What a path or query parameter of each name is swapped for: resources `seed` stores.
KNOWN: dict[str, str] = {
    "user_id": USER,
    "item_id": ITEM,
    "campaign_id": CAMPAIGN_ID,
    "message_id": messages.message_id(CAMPAIGN_ID, RUN_ID, USER),
    "version": "v000001",
}
REDIS_TIMEOUT_SECONDS = 10.0


def published_schema() -> dict[str, Any]:
    """The OpenAPI document the app serves, from an app that is built but never started.

    Schemathesis makes one test per operation when the module is collected, before any fixture
    exists; the document depends only on the routes, so an app over an empty registry and a
    Redis client that never connects publishes the same one as the app under test. (Its loader
    from a fixture, `schemathesis.pytest.from_fixture`, fails on pytest 9.2: it reads
    `Function._nodeid`, which pytest removed.)
    """
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(base_settings(), registry=Registry(Path(folder)), redis=aioredis.Redis())
        return app.openapi()


schema = schemathesis.openapi.from_dict(published_schema())


@schema.hook
def flatmap_path_parameters(
    context: schemathesis.HookContext, path_parameters: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any] | None]:
    """The generated path parameters, or the same with every known id swapped in."""
    return _maybe_known(path_parameters)


@schema.hook
def flatmap_query(
    context: schemathesis.HookContext, query: dict[str, Any] | None
) -> st.SearchStrategy[dict[str, Any] | None]:
    """The generated query, or the same with a known user (the campaign preview's `user_id`)."""
    return _maybe_known(query)


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """An event body as generated, or with a configured type, so that some events are recorded."""
    if context.operation is None or context.operation.path != "/v1/events" or not isinstance(body, dict):
        return st.just(body)
    if isinstance(body.get("events"), list):
        events = [_typed(event) for event in body["events"]]
        return st.sampled_from([body, {**body, "events": events}])
    return st.sampled_from([body, _typed(body)])


def _typed(event: Any) -> Any:
    return {**event, "type": "view"} if isinstance(event, dict) and "type" in event else event


def _maybe_known(parameters: dict[str, Any] | None) -> st.SearchStrategy[dict[str, Any] | None]:
    if not parameters or not KNOWN.keys() & parameters.keys():
        return st.just(parameters)
    known = {name: KNOWN.get(name, value) for name, value in parameters.items()}
    return st.sampled_from([parameters, known])


async def seed(settings: Settings, registry: Registry, clock: ManualClock) -> None:
    """Store what the known ids name: a profile with a device, a campaign, and its push to the user."""
    async for api in open_api(settings, registry, clock):
        assert (await api.app_client.put(f"/v1/users/{USER}", json=PROFILE)).status_code == 200
        # Recent events (one of an item the model lacks) and a dismissal, for the real-time path.
        events = [{"user_id": USER, "item_id": item, "type": "view"} for item in ("b1", "b2", "new-item")]
        assert (await api.app_client.post("/v1/events", json={"events": events})).status_code == 202
        dismissal = {"user_id": USER, "item_id": "a2", "kind": "not_interested"}
        assert (await api.app_client.post("/v1/feedback", json=dismissal)).status_code == 202
        assert (await api.admin.post("/v1/campaigns", json=CAMPAIGN)).status_code == 201
        services = api.app.state.services
        campaign = await services.campaigns.get(CAMPAIGN_ID)
        assert (await services.runner.run(campaign, RUN_ID)).messages == 1


@pytest.fixture
def app(shop_settings: Settings, registry: Registry, clock: ManualClock, first_version: str) -> FastAPI:
    """The app under test, serving the planted shop's model over the run's Redis, after `seed`.

    It owns its Redis clients (none is passed in): schemathesis runs the app and its lifespan on
    an event loop of its own and ends the lifespan after each test, which closes the clients on
    that loop.
    """
    # A Redis slower than the serving timeout is answered 503 by design; the fuzz is about input,
    # so a pause of this busy process (collector, shrinking) must not count as one.
    serving = shop_settings.serving.model_copy(update={"redis_timeout_seconds": REDIS_TIMEOUT_SECONDS})
    settings = shop_settings.model_copy(update={"serving": serving})
    anyio.run(seed, settings, registry, clock)
    return create_app(settings, registry=registry, clock=clock)


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,  # the same examples on every machine: no replay of examples saved by earlier runs
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_every_answer_is_a_success_or_a_problem(case: schemathesis.Case[Any], app: FastAPI) -> None:
    """No 5xx; every 4xx a problem document with its status; every success as documented.

    Every operation is fuzzed, none excluded. Requests carry the admin key so that they pass
    authentication and reach the handlers (keys and roles have their own tests). The examples of
    one operation share its app on purpose (hence the health check suppressed): state the fuzz
    leaves, such as a campaign it created, is input for the next example.
    """
    response = case.call(app=app, headers=ADMIN)
    status = response.status_code
    assert status < 500, f"{case.method} {case.formatted_path}: {status} {response.text}"
    if status >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type.startswith(PROBLEM_MEDIA_TYPE), (status, content_type, response.text)
        body = response.json()
        assert {"type", "title", "status", "detail"} <= set(body), body
        assert body["status"] == status, body
    else:
        case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])
