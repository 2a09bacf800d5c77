"""Opens and clicks of push messages, reported by the app (the tracking logic is the notifier's).

The app reads the message id from the push's data payload (`message_id`) and reports what the
user did with it. Each counts once per message in the campaign's statistics and becomes a
training event (`[notifier.tracking]`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import ConfigDict

from serving.deps import AppKey, ServicesDep
from serving.openapi import AUTH, problems
from serving.schemas import ExternalId, Schema

router = APIRouter(prefix="/v1/push", tags=["push"])

MessageId = Annotated[str, Path(pattern=r"^[0-9a-f]{24}$", examples=["5f0c3a9e2b7d41e8a6c09d13"])]


class InteractionCreate(Schema):
    """The item the user tapped, for a click on one of several items (default: the first)."""

    item_id: ExternalId | None = None

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"item_id": "i42"}]})


class InteractionPublic(Schema):
    """What the message has recorded now; `first` is false when this was reported before."""

    message_id: str
    campaign_id: str
    kind: Literal["opened", "clicked"]
    first: bool
    opened: bool
    clicked: bool

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "message_id": "5f0c3a9e2b7d41e8a6c09d13",
                    "campaign_id": "weekly-picks",
                    "kind": "clicked",
                    "first": True,
                    "opened": True,
                    "clicked": True,
                }
            ]
        }
    )


async def _record(
    kind: Literal["opened", "clicked"], message_id: str, item_id: str | None, services: ServicesDep
) -> InteractionPublic:
    with services.guarded("record_interaction"):
        result = await services.tracker.record_interaction(message_id, kind, item_id, services.clock())
    return InteractionPublic(
        message_id=result.message_id,
        campaign_id=result.campaign_id,
        kind=kind,
        first=result.first,
        opened=result.opened,
        clicked=result.clicked,
    )


@router.post(
    "/{message_id}/opened",
    response_model=InteractionPublic,
    summary="Report that the user opened a push",
    responses=problems(400, *AUTH, 404, 422, 503),
)
async def opened(_: AppKey, message_id: MessageId, services: ServicesDep) -> InteractionPublic:
    """Counts once per message; records a `push_open` training event on the message's first item."""
    return await _record("opened", message_id, None, services)


@router.post(
    "/{message_id}/clicked",
    response_model=InteractionPublic,
    summary="Report that the user tapped a push (or one of its items)",
    responses=problems(400, *AUTH, 404, 422, 503),
)
async def clicked(
    _: AppKey, message_id: MessageId, services: ServicesDep, body: InteractionCreate | None = None
) -> InteractionPublic:
    """A click implies an open. Records a `push_click` training event on the tapped item (one of
    the message's items; default the first)."""
    item_id = body.item_id if body is not None else None
    return await _record("clicked", message_id, item_id, services)
