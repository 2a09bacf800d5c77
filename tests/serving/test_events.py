"""Posting events and feedback: accepted only once in Redis, validated against the configuration."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from serving_support import Api, assert_problem
from shop import items_of

from recsvc.keys import Keys
from recsvc.state import unix_micros

pytestmark = pytest.mark.anyio


async def test_one_event_is_recorded_with_the_server_time(api: Api, redis_client: redis.Redis) -> None:
    response = await api.app_client.post(
        "/v1/events", json={"user_id": "u1", "item_id": "a1", "type": "view"}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == 1 and len(body["ids"]) == 1
    [(stream_id, fields)] = redis_client.xrange(Keys(api.settings.redis.prefix).events())
    assert stream_id == body["ids"][0]
    assert fields == {
        "user_id": "u1",
        "item_id": "a1",
        "type": "view",
        "ts": str(unix_micros(api.clock.now)),
        "value": "",
    }


async def test_a_batch_keeps_order_timestamps_and_values(api: Api, redis_client: redis.Redis) -> None:
    events = [
        {"user_id": "u1", "item_id": "a1", "type": "view", "ts": "2024-02-01T10:00:00Z"},
        {"user_id": "u2", "item_id": "b1", "type": "rate", "ts": "2024-02-01T12:30:00+02:00", "value": 4.5},
        {"user_id": "u1", "item_id": "unknown-item", "type": "purchase"},
    ]
    response = await api.app_client.post("/v1/events", json={"events": events})
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 3
    stream = redis_client.xrange(Keys(api.settings.redis.prefix).events())
    assert [entry_id for entry_id, _ in stream] == response.json()["ids"]
    assert [fields["item_id"] for _, fields in stream] == ["a1", "b1", "unknown-item"]
    assert stream[1][1]["value"] == "4.5"
    assert stream[1][1]["ts"] == str(unix_micros(api.clock.now - timedelta(hours=2, minutes=-30)))


async def test_unknown_type_is_named_with_its_index(api: Api) -> None:
    events = [
        {"user_id": "u1", "item_id": "a1", "type": "view"},
        {"user_id": "u1", "item_id": "a2", "type": "teleport"},
    ]
    body = assert_problem(await api.app_client.post("/v1/events", json={"events": events}), 422)
    assert body["errors"] == [
        {
            "loc": ["body", "events", 1, "type"],
            "msg": body["errors"][0]["msg"],
            "type": "unknown_event_type",
        }
    ]
    assert "'teleport'" in body["errors"][0]["msg"] and "purchase" in body["errors"][0]["msg"]
    assert "events.1.type" in body["detail"]
    single = assert_problem(
        await api.app_client.post("/v1/events", json={"user_id": "u", "item_id": "i", "type": "nope"}), 422
    )
    assert single["errors"][0]["loc"] == ["body", "type"]


async def test_ids_longer_than_configured_are_rejected(api: Api) -> None:
    long_id = "x" * (api.settings.events.max_id_length + 1)
    event = {"user_id": long_id, "item_id": "a1", "type": "view"}
    body = assert_problem(await api.app_client.post("/v1/events", json={"events": [event]}), 422)
    assert body["errors"][0]["loc"] == ["body", "events", 0, "user_id"]
    assert body["errors"][0]["type"] == "id_too_long"
    assert_problem(await api.app_client.get(f"/v1/users/{long_id}/recommendations"), 422)
    feedback = {"user_id": "u1", "item_id": long_id, "kind": "not_interested"}
    assert_problem(await api.app_client.post("/v1/feedback", json=feedback), 422)


async def test_schema_errors_are_located_without_the_union_tag(api: Api) -> None:
    events = [{"user_id": "u1", "item_id": "a1", "type": "view", "ts": "2024-02-01T10:00:00"}]
    body = assert_problem(await api.app_client.post("/v1/events", json={"events": events}), 422)
    assert body["errors"][0]["loc"] == ["body", "events", 0, "ts"]  # naive time: no zone
    missing = assert_problem(await api.app_client.post("/v1/events", json={"item_id": "a1"}), 422)
    assert {tuple(error["loc"]) for error in missing["errors"]} == {("body", "user_id"), ("body", "type")}
    empty = assert_problem(await api.app_client.post("/v1/events", json={"events": []}), 422)
    assert empty["errors"][0]["loc"] == ["body", "events"]


async def test_values_beyond_the_largest_that_counts_are_rejected(api: Api) -> None:
    event = {"user_id": "u1", "item_id": min(items_of("A")), "type": "rate", "value": 1e300}
    body = assert_problem(await api.app_client.post("/v1/events", json={"events": [event]}), 422)
    assert body["errors"][0]["loc"] == ["body", "events", 0, "value"]
    assert "1000000000" in body["errors"][0]["msg"]
    negative = {**event, "value": -1e300}
    assert_problem(await api.app_client.post("/v1/events", json=negative), 422)
    largest = {**event, "value": 1e9}
    assert (await api.app_client.post("/v1/events", json=largest)).status_code == 202
    response = await api.app_client.get("/v1/users/u1/recommendations")
    assert response.status_code == 200 and response.json()["strategy"] == "realtime"


async def test_future_timestamps_are_rejected(api: Api) -> None:
    ts = (api.clock.now + timedelta(days=1)).isoformat()
    body = assert_problem(
        await api.app_client.post(
            "/v1/events", json={"user_id": "u", "item_id": "a1", "type": "view", "ts": ts}
        ),
        422,
    )
    assert body["errors"][0]["loc"] == ["body", "ts"]


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z"])
async def test_timestamps_before_2000_are_rejected_as_missing_values(api: Api, ts: str) -> None:
    event = {"user_id": "u", "item_id": "a1", "type": "view", "ts": ts}
    body = assert_problem(await api.app_client.post("/v1/events", json={"events": [event]}), 422)
    assert body["errors"][0]["loc"] == ["body", "events", 0, "ts"]
    assert body["errors"][0]["type"] == "too_old" and "2000-01-01" in body["errors"][0]["msg"]
    oldest = {**event, "ts": "2000-01-01T00:00:00Z"}
    assert (await api.app_client.post("/v1/events", json=oldest)).status_code == 202


async def test_a_batch_over_the_limit_is_413(api: Api) -> None:
    limit = api.settings.serving.max_batch
    events = [{"user_id": "u1", "item_id": "a1", "type": "view"}] * (limit + 1)
    body = assert_problem(await api.app_client.post("/v1/events", json={"events": events}), 413)
    assert str(limit) in body["detail"]
    items = [{"item_id": f"i{n}", "price": 1.0} for n in range(limit + 1)]
    assert_problem(await api.admin.put("/v1/items", json={"items": items}), 413)


async def test_feedback_kinds_are_validated(api: Api) -> None:
    body = assert_problem(
        await api.app_client.post("/v1/feedback", json={"user_id": "u", "item_id": "a1", "kind": "love"}), 422
    )
    assert body["errors"][0]["loc"] == ["body", "kind"]


async def test_events_counter_by_type(api: Api) -> None:
    events = [{"user_id": "u1", "item_id": "a1", "type": kind} for kind in ("view", "view", "purchase")]
    await api.app_client.post("/v1/events", json={"events": events})
    metrics = (await api.anonymous.get("/metrics")).text
    assert 'recsvc_events_ingested_total{type="view"} 2.0' in metrics
    assert 'recsvc_events_ingested_total{type="purchase"} 1.0' in metrics
