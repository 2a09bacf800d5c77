"""Every error is an RFC 9457 problem with the right status; bad input never answers 500."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from serving_support import Api, assert_problem
from shop import ADMIN_KEY, APP_KEY

from serving.deps import get_services

pytestmark = pytest.mark.anyio


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {APP_KEY}"}],
)
async def test_missing_or_unknown_key_is_401(api: Api, headers: dict[str, str]) -> None:
    response = await api.anonymous.get("/v1/popular", headers=headers)
    problem = assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert problem["type"] == "urn:recsvc:problem:unauthorized"


async def test_both_header_styles_authenticate(api: Api) -> None:
    for headers in ({"X-API-Key": APP_KEY}, {"Authorization": f"Bearer {APP_KEY}"}):
        assert (await api.anonymous.get("/v1/popular", headers=headers)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/models", None),
        ("POST", "/v1/models/v000001/promote", None),
        ("PUT", "/v1/items", {"items": [{"item_id": "a1", "available": False}]}),
        ("GET", "/v1/users/u1", None),
    ],
)
async def test_app_keys_cannot_use_admin_routes(api: Api, method: str, path: str, body: object) -> None:
    problem = assert_problem(await api.app_client.request(method, path, json=body), 403)
    assert "admin" in problem["detail"]
    assert (await api.admin.request(method, path, json=body)).status_code < 400 or path == "/v1/users/u1"


async def test_authentication_comes_before_validation(api: Api) -> None:
    assert_problem(await api.anonymous.get("/v1/users/u1/recommendations", params={"k": 0}), 401)
    assert_problem(await api.anonymous.post("/v1/events", json={"type": "nope"}), 401)


# --- routing ---------------------------------------------------------------------------------------


async def test_unknown_route_is_404_problem(api: Api) -> None:
    problem = assert_problem(await api.app_client.get("/v1/nothing-here"), 404)
    assert problem["type"] == "about:blank" and problem["title"] == "Not Found"


async def test_unknown_item_is_404_problem(api: Api) -> None:
    problem = assert_problem(await api.app_client.get("/v1/items/no-such-item/similar"), 404)
    assert "no-such-item" in problem["detail"] and problem["type"] == "urn:recsvc:problem:not-found"


async def test_wrong_method_is_405_with_allow(api: Api) -> None:
    response = await api.app_client.delete("/v1/popular")
    assert_problem(response, 405)
    assert response.headers["allow"] == "GET"


# --- limits ----------------------------------------------------------------------------------------


async def test_body_over_the_limit_is_413(api: Api) -> None:
    limit = api.settings.serving.max_body_bytes
    body = json.dumps({"user_id": "u", "item_id": "a1", "type": "view", "pad": "x" * limit})
    problem = assert_problem(
        await api.app_client.post("/v1/events", content=body, headers={"content-type": "application/json"}),
        413,
    )
    assert str(limit) in problem["detail"]


async def test_body_over_the_limit_without_content_length_is_413(api: Api) -> None:
    limit = api.settings.serving.max_body_bytes

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"events": ['
        for _ in range(limit // 1000 + 1):
            yield b" " * 1000
        yield b"]}"

    response = await api.app_client.post(
        "/v1/events", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


async def test_chunked_body_under_the_limit_is_read(api: Api) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"user_id": "u", "item_id": "a1",'
        yield b' "type": "view"}'

    response = await api.app_client.post(
        "/v1/events", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("k", ["0", "41", "-3", "1000000000000000000000"])
async def test_k_out_of_range_is_422_naming_the_bounds(api: Api, k: str) -> None:
    for path in ("/v1/users/gA-u1/recommendations", "/v1/popular", "/v1/items/a1/similar"):
        problem = assert_problem(await api.app_client.get(path, params={"k": k}), 422)
        [error] = problem["errors"]
        assert error["loc"] == ["query", "k"]
        if k != "1000000000000000000000":
            assert error["msg"] == f"k must be between 1 and 40, got {k}"


async def test_k_not_a_number_is_422(api: Api) -> None:
    problem = assert_problem(await api.app_client.get("/v1/popular", params={"k": "ten"}), 422)
    assert problem["errors"][0]["loc"] == ["query", "k"] and problem["errors"][0]["type"] == "int_parsing"


async def test_too_many_excluded_items_is_422(api: Api) -> None:
    exclude = [f"i{n}" for n in range(api.settings.serving.max_batch + 1)]
    assert_problem(await api.app_client.get("/v1/popular", params={"exclude": exclude}), 422)


# --- malformed input -------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b'{"user_id": "u",}', b"\xff\xfe", b"nul\x00l"])
async def test_malformed_json_is_400(api: Api, body: bytes) -> None:
    response = await api.app_client.post(
        "/v1/events", content=body, headers={"content-type": "application/json"}
    )
    problem = assert_problem(response, 400)
    assert problem["title"] == "Malformed JSON" and problem["errors"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        ({"content-type": "text/plain"}, "'text/plain'"),
        ({"content-type": "application/x-www-form-urlencoded"}, "'application/x-www-form-urlencoded'"),
        ({"content-type": "application/json", "content-encoding": "gzip"}, "'gzip'"),
    ],
)
async def test_a_body_that_is_not_plain_json_is_415(api: Api, headers: dict[str, str], named: str) -> None:
    event = b'{"user_id": "u1", "item_id": "a1", "type": "view"}'
    response = await api.app_client.post("/v1/events", content=event, headers=headers)
    problem = assert_problem(response, 415)
    assert named in problem["detail"]
    as_json = {"content-type": "application/json; charset=utf-8"}
    assert (await api.app_client.post("/v1/events", content=event, headers=as_json)).status_code == 202
    bodiless = await api.admin.post("/v1/models/v000001/promote", headers={"content-type": "text/plain"})
    assert bodiless.status_code == 200, bodiless.text


FUZZ: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("POST", "/v1/events", {"content-type": "application/json"}, b"[]"),
    ("POST", "/v1/events", {"content-type": "application/json"}, b"null"),
    ("POST", "/v1/events", {"content-type": "application/json"}, b'"text"'),
    ("POST", "/v1/events", {"content-type": "application/json"}, b"12"),
    ("POST", "/v1/events", {"content-type": "application/json"}, b'{"events": {"a": 1}}'),
    ("POST", "/v1/events", {"content-type": "application/json"}, b'{"events": [null, 1, "x"]}'),
    (
        "POST",
        "/v1/events",
        {"content-type": "application/json"},
        b'{"user_id": 1, "item_id": [], "type": {}}',
    ),
    (
        "POST",
        "/v1/events",
        {"content-type": "application/json"},
        b'{"user_id":"u","item_id":"i","type":"view","value":1e999}',
    ),
    (
        "POST",
        "/v1/events",
        {"content-type": "application/json"},
        b'{"user_id":"u","item_id":"i","type":"view","ts":"yesterday"}',
    ),
    (
        "POST",
        "/v1/events",
        {"content-type": "application/json"},
        b'{"user_id":"u","item_id":"i","type":"view","ts":1e300}',
    ),
    (
        "POST",
        "/v1/events",
        {"content-type": "application/json"},
        b'{"user_id":"\\ud800","item_id":"i","type":"view"}',
    ),
    ("POST", "/v1/events", {"content-type": "application/json"}, b"[" * 5000 + b"]" * 5000),
    ("POST", "/v1/events", {"content-type": "text/plain"}, b"user_id=u"),
    ("POST", "/v1/events", {}, None),
    (
        "POST",
        "/v1/feedback",
        {"content-type": "application/json"},
        b'{"user_id":"","item_id":"i","kind":"not_interested"}',
    ),
    ("PUT", "/v1/users/u1", {"content-type": "application/json"}, b'{"attributes": [1, 2]}'),
    ("PUT", "/v1/users/u1", {"content-type": "application/json"}, b'{"timezone": "\\u0000"}'),
    ("PUT", "/v1/users/u1", {"content-type": "application/json"}, b'{"devices": "all"}'),
    (
        "PUT",
        "/v1/items",
        {"content-type": "application/json"},
        b'{"items": [{"item_id": "a1", "price": -1}]}',
    ),
    (
        "PUT",
        "/v1/items",
        {"content-type": "application/json"},
        b'{"items": [{"item_id": "a1", "price": "NaN"}]}',
    ),
    ("GET", "/v1/users/%00/recommendations", {}, None),
    ("GET", "/v1/users/%F0%9F%98%80/recommendations?include_seen=perhaps", {}, None),
    ("GET", "/v1/users/u1/recommendations?k=1.5", {}, None),
    ("GET", "/v1/users/u1/recommendations?category=", {}, None),
    ("GET", "/v1/items/%20/similar?k=3", {}, None),
    ("POST", "/v1/models/..%2F..%2Fetc/promote", {}, None),
    ("GET", "/v1/users//recommendations", {}, None),
]


@pytest.mark.parametrize(("method", "path", "headers", "body"), FUZZ)
async def test_malformed_requests_never_answer_500(
    api: Api, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> None:
    response = await api.admin.request(method, path, content=body, headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_problem(response, response.status_code)


async def test_an_unexpected_error_is_a_logged_problem_500(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_services() -> object:
        raise RuntimeError("a bug")

    api.app.dependency_overrides[get_services] = broken_services
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://recsvc.test") as client:
        with caplog.at_level(logging.ERROR, logger="serving.problems"):
            response = await client.get("/v1/users/u1", headers={"X-API-Key": ADMIN_KEY})
    api.app.dependency_overrides.clear()
    problem = assert_problem(response, 500)
    assert "a bug" not in problem["detail"]  # details stay in the log
    assert any(record.exc_info and "a bug" in str(record.exc_info[1]) for record in caplog.records)
    metrics = (await api.anonymous.get("/metrics")).text
    assert 'route="/v1/users/{user_id}",status="500"' in metrics


# --- request ids -----------------------------------------------------------------------------------


async def test_request_id_is_taken_from_the_caller_or_generated(api: Api) -> None:
    given = await api.app_client.get("/v1/popular", headers={"X-Request-ID": "trace-42.a:b"})
    assert given.headers["x-request-id"] == "trace-42.a:b" and given.json()["request_id"] == "trace-42.a:b"
    for bad in ("x" * 200, "has space", ""):
        response = await api.app_client.get("/v1/popular", headers={"X-Request-ID": bad})
        assert response.headers["x-request-id"] != bad and len(response.headers["x-request-id"]) == 32
    problem = assert_problem(await api.anonymous.get("/v1/popular", headers={"X-Request-ID": "r-1"}), 401)
    assert problem["request_id"] == "r-1"
