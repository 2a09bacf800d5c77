"""What a marketer defines: a campaign's segment, schedule or trigger, content and rules.

These models are the one schema of a campaign, shared by the admin API, the CLI (JSON or TOML
files) and the Redis store, so a campaign is validated the same way wherever it comes from.
Template checks need the Jinja environment and live in `notifier.templates`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from notifier.crontab import crontab_trigger
from recsvc.config import MAX_GAP_HOURS, MAX_REPEAT_DAYS, ClockTime, PushRules

CAMPAIGN_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# The longest look-back a segment takes (a century): far past any kept history, and short enough
# that a segment's time arithmetic on it (`timedelta`, microseconds) cannot overflow.
MAX_WINDOW_DAYS = 36_500.0
# The longest period of an interval schedule and the longest delay of a trigger (366 days): a
# yearly push is the rarest that repeats; `once` covers anything rarer. Bounded so that the
# scheduler's date arithmetic (APScheduler adds periods to datetimes) cannot leave `datetime`.
MAX_PERIOD_MINUTES = 366 * 24 * 60
# Scheduled times (`once.at`, `interval.start`) lie before this year, in any timezone: decades
# beyond any real plan, and far enough from `datetime.max` that adding a grace period, a period or
# a timezone offset to them cannot overflow.
MAX_SCHEDULE_YEAR = 2100


def timezone_name(value: str) -> str:
    """An IANA timezone name that this machine knows."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone '{value}'") from exc
    return value


TimezoneName = Annotated[str, AfterValidator(timezone_name)]


def schedule_time(value: datetime) -> datetime:
    """A time to fire at that the scheduler can do arithmetic on (before `MAX_SCHEDULE_YEAR`)."""
    if value.year >= MAX_SCHEDULE_YEAR:
        raise ValueError(f"must be before the year {MAX_SCHEDULE_YEAR}, got {value.isoformat()}")
    return value


ScheduleTime = Annotated[datetime, AfterValidator(schedule_time)]


class Spec(BaseModel):
    """A part of a campaign: unknown fields are typos, so they are rejected."""

    model_config = ConfigDict(extra="forbid")


# --- segment ------------------------------------------------------------------------------------

AttributeOp = Literal["eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "exists", "missing"]


class AttributePredicate(Spec):
    """A test on one profile attribute, e.g. tier in [gold, silver] or points between 100 and 500.

    `field` names a key of the profile's `attributes`, or `timezone`.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"field": "tier", "op": "in", "value": ["gold", "silver"]}]},
    )

    field: str = Field(min_length=1)
    op: AttributeOp = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> AttributePredicate:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"'{self.op}' needs a list value")
        if self.op == "between" and not (
            isinstance(self.value, list)
            and len(self.value) == 2
            and all(isinstance(bound, int | float) for bound in self.value)
        ):
            raise ValueError("'between' needs a value [low, high] of two numbers")
        if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float):
            raise ValueError(f"'{self.op}' needs a number")
        if self.op in ("exists", "missing") and self.value is not None:
            raise ValueError(f"'{self.op}' takes no value")
        return self


class Segment(Spec):
    """Who a campaign is for: every condition given must hold (AND).

    Behaviour conditions read the user's recent history in Redis (the last
    `serving.history_max` events within `serving.history_ttl_days`).
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "attributes": [{"field": "points", "op": "between", "value": [100, 500]}],
                    "active_within_days": 30,
                    "push_consent": True,
                    "has_device": True,
                    "control_percent": 10,
                }
            ]
        },
    )

    attributes: list[AttributePredicate] = Field(default_factory=list)
    active_within_days: float | None = Field(default=None, gt=0, le=MAX_WINDOW_DAYS)
    inactive_for_days: float | None = Field(default=None, gt=0, le=MAX_WINDOW_DAYS)
    purchased_in_category: str | None = None
    purchased_within_days: float | None = Field(default=None, gt=0, le=MAX_WINDOW_DAYS)
    viewed_not_bought_within_days: float | None = Field(default=None, gt=0, le=MAX_WINDOW_DAYS)
    push_consent: bool | None = None
    has_device: bool | None = None
    sample_percent: float = Field(default=100.0, gt=0, le=100)
    control_percent: float = Field(default=0.0, ge=0, lt=100)


# --- schedule and trigger -------------------------------------------------------------------------


class CronSchedule(Spec):
    """Fires on a cron expression (minute hour day month weekday) in `timezone`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"kind": "cron", "cron": "0 10 * * mon", "timezone": "Europe/Berlin"}]
        },
    )

    kind: Literal["cron"]
    cron: str
    timezone: TimezoneName = "UTC"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            crontab_trigger(value, UTC)
        except ValueError as exc:
            raise ValueError(f"invalid cron expression '{value}': {exc}") from exc
        return value


class IntervalSchedule(Spec):
    """Fires every `every_minutes`, from `start` (default: when saved)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"kind": "interval", "every_minutes": 360}]}
    )

    kind: Literal["interval"]
    # At least a minute: a firing's run id is its minute, so two firings in one minute are one run.
    every_minutes: float = Field(ge=1, le=MAX_PERIOD_MINUTES)
    start: ScheduleTime | None = None
    timezone: TimezoneName = "UTC"


class OnceSchedule(Spec):
    """Fires once at `at` (an ISO time; without an offset it is read in `timezone`)."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"kind": "once", "at": "2026-12-01T10:00:00+01:00"}]}
    )

    kind: Literal["once"]
    at: ScheduleTime
    timezone: TimezoneName = "UTC"

    def instant(self) -> datetime:
        """`at` as an aware time."""
        return self.at if self.at.tzinfo is not None else self.at.replace(tzinfo=ZoneInfo(self.timezone))


class LocalTimeSchedule(Spec):
    """Every day, each user gets the push at `at` in their own timezone.

    A run is prepared once a day at `prepare_at` UTC; each message waits in the delayed outbox
    until the user's next local `at`.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"kind": "local_time", "at": "18:30", "weekdays": ["sat", "sun"]}]},
    )

    kind: Literal["local_time"]
    at: ClockTime
    prepare_at: ClockTime = "00:00"
    # None is every day; an empty list would be no day at all, so it is refused.
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] | None = Field(
        default=None, min_length=1
    )


Schedule = Annotated[
    CronSchedule | IntervalSchedule | OnceSchedule | LocalTimeSchedule, Field(discriminator="kind")
]


class Trigger(Spec):
    """A push `delay_minutes` after an event of type `event`, unless a `cancel_on` event comes first.

    With `same_item`, only a cancelling event on the triggering item cancels (e.g. buying the
    carted item); otherwise any cancelling event of the user does. A newer triggering event
    re-arms the push from its own time.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"event": "add_to_cart", "delay_minutes": 120, "cancel_on": ["purchase"], "same_item": True}
            ]
        },
    )

    event: str = Field(min_length=1)
    delay_minutes: float = Field(ge=0, le=MAX_PERIOD_MINUTES)
    cancel_on: list[str] = Field(default_factory=list)
    same_item: bool = False


# --- content and rules ----------------------------------------------------------------------------

ItemSource = Literal["personalized", "trending", "similar_to_last_viewed", "trigger_item"]


class Content(Spec):
    """What the push says: Jinja2 templates over `user`, `items`, `item` and `campaign`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "{{ item.title }} is waiting",
                    "body": "Still thinking about it, {{ user.first_name | default('there') }}?",
                    "deep_link": "shop://product/{{ item.item_id }}",
                    "items": 3,
                    "source": "personalized",
                }
            ]
        },
    )

    title: str = Field(min_length=1, max_length=500)
    body: str = Field(min_length=1, max_length=2000)
    deep_link: str | None = Field(default=None, max_length=2000)
    items: int = Field(default=3, ge=1, le=20)
    source: ItemSource = "personalized"
    category: str | None = None


class RuleOverrides(Spec):
    """Per-campaign values of `[notifier.rules]`; None keeps the global value."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"max_per_day": 1, "quiet_start": "22:00", "quiet_end": "07:30"}]},
    )

    max_per_day: int | None = Field(default=None, ge=0)
    max_per_week: int | None = Field(default=None, ge=0)
    min_gap_hours: float | None = Field(default=None, ge=0, le=MAX_GAP_HOURS)
    item_repeat_days: float | None = Field(default=None, ge=0, le=MAX_REPEAT_DAYS)
    quiet_start: ClockTime | None = None
    quiet_end: ClockTime | None = None


# --- the campaign ---------------------------------------------------------------------------------


_SPEC_EXAMPLE: dict[str, Any] = {
    "name": "Cart reminder",
    "segment": {"push_consent": True},
    "trigger": {"event": "add_to_cart", "delay_minutes": 120, "cancel_on": ["purchase"]},
    "content": {
        "title": "{{ item.title }} is still in your cart",
        "body": "Complete your order, or see {{ items[1].title if items | length > 1 else 'more' }}.",
        "deep_link": "shop://cart",
        "items": 3,
        "source": "trigger_item",
    },
}


class CampaignSpec(Spec):
    """What a marketer submits. Exactly one of `schedule` and `trigger`, or neither (run on demand)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_SPEC_EXAMPLE]})

    name: str = Field(min_length=1, max_length=200)
    segment: Segment = Field(default_factory=Segment)
    schedule: Schedule | None = None
    trigger: Trigger | None = None
    content: Content
    rules: RuleOverrides = Field(default_factory=RuleOverrides)

    @model_validator(mode="after")
    def _one_way_to_fire(self) -> CampaignSpec:
        if self.schedule is not None and self.trigger is not None:
            raise ValueError("a campaign has a schedule or a trigger, not both")
        if self.content.source == "trigger_item" and self.trigger is None:
            raise ValueError("content.source 'trigger_item' needs a trigger")
        return self

    def effective_rules(self, defaults: PushRules) -> PushRules:
        """The global rules with this campaign's overrides applied."""
        overrides = self.rules.model_dump(exclude_none=True)
        return defaults.model_copy(update=overrides)


CampaignStatus = Literal["active", "paused"]


class Campaign(CampaignSpec):
    """A stored campaign: the spec plus its id, status and times."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    **_SPEC_EXAMPLE,
                    "id": "cart-reminder",
                    "status": "active",
                    "created_at": "2026-11-23T09:00:00Z",
                    "updated_at": "2026-11-23T09:00:00Z",
                }
            ]
        },
    )

    id: str
    status: CampaignStatus = "active"
    created_at: datetime
    updated_at: datetime

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not CAMPAIGN_ID.match(value):
            raise ValueError(
                "campaign ids are 1-64 of a-z, 0-9, '_' and '-', starting with a letter or digit"
            )
        return value

    def spec(self) -> CampaignSpec:
        return CampaignSpec.model_validate(self.model_dump(include=set(CampaignSpec.model_fields)))
