"""User profiles (attributes, time zone, push consent and tokens) and forgetting a user."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from recsvc.errors import NotFoundError
from serving.deps import AdminKey, AppKey, ServicesDep, UserIdPath
from serving.openapi import AUTH, problems
from serving.schemas import DevicePublic, ProfilePublic, ProfileUpdate

router = APIRouter(prefix="/v1/users", tags=["users"])


@router.put(
    "/{user_id:path}",
    response_model=ProfilePublic,
    summary="Store a user's profile",
    responses=problems(400, *AUTH, 413, 415, 422, 503),
)
async def put_profile(
    _: AppKey, user_id: UserIdPath, body: ProfileUpdate, services: ServicesDep
) -> ProfilePublic:
    """Store the fields given; answers the whole stored profile.

    Fields left out keep their stored value, `attributes` is replaced whole, and devices are
    added or updated by `device_id` (a device with `token: null` is removed), so each of a
    user's devices registers its own token without knowing the others.
    """
    fields: dict[str, Any] = body.model_dump(exclude_unset=True, exclude={"devices"})
    if body.devices is not None:
        fields["devices"] = {
            device.device_id: None
            if device.token is None
            else {"token": device.token, "platform": device.platform}
            for device in body.devices
        }
    with services.guarded("put_profile"):
        await services.store.put_profile(user_id, fields)
        stored = await services.store.get_profile(user_id)
    return _public(user_id, stored)


@router.get(
    "/{user_id:path}",
    response_model=ProfilePublic,
    summary="Read a user's profile (admin)",
    responses=problems(*AUTH, 404, 422, 503),
)
async def get_profile(_: AdminKey, user_id: UserIdPath, services: ServicesDep) -> ProfilePublic:
    """The stored profile; 404 when the user has none (or was forgotten)."""
    with services.guarded("get_profile"):
        stored = await services.store.get_profile(user_id)
    if stored is None:
        raise NotFoundError(f"no profile for user {user_id!r}", user_id=user_id)
    return _public(user_id, stored)


@router.delete(
    "/{user_id:path}",
    status_code=204,
    response_class=Response,
    summary="Forget a user",
    responses=problems(*AUTH, 422, 503),
)
async def forget_user(_: AppKey, user_id: UserIdPath, services: ServicesDep) -> Response:
    """Delete the user's profile, tokens, history and dismissals; from then on the user is unknown
    everywhere (recommendations treat them as new, and later trainings leave them out)."""
    with services.guarded("forget_user"):
        await services.store.forget_user(user_id)
    return Response(status_code=204)


def _public(user_id: str, stored: dict[str, Any] | None) -> ProfilePublic:
    """A stored profile, or the defaults for a user nothing was stored for yet."""
    stored = stored or {}
    devices = stored.get("devices") or {}
    return ProfilePublic(
        user_id=user_id,
        attributes=stored.get("attributes") or {},
        timezone=stored.get("timezone"),
        push_consent=bool(stored.get("push_consent", False)),
        devices=[
            DevicePublic(device_id=device_id, platform=device.get("platform"), token=device["token"])
            for device_id, device in sorted(devices.items())
        ],
    )
