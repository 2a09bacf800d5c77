"""Model versions over the API, and hot swaps under load without a failed request."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
from serving_support import Api, assert_problem, open_api
from shop import ManualClock

from recsvc.config import Settings
from recsvc.registry import Registry
from serving.app import served_model
from serving.deps import Services

pytestmark = pytest.mark.anyio

USERS = [f"g{group}-u{n}" for group in "AB" for n in range(10)] + ["newcomer"]


async def test_list_models_with_current_serving_and_metrics(api: Api, second_version: str) -> None:
    response = await api.admin.get("/v1/models")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["current"] == "v000001" and body["serving"] == "v000001"
    assert [model["version"] for model in body["versions"]] == ["v000001", second_version]
    first, second = body["versions"]
    assert first["current"] and first["serving"] and not second["current"] and not second["serving"]
    assert "ndcg@10" in first["metrics"]["model"] and "ndcg@10" in first["metrics"]["popularity"]


async def test_a_broken_version_is_listed_with_why_instead_of_failing_the_list(
    api: Api, second_version: str
) -> None:
    """An empty version folder (or a corrupt manifest) used to make the listing answer 500."""
    (api.registry.root / "v000003").mkdir()
    (api.registry.path(second_version) / "manifest.json").write_text("{not json")

    response = await api.admin.get("/v1/models")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["current"] == body["serving"] == "v000001"
    first, second, empty = body["versions"]
    assert first["version"] == "v000001" and first["error"] is None and first["created_at"]
    assert "ndcg@10" in first["metrics"]["model"]
    assert (second["version"], empty["version"]) == (second_version, "v000003")
    assert "unreadable manifest" in second["error"]
    assert empty["error"].endswith("v000003/manifest.json: missing file")
    for broken in (second, empty):
        assert broken["created_at"] is None and broken["metrics"] == {}
        assert not broken["current"] and not broken["serving"]
    assert_problem(await api.admin.post("/v1/models/v000003/promote"), 409, detail="v000003")


async def test_listing_a_registry_that_does_not_exist_creates_nothing(
    shop_settings: Settings, tmp_path: Path, clock: ManualClock
) -> None:
    missing = tmp_path / "no-registry-here"
    async for api in open_api(shop_settings, Registry(missing), clock):
        response = await api.admin.get("/v1/models")
        assert response.status_code == 200, response.text
        assert response.json() == {"current": None, "serving": None, "versions": []}
    assert not missing.exists()


async def test_promote_unknown_or_malformed_version(api: Api) -> None:
    assert_problem(await api.admin.post("/v1/models/v999999/promote"), 404, detail="v999999")
    assert_problem(await api.admin.post("/v1/models/latest/promote"), 422)
    assert_problem(await api.app_client.post("/v1/models/v000001/promote"), 403)


async def under_load(
    api: Api, swap: Callable[[], Awaitable[object]], *, concurrency: int = 32, at_least: int = 256
) -> Counter[str]:
    """Recommendation requests, `concurrency` in flight at any time, while `swap` runs.

    The swap starts once a quarter of `at_least` requests are answered; requests go on until
    the swap is done, every client sent a few more after it, and `at_least` were answered.
    Every request must succeed; returns how many answers each model version gave.
    """
    versions: Counter[str] = Counter()
    failures: list[str] = []
    swap_may_start = anyio.Event()
    swapped = anyio.Event()

    async def client(offset: int) -> None:
        after_swap = 0
        n = offset
        while after_swap < 3 or sum(versions.values()) + len(failures) < at_least:
            user = USERS[n % len(USERS)]
            n += concurrency
            response = await api.app_client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
            if response.status_code != 200 or len(response.json()["items"]) != 5:
                failures.append(f"{response.status_code} {response.text}")
            else:
                versions[response.json()["model_version"]] += 1
            if sum(versions.values()) >= at_least // 4:
                swap_may_start.set()
            after_swap += swapped.is_set()

    async def swapper() -> None:
        await swap_may_start.wait()
        await swap()
        swapped.set()

    with anyio.fail_after(60):
        await asyncio.gather(*(client(offset) for offset in range(concurrency)), swapper())
    assert not failures, failures[:3]
    assert sum(versions.values()) >= at_least
    return versions


async def test_promote_through_the_api_swaps_under_load(api: Api, second_version: str) -> None:
    promoted: list[dict[str, str]] = []

    async def promote() -> None:
        response = await api.admin.post(f"/v1/models/{second_version}/promote")
        assert response.status_code == 200, response.text
        promoted.append(response.json())

    versions = await under_load(api, promote)
    assert promoted == [{"version": second_version, "previous": "v000001", "serving": second_version}]
    assert set(versions) == {"v000001", second_version}
    assert api.registry.current() == second_version
    after = await api.app_client.get("/v1/users/gA-u1/recommendations")
    assert after.json()["model_version"] == second_version
    metrics = (await api.anonymous.get("/metrics")).text
    assert f'recsvc_model_version_info{{version="{second_version}"}} 1.0' in metrics
    assert 'recsvc_model_version_info{version="v000001"}' not in metrics


async def test_registry_promotion_is_picked_up_by_polling_under_load(api: Api, second_version: str) -> None:
    services: Services = api.app.state.services

    async def promote_and_poll() -> None:
        await asyncio.to_thread(api.registry.promote, second_version)
        assert await services.models.refresh()  # the watcher's run-once step

    versions = await under_load(api, promote_and_poll)
    assert versions["v000001"] > 0 and versions[second_version] > 0
    model = served_model(api.app)
    assert model is not None and model.version == second_version
    assert not await services.models.refresh()  # nothing new


async def test_the_lifespan_watcher_polls_the_registry(
    shop_settings: Settings, registry: Registry, clock: ManualClock, second_version: str
) -> None:
    fast = shop_settings.model_copy(
        update={"serving": shop_settings.serving.model_copy(update={"model_poll_seconds": 0.01})}
    )
    async for api in open_api(fast, registry, clock):
        assert (await api.anonymous.get("/readyz")).json()["model_version"] == "v000001"
        registry.promote(second_version)
        with anyio.fail_after(10):
            while (model := served_model(api.app)) is None or model.version != second_version:
                await anyio.sleep(0.01)


async def test_a_version_that_fails_to_load_is_not_served(api: Api, second_version: str) -> None:
    factors = api.registry.path(second_version) / "item_factors.npy"
    intact = factors.read_bytes()
    factors.write_bytes(b"broken")
    problem = assert_problem(await api.admin.post(f"/v1/models/{second_version}/promote"), 409)
    assert second_version in problem["detail"]
    assert api.registry.current() == "v000001"

    factors.write_bytes(intact)
    api.registry.promote(second_version)  # promoted behind the server's back...
    factors.write_bytes(b"broken")  # ...and damaged on disk before the server loads it
    services: Services = api.app.state.services
    assert not await services.models.refresh()
    response = await api.app_client.get("/v1/users/gA-u1/recommendations")
    assert response.status_code == 200 and response.json()["model_version"] == "v000001"


async def test_without_a_promoted_model_recommendations_are_503(
    shop_settings: Settings, registry: Registry, clock: ManualClock
) -> None:
    async for api in open_api(shop_settings, registry, clock):
        problem = assert_problem(await api.app_client.get("/v1/users/u1/recommendations"), 503)
        assert "no model promoted yet" in problem["detail"]
        assert problem["type"] == "urn:recsvc:problem:service-unavailable"
        assert "Retry-After" in (await api.app_client.get("/v1/popular")).headers
        assert_problem(await api.anonymous.get("/readyz"), 503, detail="no model")
        # events are still accepted: they do not need the model
        event = {"user_id": "u1", "item_id": "a1", "type": "view"}
        assert (await api.app_client.post("/v1/events", json=event)).status_code == 202
