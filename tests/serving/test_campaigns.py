"""The campaign admin routes: validation as problem+json, the life cycle, the statistics."""

from __future__ import annotations

import json
from typing import Any

import pytest
from serving_support import Api, assert_problem

from notifier import messages, stats
from notifier.campaign import MAX_WINDOW_DAYS
from recsvc.keys import Keys

pytestmark = pytest.mark.anyio

CAMPAIGN: dict[str, Any] = {
    "id": "weekly",
    "name": "Weekly picks",
    "segment": {"push_consent": True, "control_percent": 10},
    "schedule": {"kind": "cron", "cron": "0 10 * * mon", "timezone": "Europe/Berlin"},
    "content": {"title": "{{ item.title }}", "body": "{{ items | length }} picks for you"},
}


async def test_a_campaign_goes_through_its_life_cycle(api: Api) -> None:
    created = await api.admin.post("/v1/campaigns", json=CAMPAIGN)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "active" and created.json()["id"] == "weekly"

    listed = await api.admin.get("/v1/campaigns")
    assert [campaign["id"] for campaign in listed.json()] == ["weekly"]

    spec = {key: value for key, value in CAMPAIGN.items() if key != "id"}
    replaced = await api.admin.put("/v1/campaigns/weekly", json={**spec, "name": "Weekly picks v2"})
    assert replaced.status_code == 200 and replaced.json()["name"] == "Weekly picks v2"

    paused = await api.admin.post("/v1/campaigns/weekly/pause")
    assert paused.json()["status"] == "paused"
    assert (await api.admin.get("/v1/campaigns/weekly")).json()["status"] == "paused"
    resumed = await api.admin.post("/v1/campaigns/weekly/resume")
    assert resumed.json()["status"] == "active"

    deleted = await api.admin.delete("/v1/campaigns/weekly")
    assert deleted.status_code == 204
    assert_problem(await api.admin.get("/v1/campaigns/weekly"), 404, detail="weekly")


async def test_invalid_campaigns_are_problems_that_say_what_is_wrong(api: Api) -> None:
    unknown_field = {**CAMPAIGN, "content": {"title": "{{ item.colour }}", "body": "b"}}
    body = assert_problem(await api.admin.post("/v1/campaigns", json=unknown_field), 400, detail="colour")
    assert body["detail"].startswith("content.title")

    bad_cron = {**CAMPAIGN, "schedule": {"kind": "cron", "cron": "every monday"}}
    problem = assert_problem(await api.admin.post("/v1/campaigns", json=bad_cron), 422)
    assert any("cron" in str(error["loc"]) for error in problem["errors"]), problem["errors"]

    bad_id = {**CAMPAIGN, "id": "Weekly Picks"}
    assert_problem(await api.admin.post("/v1/campaigns", json=bad_id), 422)

    assert (await api.admin.post("/v1/campaigns", json=CAMPAIGN)).status_code == 201
    assert_problem(await api.admin.post("/v1/campaigns", json=CAMPAIGN), 409, detail="already exists")
    assert_problem(await api.admin.post("/v1/campaigns/nope/pause"), 404)


async def test_campaigns_are_for_admins_only(api: Api) -> None:
    assert_problem(await api.app_client.post("/v1/campaigns", json=CAMPAIGN), 403)
    assert_problem(await api.app_client.get("/v1/campaigns"), 403)
    assert_problem(await api.anonymous.get("/v1/campaigns"), 401)


async def test_stats_add_up_runs_and_keep_the_control_group_apart(api: Api) -> None:
    assert (await api.admin.post("/v1/campaigns", json=CAMPAIGN)).status_code == 201
    empty = (await api.admin.get("/v1/campaigns/weekly/stats")).json()
    assert empty["total"]["sent"] == 0 and empty["runs"] == []

    keys = Keys(api.settings.redis.prefix)
    redis = api.app.state.services.redis
    runs = {
        "20240201T1000Z": {stats.TARGETED: 9, stats.SENT: 8, stats.suppressed(stats.DAILY_CAP): 1},
        "20240208T1000Z": {
            stats.TARGETED: 11,
            stats.SENT: 10,
            stats.CONVERTED: 3,
            stats.control(stats.TARGETED): 2,
        },
    }
    async with redis.pipeline(transaction=True) as pipe:
        for started, (run_id, counts) in enumerate(runs.items()):
            pipe.zadd(keys.campaign_runs("weekly"), {run_id: float(started)})
            pipe.hset(keys.campaign_run("weekly", run_id), "status", "done")
            stats.stage_counts(pipe, keys, "weekly", run_id, counts)
        await pipe.execute()

    report = (await api.admin.get("/v1/campaigns/weekly/stats")).json()
    assert report["total"]["targeted"] == 20 and report["total"]["sent"] == 18
    assert report["total"]["suppressed"] == {"daily_cap": 1}
    assert report["total"]["control"] == {"targeted": 2, "converted": 0}
    assert report["total"]["conversion_rate"] == pytest.approx(3 / 20)
    assert [run["run_id"] for run in report["runs"]] == list(runs)
    assert [run["sent"] for run in report["runs"]] == [8, 10]
    assert report["runs"][0]["status"] == "done"


NOW_CAMPAIGN: dict[str, Any] = {
    "id": "now",
    "name": "Right now",
    "segment": {"push_consent": True},
    "content": {"title": "{{ item.title }}", "body": "{{ items | length }} picks"},
    "rules": {"quiet_start": "00:00", "quiet_end": "00:00"},
}
PHONE = [{"device_id": "phone", "platform": "android", "token": "t-1"}]


async def test_preview_and_audience_show_what_a_run_would_do(api: Api) -> None:
    for user in ("gA-u1", "gA-u2", "gB-u1"):
        profile = {"push_consent": user != "gB-u1", "devices": PHONE}
        assert (await api.app_client.put(f"/v1/users/{user}", json=profile)).status_code == 200
    assert (await api.admin.post("/v1/campaigns", json=NOW_CAMPAIGN)).status_code == 201

    preview = (await api.admin.get("/v1/campaigns/now/preview", params={"user_id": "gA-u1"})).json()
    assert preview["group"] == "treatment" and preview["reason"] is None
    assert preview["title"] == preview["items"][0]["title"] and preview["body"] == "3 picks"
    assert preview["items"][0]["category"] == "A"
    outsider = (await api.admin.get("/v1/campaigns/now/preview", params={"user_id": "gB-u1"})).json()
    assert outsider["group"] == "not_in_segment" and outsider["title"] is None

    audience = (await api.admin.get("/v1/campaigns/now/audience")).json()
    assert (audience["population"], audience["matching"], audience["reachable"]) == (3, 2, 2)
    unsaved = await api.admin.post("/v1/campaigns/audience", json={"push_consent": False})
    assert unsaved.status_code == 200 and unsaved.json()["matching"] == 1
    assert_problem(await api.admin.get("/v1/campaigns/now/preview"), 422)


async def test_opens_and_clicks_count_once_and_become_events(api: Api) -> None:
    assert (
        await api.app_client.put("/v1/users/gA-u1", json={"push_consent": True, "devices": PHONE})
    ).is_success
    await api.admin.post("/v1/campaigns", json=NOW_CAMPAIGN)
    services = api.app.state.services
    campaign = await services.campaigns.get("now")
    assert (await services.runner.run(campaign, "r1")).messages == 1
    message_id = messages.message_id("now", "r1", "gA-u1")
    key = Keys(api.settings.redis.prefix).message(message_id)
    assert_problem(await api.app_client.post(f"/v1/push/{message_id}/opened"), 404)  # not sent yet
    await services.redis.hset(key, "status", messages.SENT)  # as a worker does once a provider took it

    opened = await api.app_client.post(f"/v1/push/{message_id}/opened")
    assert opened.status_code == 200 and opened.json()["first"] is True
    again = await api.app_client.post(f"/v1/push/{message_id}/opened")
    assert again.json()["first"] is False
    item = await services.redis.hget(key, "items")
    second_item = json.loads(item)[1]
    clicked = await api.app_client.post(f"/v1/push/{message_id}/clicked", json={"item_id": second_item})
    assert clicked.json()["clicked"] is True

    report = (await api.admin.get("/v1/campaigns/now/stats")).json()["total"]
    assert (report["sent"], report["opened"], report["clicked"]) == (1, 1, 1)
    state = await services.store.user_state("gA-u1")
    assert [(event.type, event.item_id) for event in state.recent[:2]] == [
        ("push_click", second_item),
        ("push_open", json.loads(item)[0]),
    ]

    assert_problem(await api.app_client.post(f"/v1/push/{'0' * 24}/opened"), 404)
    assert_problem(await api.app_client.post("/v1/push/not-an-id/opened"), 422)
    assert_problem(
        await api.app_client.post(f"/v1/push/{message_id}/clicked", json={"item_id": "not-pushed"}), 400
    )


async def test_run_now_queues_a_run_that_the_scheduler_executes(api: Api) -> None:
    assert (
        await api.app_client.put("/v1/users/gA-u1", json={"push_consent": True, "devices": PHONE})
    ).is_success
    await api.admin.post("/v1/campaigns", json=NOW_CAMPAIGN)
    queued = await api.admin.post("/v1/campaigns/now/run")
    assert queued.status_code == 202, queued.text
    run_id = queued.json()["run_id"]
    runner = api.app.state.services.runner
    assert await runner.unfinished_runs() == [("now", run_id)]
    assert (await api.admin.get("/v1/campaigns/now/stats")).json()["runs"][0]["status"] == "running"

    campaign = await api.app.state.services.campaigns.get("now")
    assert (await runner.run(campaign, run_id)).messages == 1  # what the scheduler's resume job does
    assert await runner.unfinished_runs() == []
    assert (await api.admin.get("/v1/campaigns/now/stats")).json()["total"]["sent"] == 1

    await api.admin.post("/v1/campaigns/now/pause")
    assert_problem(await api.admin.post("/v1/campaigns/now/run"), 409, detail="paused")
    assert_problem(await api.admin.post("/v1/campaigns/nope/run"), 404)


@pytest.mark.parametrize(
    "window",
    ["active_within_days", "inactive_for_days", "purchased_within_days", "viewed_not_bought_within_days"],
)
async def test_segment_windows_past_a_century_are_invalid_not_a_crash(api: Api, window: str) -> None:
    """Found by the API fuzz: `{"active_within_days": 1e9}` overflowed `timedelta` in the segment
    checks and answered 500; a look-back is now at most `MAX_WINDOW_DAYS`."""
    assert (await api.app_client.put("/v1/users/gA-u1", json={"push_consent": True})).status_code == 200
    problem = assert_problem(await api.admin.post("/v1/campaigns/audience", json={window: 1e9}), 422)
    assert problem["errors"][0]["loc"] == ["body", window], problem["errors"]
    longest = await api.admin.post("/v1/campaigns/audience", json={window: MAX_WINDOW_DAYS})
    assert longest.status_code == 200, longest.text
    too_far = {**CAMPAIGN, "segment": {window: 1e9}}
    assert_problem(await api.admin.post("/v1/campaigns", json=too_far), 422)


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        ({"title": "{{ item.title | nosuchfilter }}"}, "nosuchfilter"),
        ({"title": "{{ x is nosuchtest }}"}, "nosuchtest"),
        ({"title": "{{ item.price is nosuchtest }}"}, "nosuchtest"),
        ({"title": "{{ 'x' * 10**9 }}"}, "would repeat"),
        ({"body": "{{ 'ab' * 2048 }}!"}, "at most 4096"),
    ],
)
async def test_a_template_that_cannot_render_is_a_400_naming_it(
    api: Api, content: dict[str, str], detail: str
) -> None:
    """Found by the API audit: unknown filters and tests answered 500, and `'x' * 10**9` took 23 s
    and 1.3 GB before it was saved."""
    broken = {**CAMPAIGN, "content": {**CAMPAIGN["content"], **content}}
    problem = assert_problem(await api.admin.post("/v1/campaigns", json=broken), 400, detail=detail)
    assert "| default(...)" not in problem["detail"]
    assert (await api.admin.get("/v1/campaigns")).json() == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"schedule": {"kind": "local_time", "at": "18:30", "weekdays": []}}, "weekdays"),
        ({"schedule": {"kind": "once", "at": "9999-12-31T23:59:59", "timezone": "Pacific/Kiritimati"}}, "at"),
        ({"schedule": {"kind": "interval", "every_minutes": 1e12}}, "every_minutes"),
        ({"schedule": {"kind": "interval", "every_minutes": 0.0001}}, "every_minutes"),
        (
            {"schedule": None, "trigger": {"event": "add_to_cart", "delay_minutes": 1e308}},
            "delay_minutes",
        ),
    ],
)
async def test_a_schedule_the_scheduler_cannot_follow_is_a_422(
    api: Api, changes: dict[str, Any], field: str
) -> None:
    """Found by the API audit: each was saved (201), then failed every preview or scheduler round."""
    problem = assert_problem(await api.admin.post("/v1/campaigns", json={**CAMPAIGN, **changes}), 422)
    assert any(error["loc"][-1] == field for error in problem["errors"]), problem["errors"]


async def test_a_template_may_do_arithmetic_on_a_numeric_attribute(api: Api) -> None:
    """Found by the API audit: the save-time check's sample user had `points` as a string."""
    profile = {"push_consent": True, "devices": PHONE, "attributes": {"points": 1200}}
    assert (await api.app_client.put("/v1/users/gA-u1", json=profile)).status_code == 200
    content = {"title": "{{ item.title }}", "body": "{{ user.points + 1 }} points"}
    created = await api.admin.post("/v1/campaigns", json={**NOW_CAMPAIGN, "content": content})
    assert created.status_code == 201, created.text
    preview = await api.admin.get("/v1/campaigns/now/preview", params={"user_id": "gA-u1"})
    assert preview.json()["body"] == "1201 points"


async def test_a_preview_user_id_over_the_id_limit_is_a_422(api: Api) -> None:
    """Found by the API audit: every other route refuses ids over `[events] max_id_length`."""
    assert (await api.admin.post("/v1/campaigns", json=NOW_CAMPAIGN)).status_code == 201
    limit = api.settings.events.max_id_length
    problem = assert_problem(
        await api.admin.get("/v1/campaigns/now/preview", params={"user_id": "u" * (limit + 1)}), 422
    )
    assert problem["errors"][0]["loc"] == ["query", "user_id"], problem["errors"]
    longest = await api.admin.get("/v1/campaigns/now/preview", params={"user_id": "u" * limit})
    assert longest.status_code == 200, longest.text
