"""Writing what users do: events (views, carts, purchases, ...) and explicit feedback.

Both answer 202 only once Redis has the write, so an accepted event is in the user's history
(the next recommendation folds it in), in trending, and in the stream the archive moves to disk.
With Redis down they answer 503 with `Retry-After`: the client keeps the events and retries.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Body

from recsvc.config import Settings
from recsvc.state import Event
from serving.deps import AppKey, ServicesDep, check_id_length
from serving.errors import InvalidRequest, PayloadTooLarge
from serving.openapi import AUTH, problems
from serving.schemas import (
    EventBatchCreate,
    EventCreate,
    EventsAccepted,
    EventsCreate,
    FeedbackAccepted,
    FeedbackCreate,
)

router = APIRouter(prefix="/v1", tags=["events"])

# How far ahead of this server's clock an event may be stamped (clients' clocks drift).
MAX_CLOCK_SKEW = timedelta(minutes=10)
# The earliest time an event may be stamped: no app event predates it, and an earlier one is
# usually a client's missing value sent as 0 (1970-01-01) or as year 1.
EARLIEST_EVENT = datetime(2000, 1, 1, tzinfo=UTC)

_EVENT_EXAMPLES: dict[str, Any] = {
    "one": {
        "summary": "one event",
        "value": {"user_id": "u1001", "item_id": "i42", "type": "purchase", "ts": "2024-05-01T10:00:00Z"},
    },
    "batch": {
        "summary": "a batch",
        "value": {
            "events": [
                {"user_id": "u1001", "item_id": "i42", "type": "view"},
                {"user_id": "u1001", "item_id": "i42", "type": "add_to_cart", "value": 2},
            ]
        },
    },
}


@router.post(
    "/events",
    status_code=202,
    response_model=EventsAccepted,
    summary="Record events",
    responses=problems(400, *AUTH, 413, 415, 422, 503),
)
async def post_events(
    _: AppKey,
    body: Annotated[EventsCreate, Body(openapi_examples=_EVENT_EXAMPLES)],
    services: ServicesDep,
) -> EventsAccepted:
    """Record one event, or a batch of up to `[serving] max_batch` as `{"events": [...]}`.

    Each `type` must be configured under `[events.types]`; `ts` defaults to now.
    """
    settings = services.settings
    batch = isinstance(body, EventBatchCreate)
    events = body.events if isinstance(body, EventBatchCreate) else [body]
    if len(events) > settings.serving.max_batch:
        raise PayloadTooLarge(
            f"at most {settings.serving.max_batch} events per request, got {len(events)}",
            limit=settings.serving.max_batch,
        )
    now = services.clock()
    _validate(events, settings, now, batch=batch)
    accepted = [Event(e.user_id, e.item_id, e.type, e.ts or now, e.value) for e in events]
    categories = [services.category_of(e.item_id) for e in events]
    with services.guarded("record_events"):
        ids = await services.store.record_events(accepted, categories)
    for kind, count in Counter(e.type for e in events).items():
        services.metrics.events_ingested.labels(type=kind).inc(count)
    return EventsAccepted(accepted=len(ids), ids=ids)


@router.post(
    "/feedback",
    status_code=202,
    response_model=FeedbackAccepted,
    summary="Record feedback on an item",
    responses=problems(400, *AUTH, 413, 415, 422, 503),
)
async def post_feedback(_: AppKey, body: FeedbackCreate, services: ServicesDep) -> FeedbackAccepted:
    """`not_interested`: the item is never recommended to this user again."""
    settings = services.settings
    errors = [
        error
        for field in ("user_id", "item_id")
        if (error := check_id_length(["body", field], getattr(body, field), settings)) is not None
    ]
    if errors:
        raise InvalidRequest(errors)
    with services.guarded("dismiss"):
        await services.store.dismiss(body.user_id, body.item_id)
    return FeedbackAccepted(user_id=body.user_id, item_id=body.item_id, kind=body.kind)


def _validate(events: list[EventCreate], settings: Settings, now: datetime, *, batch: bool) -> None:
    """Every rule the schema cannot know, each problem located like FastAPI's own errors."""
    types = settings.events.types
    errors: list[dict[str, Any]] = []
    for position, event in enumerate(events):
        loc: list[str | int] = ["body", "events", position] if batch else ["body"]
        if event.type not in types:
            errors.append(
                {
                    "loc": [*loc, "type"],
                    "msg": f"unknown event type {event.type!r}; configured types: {', '.join(types)}",
                    "type": "unknown_event_type",
                }
            )
        for field in ("user_id", "item_id"):
            error = check_id_length([*loc, field], getattr(event, field), settings)
            if error is not None:
                errors.append(error)
        if event.ts is not None and event.ts > now + MAX_CLOCK_SKEW:
            errors.append(
                {"loc": [*loc, "ts"], "msg": f"ts {event.ts.isoformat()} is in the future", "type": "future"}
            )
        elif event.ts is not None and event.ts < EARLIEST_EVENT:
            errors.append(
                {
                    "loc": [*loc, "ts"],
                    "msg": f"ts {event.ts.isoformat()} is before {EARLIEST_EVENT.date().isoformat()}",
                    "type": "too_old",
                }
            )
    if errors:
        raise InvalidRequest(errors)
