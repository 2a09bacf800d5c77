"""User profiles: stored in Redis, validated, readable by admins, forgotten on request."""

from __future__ import annotations

import pytest
from serving_support import Api, assert_problem

pytestmark = pytest.mark.anyio

PROFILE = {
    "attributes": {"tier": "gold", "points": 1200, "locale": "de-DE", "favourite_brand": "Acme"},
    "timezone": "Europe/Berlin",
    "push_consent": True,
    "devices": [
        {"device_id": "phone", "platform": "ios", "token": "apns-1"},
        {"device_id": "tablet", "platform": "android", "token": "fcm-1"},
    ],
}


async def test_put_answers_the_stored_profile_and_admins_read_it(api: Api) -> None:
    response = await api.app_client.put("/v1/users/u1", json=PROFILE)
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored == {"user_id": "u1", **PROFILE}
    read = await api.admin.get("/v1/users/u1")
    assert read.status_code == 200 and read.json() == stored


async def test_fields_left_out_are_kept_and_devices_merge(api: Api) -> None:
    await api.app_client.put("/v1/users/u2", json=PROFILE)
    update = {
        "push_consent": False,
        "devices": [
            {"device_id": "phone", "platform": "ios", "token": "apns-2"},
            {"device_id": "tablet", "token": None},
        ],
    }
    stored = (await api.app_client.put("/v1/users/u2", json=update)).json()
    assert stored["push_consent"] is False and stored["timezone"] == "Europe/Berlin"
    assert stored["attributes"] == PROFILE["attributes"]
    assert stored["devices"] == [{"device_id": "phone", "platform": "ios", "token": "apns-2"}]

    await api.app_client.put("/v1/users/u2b", json=PROFILE)
    cleared = (await api.app_client.put("/v1/users/u2b", json={"timezone": None, "attributes": None})).json()
    assert cleared["timezone"] is None and cleared["attributes"] == {}
    assert cleared["push_consent"] is True and cleared["devices"] == PROFILE["devices"]  # kept


async def test_a_new_user_with_an_empty_body_gets_the_defaults(api: Api) -> None:
    stored = (await api.app_client.put("/v1/users/fresh", json={})).json()
    assert stored == {
        "user_id": "fresh",
        "attributes": {},
        "timezone": None,
        "push_consent": False,
        "devices": [],
    }
    read = await api.admin.get("/v1/users/fresh")  # stored, though empty: it counts as a profile
    assert read.status_code == 200 and read.json() == stored
    await api.app_client.put("/v1/users/emptied", json={"attributes": {"tier": "gold"}})
    emptied = (await api.app_client.put("/v1/users/emptied", json={"attributes": None})).json()
    assert (await api.admin.get("/v1/users/emptied")).json() == emptied


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, ["body", "timezone"]),
        ({"timezone": "../../etc/passwd"}, ["body", "timezone"]),
        (
            {"devices": [{"device_id": "d", "platform": "symbian", "token": "t"}]},
            ["body", "devices", 0, "platform"],
        ),
        ({"devices": [{"device_id": "d", "token": "t"}]}, ["body", "devices", 0]),
        ({"attributes": {"points": -1}}, ["body", "attributes", "points"]),
        ({"push_consent": "maybe"}, ["body", "push_consent"]),
        ({"push_consent": None}, ["body", "push_consent"]),  # consent is stated, never cleared
        ({"nickname": "x"}, ["body", "nickname"]),
    ],
)
async def test_invalid_profiles_are_422(api: Api, body: dict[str, object], loc: list[object]) -> None:
    problem = assert_problem(await api.app_client.put("/v1/users/u3", json=body), 422)
    assert [error["loc"] for error in problem["errors"]] == [loc]


async def test_only_admins_read_profiles(api: Api) -> None:
    await api.app_client.put("/v1/users/u4", json=PROFILE)
    assert_problem(await api.app_client.get("/v1/users/u4"), 403)


async def test_delete_forgets_the_profile(api: Api) -> None:
    await api.app_client.put("/v1/users/u5", json=PROFILE)
    assert (await api.app_client.delete("/v1/users/u5")).status_code == 204
    assert_problem(await api.admin.get("/v1/users/u5"), 404, detail="u5")
    assert (await api.app_client.delete("/v1/users/u5")).status_code == 204  # idempotent
