"""Request and response bodies, split by role: `...Create` / `...Update` come in, `...Public` go out.

Limits that depend on configuration (event types, id length, batch size) are checked by the
routes against the settings, since a schema is built once per process and knows none of them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from recsvc.weighting import MAX_EVENT_VALUE

Strategy = Literal["personalized", "realtime", "popular"]
Platform = Literal["android", "ios", "web"]
ExternalId = Annotated[str, Field(min_length=1, examples=["u1001"])]
Finite = Annotated[float, Field(allow_inf_nan=False)]

MAX_DEVICES = 20
MAX_TIMEZONE_LENGTH = 64


class Schema(BaseModel):
    """Unknown fields are typos: rejected rather than silently dropped."""

    model_config = ConfigDict(extra="forbid")


# --- recommendations -------------------------------------------------------------------------

_ITEM_EXAMPLE: dict[str, Any] = {
    "item_id": "i42",
    "score": 0.87,
    "title": "Trail running shoes",
    "category": "shoes",
    "price": 89.9,
    "url": "https://shop.example/p/i42",
    "image_url": "https://cdn.shop.example/i42.jpg",
}


class RecommendationPublic(Schema):
    """One recommended item with the catalog fields a client needs to render it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ITEM_EXAMPLE]})

    item_id: str
    score: float
    title: str | None = None
    category: str | None = None
    price: float | None = None
    url: str | None = None
    image_url: str | None = None


class ItemListPublic(Schema):
    """Fields every list of items carries: which model made it, how, and whether Redis helped."""

    request_id: str = Field(examples=["4f1c2e0a9b7d4c3e8a6f5b2d1c0e9f8a"])
    model_version: str = Field(examples=["v000003"])
    realtime: bool = Field(
        description="false when Redis was unreachable and the answer uses the model alone",
    )
    items: list[RecommendationPublic]


class RecommendationsPublic(ItemListPublic):
    """Recommendations for one user; an unknown user gets popular items and `known_user: false`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "4f1c2e0a9b7d4c3e8a6f5b2d1c0e9f8a",
                    "user_id": "u1001",
                    "model_version": "v000003",
                    "strategy": "realtime",
                    "known_user": True,
                    "realtime": True,
                    "items": [_ITEM_EXAMPLE],
                }
            ]
        }
    )

    user_id: str
    strategy: Strategy = Field(
        description="realtime: folded in from recent events; personalized: the trained user vector; "
        "popular: trending and popular items for a user the model cannot place",
    )
    known_user: bool


class SimilarPublic(ItemListPublic):
    """Items whose learned vectors are closest (cosine) to one item's."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "4f1c2e0a9b7d4c3e8a6f5b2d1c0e9f8a",
                    "item_id": "i7",
                    "model_version": "v000003",
                    "realtime": True,
                    "items": [_ITEM_EXAMPLE],
                }
            ]
        }
    )

    item_id: str


class PopularPublic(ItemListPublic):
    """Trending items (recent events in Redis), or the model's popularity when Redis is down."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "4f1c2e0a9b7d4c3e8a6f5b2d1c0e9f8a",
                    "category": "shoes",
                    "model_version": "v000003",
                    "realtime": True,
                    "items": [_ITEM_EXAMPLE],
                }
            ]
        }
    )

    category: str | None = None


# --- events and feedback ---------------------------------------------------------------------


class EventCreate(Schema):
    """One thing a user did with an item."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": "u1001", "item_id": "i42", "type": "purchase", "ts": "2024-05-01T10:00:00Z"},
                {"user_id": "u1001", "item_id": "i7", "type": "view"},
            ]
        },
    )

    user_id: ExternalId
    item_id: ExternalId
    type: str = Field(min_length=1, max_length=64, description="a type configured under [events.types]")
    ts: AwareDatetime | None = Field(default=None, description="ISO 8601 with an offset; default: now")
    value: Finite | None = Field(
        default=None,
        ge=-MAX_EVENT_VALUE,
        le=MAX_EVENT_VALUE,
        description=f"a rating, play count or price (at most {MAX_EVENT_VALUE:g} either way)",
    )


class EventBatchCreate(Schema):
    """Several events in one request (at most `[serving] max_batch`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {"user_id": "u1001", "item_id": "i42", "type": "view"},
                        {"user_id": "u1001", "item_id": "i42", "type": "add_to_cart"},
                    ]
                }
            ]
        },
    )

    events: list[EventCreate] = Field(min_length=1)


SINGLE_EVENT = "single_event"
EVENT_BATCH = "event_batch"
EVENT_BODY_TAGS = frozenset({SINGLE_EVENT, EVENT_BATCH})


def _event_body_kind(value: Any) -> str:
    """A body with an `events` key is a batch; anything else is validated as one event."""
    if isinstance(value, EventBatchCreate) or (isinstance(value, dict) and "events" in value):
        return EVENT_BATCH
    return SINGLE_EVENT


EventsCreate = Annotated[
    Annotated[EventCreate, Tag(SINGLE_EVENT)] | Annotated[EventBatchCreate, Tag(EVENT_BATCH)],
    Discriminator(_event_body_kind),
]


class EventsAccepted(Schema):
    """The events were recorded; `ids` are their ids in the event stream, in request order."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"accepted": 2, "ids": ["1714557600000-0", "1714557600000-1"]}]}
    )

    accepted: int
    ids: list[str]


class FeedbackCreate(Schema):
    """Explicit feedback on a recommended item."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"user_id": "u1001", "item_id": "i42", "kind": "not_interested"}]},
    )

    user_id: ExternalId
    item_id: ExternalId
    kind: Literal["not_interested"]


class FeedbackAccepted(Schema):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"user_id": "u1001", "item_id": "i42", "kind": "not_interested"}]}
    )

    user_id: str
    item_id: str
    kind: Literal["not_interested"]


# --- user profiles ---------------------------------------------------------------------------

_DEVICE_EXAMPLE: dict[str, Any] = {"device_id": "d-1", "platform": "ios", "token": "apns-token-abc"}
_PROFILE_EXAMPLE: dict[str, Any] = {
    "attributes": {"tier": "gold", "points": 1200, "locale": "de-DE"},
    "timezone": "Europe/Berlin",
    "push_consent": True,
    "devices": [_DEVICE_EXAMPLE],
}


class DeviceUpdate(Schema):
    """A device's push token; `token: null` unregisters the device (e.g. on logout)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [_DEVICE_EXAMPLE, {"device_id": "d-2", "token": None}]},
    )

    device_id: str = Field(min_length=1, max_length=256)
    platform: Platform | None = Field(default=None, description="required with a token")
    token: str | None = Field(min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _platform_with_token(self) -> DeviceUpdate:
        if self.token is not None and self.platform is None:
            raise ValueError("a device with a token needs its platform: android, ios or web")
        return self


class DevicePublic(Schema):
    model_config = ConfigDict(json_schema_extra={"examples": [_DEVICE_EXAMPLE]})

    device_id: str
    platform: Platform | None
    token: str


class ProfileAttributes(BaseModel):
    """Known attributes are typed; any other attribute is kept as given."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [_PROFILE_EXAMPLE["attributes"]]},
    )

    tier: str | None = None
    points: int | None = Field(default=None, ge=0)
    locale: str | None = Field(default=None, max_length=35)


def _known_timezone(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > MAX_TIMEZONE_LENGTH:
        raise ValueError("not an IANA time zone name (too long)")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown IANA time zone {value!r}, e.g. 'Europe/Berlin'") from exc
    return value


class ProfileUpdate(Schema):
    """Profile fields to store. Fields left out keep their stored value; `attributes` is replaced
    whole; devices are added or updated by `device_id` (and removed with `token: null`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_PROFILE_EXAMPLE]})

    attributes: ProfileAttributes | None = Field(default=None, description="replaced whole; null clears them")
    timezone: Annotated[str | None, AfterValidator(_known_timezone)] = Field(
        default=None, description="IANA time zone name; null clears it", examples=["Europe/Berlin"]
    )
    # Consent is stated, never cleared: null is refused (422), not read as either answer. The
    # default is never stored: the route stores only the fields a request sets.
    push_consent: bool = Field(
        default=False, description="left out: the stored value (false for a new user); not null"
    )
    devices: list[DeviceUpdate] | None = Field(default=None, max_length=MAX_DEVICES)


class ProfilePublic(Schema):
    """A stored profile."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"user_id": "u1001", **_PROFILE_EXAMPLE}]})

    user_id: str
    attributes: dict[str, Any]
    timezone: str | None
    push_consent: bool
    devices: list[DevicePublic]


# --- catalog ---------------------------------------------------------------------------------


class ItemUpdate(Schema):
    """Changes to one catalog item; absent fields keep their value."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"item_id": "i42", "price": 79.9, "available": False}]},
    )

    item_id: ExternalId
    title: str | None = None
    category: str | None = None
    price: Finite | None = Field(default=None, ge=0)
    available: bool | None = None
    url: str | None = None
    image_url: str | None = None


class ItemsUpdate(Schema):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"items": [{"item_id": "i42", "available": False}, {"item_id": "i7", "price": 12.5}]}
            ]
        },
    )

    items: list[ItemUpdate] = Field(min_length=1)


class ItemsUpdated(Schema):
    model_config = ConfigDict(json_schema_extra={"examples": [{"updated": 2}]})

    updated: int


# --- models ----------------------------------------------------------------------------------

_MODEL_EXAMPLE: dict[str, Any] = {
    "version": "v000003",
    "created_at": "2024-05-01T02:00:00+00:00",
    "current": True,
    "serving": True,
    "metrics": {"model": {"ndcg@10": 0.31}, "popularity": {"ndcg@10": 0.12}},
    "error": None,
}
_BROKEN_MODEL_EXAMPLE: dict[str, Any] = {
    "version": "v000004",
    "created_at": None,
    "current": False,
    "serving": False,
    "metrics": {},
    "error": "var/models/v000004/manifest.json: missing file",
}


class ModelPublic(Schema):
    """One published model version; a broken one (it cannot be promoted) says why in `error`."""

    model_config = ConfigDict(json_schema_extra={"examples": [_MODEL_EXAMPLE, _BROKEN_MODEL_EXAMPLE]})

    version: str
    created_at: datetime | None = Field(description="null when the version's manifest cannot be read")
    current: bool = Field(description="the registry's current version")
    serving: bool = Field(description="the version this process answers with")
    metrics: dict[str, Any]
    error: str | None = Field(
        default=None, description="why the version is broken and cannot be served; null when it is sound"
    )


class ModelsPublic(Schema):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "current": "v000003",
                    "serving": "v000003",
                    "versions": [_MODEL_EXAMPLE, _BROKEN_MODEL_EXAMPLE],
                }
            ]
        }
    )

    current: str | None
    serving: str | None
    versions: list[ModelPublic]


class PromotedPublic(Schema):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"version": "v000004", "previous": "v000003", "serving": "v000004"}]}
    )

    version: str
    previous: str | None
    serving: str


# --- operations ------------------------------------------------------------------------------


class HealthPublic(Schema):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"] = "ok"


class ReadyPublic(Schema):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "ready", "model_version": "v000003", "redis": True}]}
    )

    status: Literal["ready"] = "ready"
    model_version: str
    redis: bool


class ProblemError(Schema):
    loc: list[str | int]
    msg: str
    type: str


class Problem(Schema):
    """RFC 9457 problem details, the body of every error (`application/problem+json`)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:recsvc:problem:invalid-request",
                    "title": "Invalid request",
                    "status": 422,
                    "detail": "query.k: k must be between 1 and 100",
                    "instance": "/v1/users/u1001/recommendations",
                    "request_id": "4f1c2e0a9b7d4c3e8a6f5b2d1c0e9f8a",
                    "errors": [
                        {"loc": ["query", "k"], "msg": "k must be between 1 and 100", "type": "value_error"}
                    ],
                }
            ]
        },
    )

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None = None
    errors: list[ProblemError] | None = None
