"""Reading recommendations through the API, with the real model and a real Redis."""

from __future__ import annotations

from typing import Any

import pytest
from serving_support import Api, category_count
from shop import items_of

pytestmark = pytest.mark.anyio

ITEM_FIELDS = {"item_id", "score", "title", "category", "price", "url", "image_url"}


async def recommend(api: Api, user_id: str, **params: Any) -> dict[str, Any]:
    response = await api.app_client.get(f"/v1/users/{user_id}/recommendations", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def post_events(api: Api, user_id: str, items: list[str], *types: str) -> None:
    events = [{"user_id": user_id, "item_id": item, "type": kind} for item in items for kind in types]
    response = await api.app_client.post("/v1/events", json={"events": events})
    assert response.status_code == 202, response.text


async def test_known_user_gets_their_own_category(api: Api) -> None:
    response = await api.app_client.get("/v1/users/gA-u3/recommendations", params={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user_id"] == "gA-u3" and body["known_user"] is True
    assert body["strategy"] == "personalized" and body["realtime"] is True
    assert body["model_version"] == "v000001"
    assert len(body["items"]) == 5 and category_count(body["items"], "A") >= 4, body["items"]
    assert body["request_id"] == response.headers["x-request-id"]
    first = body["items"][0]
    assert set(first) == ITEM_FIELDS
    assert first["title"] == f"Item {first['item_id']}"
    assert first["url"] == f"https://shop.example/p/{first['item_id']}"


async def test_default_k_category_and_exclude(api: Api) -> None:
    body = await recommend(api, "gB-u1")
    assert len(body["items"]) == api.settings.serving.default_k
    only_a = await recommend(api, "gB-u1", category="A", k=5)
    assert len(only_a["items"]) == 5 and category_count(only_a["items"], "A") == 5
    top = [item["item_id"] for item in body["items"][:3]]
    without = await recommend(api, "gB-u1", exclude=top)
    assert not set(top) & {item["item_id"] for item in without["items"]}


async def test_a_bought_item_stays_out_after_more_events_than_the_history_keeps(api: Api) -> None:
    top = (await recommend(api, "gB-u2", k=1))["items"][0]["item_id"]
    await post_events(api, "gB-u2", [top], "purchase")
    others = sorted(items_of("B") - {top})
    views = [others[n % len(others)] for n in range(api.settings.serving.history_max)]
    for start in range(0, len(views), api.settings.serving.max_batch):
        await post_events(api, "gB-u2", views[start : start + api.settings.serving.max_batch], "view")

    body = await recommend(api, "gB-u2", k=40, include_seen="true")
    assert body["strategy"] == "realtime"
    assert top not in {item["item_id"] for item in body["items"]}


async def test_seen_items_come_back_only_when_asked(api: Api) -> None:
    default = await recommend(api, "gA-u4", k=40)
    seen = await recommend(api, "gA-u4", k=40, include_seen="true")
    assert len(seen["items"]) > len(default["items"])
    assert "shared" in {item["item_id"] for item in seen["items"]}
    assert "shared" not in {item["item_id"] for item in default["items"]}


async def test_unknown_user_gets_popular_then_realtime_after_events(api: Api) -> None:
    body = await recommend(api, "newcomer", k=5)
    assert body["known_user"] is False and body["strategy"] == "popular" and body["realtime"] is True
    assert len(body["items"]) == 5

    await post_events(api, "newcomer", ["b1", "b2", "b3"], "view", "add_to_cart")
    after = await recommend(api, "newcomer", k=5)
    assert after["known_user"] is False and after["strategy"] == "realtime"
    assert category_count(after["items"], "B") >= 4, after["items"]
    assert not {"b1", "b2", "b3"} & {item["item_id"] for item in after["items"]}


async def test_events_of_another_category_move_a_user_in_real_time(api: Api) -> None:
    before = await recommend(api, "gA-u6", k=10)
    assert before["strategy"] == "personalized"
    b_items = sorted(items_of("B"))[:6]
    await post_events(api, "gA-u6", b_items, "view", "purchase")
    after = await recommend(api, "gA-u6", k=10)
    assert after["strategy"] == "realtime" and after["known_user"] is True
    assert category_count(after["items"], "B") > category_count(before["items"], "B"), after["items"]
    assert first_rank(after["items"], "B") < first_rank(before["items"], "B"), after["items"]
    assert not set(b_items) & {item["item_id"] for item in after["items"]}  # seen and bought


def first_rank(items: list[dict[str, Any]], category: str) -> int:
    return next((rank for rank, item in enumerate(items) if item["category"] == category), len(items))


async def test_not_interested_item_never_returns(api: Api) -> None:
    before = await recommend(api, "gA-u6", k=5)
    dismissed = before["items"][0]["item_id"]
    response = await api.app_client.post(
        "/v1/feedback", json={"user_id": "gA-u6", "item_id": dismissed, "kind": "not_interested"}
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"user_id": "gA-u6", "item_id": dismissed, "kind": "not_interested"}
    for params in ({"k": 40}, {"k": 40, "include_seen": "true"}, {"k": 40, "category": "A"}):
        body = await recommend(api, "gA-u6", **params)
        assert dismissed not in {item["item_id"] for item in body["items"]}, params
    other = await recommend(api, "gA-u7", k=40, include_seen="true")
    assert dismissed in {item["item_id"] for item in other["items"]}  # only for that user


async def test_unavailable_item_is_never_recommended(api: Api) -> None:
    top = (await recommend(api, "gA-u8", k=3))["items"][0]["item_id"]
    response = await api.admin.put("/v1/items", json={"items": [{"item_id": top, "available": False}]})
    assert response.status_code == 200, response.text
    assert response.json() == {"updated": 1}

    answers = [await recommend(api, user, k=40, include_seen="true") for user in ("gA-u8", "gA-u9", "nobody")]
    answers.append((await api.app_client.get("/v1/popular", params={"k": 40})).json())
    answers.append((await api.app_client.get("/v1/items/a1/similar", params={"k": 40})).json())
    for body in answers:
        assert top not in {item["item_id"] for item in body["items"]}, body

    await api.admin.put("/v1/items", json={"items": [{"item_id": top, "available": True, "price": 1.5}]})
    again = await recommend(api, "gA-u8", k=3)
    assert again["items"][0]["item_id"] == top and again["items"][0]["price"] == 1.5


async def test_forgotten_user_is_unknown_everywhere(api: Api) -> None:
    await api.app_client.put("/v1/users/gA-u10", json={"timezone": "Europe/Berlin"})
    await post_events(api, "gA-u10", ["b1", "b2"], "view")
    assert (await recommend(api, "gA-u10"))["strategy"] == "realtime"

    response = await api.app_client.delete("/v1/users/gA-u10")
    assert response.status_code == 204 and response.content == b""
    body = await recommend(api, "gA-u10", k=5)
    assert body["known_user"] is False and body["strategy"] == "popular"
    assert (await api.admin.get("/v1/users/gA-u10")).status_code == 404

    await post_events(api, "gA-u10", ["b3"], "view")  # what they do afterwards is new data
    again = await recommend(api, "gA-u10", k=5)
    assert again["known_user"] is False and again["strategy"] == "realtime"


async def test_similar_items(api: Api) -> None:
    response = await api.app_client.get("/v1/items/b4/similar", params={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["item_id"] == "b4" and body["model_version"] == "v000001" and body["realtime"] is True
    ids = [item["item_id"] for item in body["items"]]
    assert len(ids) == 5 and "b4" not in ids and category_count(body["items"], "B") >= 4, ids
    in_a = await api.app_client.get("/v1/items/b4/similar", params={"k": 3, "category": "A"})
    assert category_count(in_a.json()["items"], "A") == 3


async def test_popular_uses_trending_events(api: Api) -> None:
    response = await api.app_client.get("/v1/popular", params={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["realtime"] is True and len(body["items"]) == 5 and body["category"] is None

    await post_events(api, "someone", ["b17"], "purchase")
    trending = (await api.app_client.get("/v1/popular", params={"k": 5})).json()
    assert trending["items"][0]["item_id"] == "b17"
    in_a = (await api.app_client.get("/v1/popular", params={"k": 5, "category": "A"})).json()
    assert in_a["category"] == "A" and category_count(in_a["items"], "A") == 5
    excluded = (await api.app_client.get("/v1/popular", params={"k": 5, "exclude": "b17"})).json()
    assert "b17" not in {item["item_id"] for item in excluded["items"]}


async def test_ids_with_slashes_are_reached_percent_encoded(api: Api) -> None:
    item = min(items_of("A"))
    await post_events(api, "shop/u1", [item], "purchase")

    body = await recommend(api, "shop%2Fu1", k=5)
    assert body["user_id"] == "shop/u1" and body["strategy"] == "realtime"
    assert item not in {entry["item_id"] for entry in body["items"]}
    stored = await api.app_client.put("/v1/users/shop%2Fu1", json={"timezone": "Asia/Tokyo"})
    assert stored.status_code == 200 and stored.json()["user_id"] == "shop/u1"
    assert (await api.admin.get("/v1/users/shop%2Fu1")).json()["timezone"] == "Asia/Tokyo"
    assert (await api.app_client.delete("/v1/users/shop%2Fu1")).status_code == 204
    similar = await api.app_client.get("/v1/items/sku%2F123/similar")
    assert similar.status_code == 404 and "'sku/123'" in similar.json()["detail"]
