"""Helpers of the scheduler, trigger and tracking suites: a recording runner, campaigns, settings."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from notifier.campaign import Campaign, CampaignSpec
from notifier.runner import RunSummary
from notifier.store import CampaignStore
from recsvc.config import Settings
from recsvc.engine import RecentEvent


@dataclass(frozen=True)
class RunCall:
    campaign_id: str
    run_id: str
    users: list[str] | None
    trigger_events: dict[str, RecentEvent]


@dataclass
class RecordingRunner:
    """Stands in for `CampaignRunner` where a test is about when and how runs are asked for."""

    calls: list[RunCall] = field(default_factory=list)
    unfinished: list[tuple[str, str]] = field(default_factory=list)
    during_run: Callable[[RunCall], Awaitable[None]] | None = None
    called: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(
        self,
        campaign: Campaign,
        run_id: str,
        *,
        users: Sequence[str] | None = None,
        trigger_events: Mapping[str, RecentEvent] | None = None,
    ) -> RunSummary:
        call = RunCall(
            campaign.id, run_id, None if users is None else list(users), dict(trigger_events or {})
        )
        self.calls.append(call)
        if self.during_run is not None:
            await self.during_run(call)
        self.called.set()
        return RunSummary(campaign.id, run_id, "done", {}, 0, resumed=False)

    async def unfinished_runs(self) -> list[tuple[str, str]]:
        return list(self.unfinished)


def campaign_spec(**changes: Any) -> CampaignSpec:
    """A valid campaign (weekly cron in Berlin) with `changes` applied."""
    document: dict[str, Any] = {
        "name": "Weekly picks",
        "schedule": {"kind": "cron", "cron": "0 9 * * *", "timezone": "Europe/Berlin"},
        "content": {"title": "Picked for you", "body": "{{ item.title }}"},
    }
    document.update(changes)
    return CampaignSpec.model_validate(document)


def cart_spec(**trigger: Any) -> CampaignSpec:
    """A cart-abandonment campaign: a push 60 minutes after add_to_cart unless the user buys."""
    return campaign_spec(
        name="Forgot something?",
        schedule=None,
        trigger={"event": "add_to_cart", "delay_minutes": 60, "cancel_on": ["purchase"], **trigger},
        content={"title": "Still thinking?", "body": "{{ item.title }} is waiting", "source": "trigger_item"},
    )


async def create(campaigns: CampaignStore, campaign_id: str, spec: CampaignSpec) -> Campaign:
    return await campaigns.create(spec, campaign_id=campaign_id)


def scheduler_settings(settings: Settings, **changes: Any) -> Settings:
    """`settings` with scheduler options changed; housekeeping off unless given."""
    values: dict[str, Any] = {"archive_cron": "", "retrain_cron": "", **changes}
    scheduler = settings.notifier.scheduler.model_copy(update=values)
    notifier = settings.notifier.model_copy(update={"scheduler": scheduler})
    return settings.model_copy(update={"notifier": notifier})


def tracking_settings(settings: Settings, **changes: Any) -> Settings:
    tracking = settings.notifier.tracking.model_copy(update=changes)
    notifier = settings.notifier.model_copy(update={"tracking": tracking})
    return settings.model_copy(update={"notifier": notifier})
