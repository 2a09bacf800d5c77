"""Whether a queued push may go out now, judged again at send time: not too late, not at night.

A run decides when each push falls due, but delivery can come later than that: workers were
down, a backlog waits under the provider's rate limit, a retry backs off for an hour. A push
that reaches a worker during its user's quiet hours (a retry at 22:20, a backlog worked off at
3 am) waits for the morning again, and one more than `delivery.max_delay_hours` late is dropped
as `expired`: "today only" is wrong tomorrow, and a late push is worse than none.

Quiet hours are the campaign's effective rules (read once a minute per campaign; the worker
cancels the pushes of a deleted campaign before it asks, and should the campaign go in between,
the global rules apply) in the timezone the user's profile has now.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from notifier import rules
from notifier.campaign import Trigger
from notifier.messages import Message
from notifier.store import CampaignStore
from recsvc.config import PushRules, Settings
from recsvc.errors import NotFoundError

RULES_CACHE_SECONDS = 60.0


@dataclass(frozen=True)
class Hold:
    """Why a push must not go out now: `until` (unix s) it waits for, or None when it expired."""

    until: float | None


class SendWindow:
    """Judges queued pushes at send time for one worker; keeps campaigns' rules for a minute."""

    def __init__(self, campaigns: CampaignStore, settings: Settings) -> None:
        self._campaigns = campaigns
        self._defaults = settings.notifier.rules
        self._default_zone = settings.notifier.default_timezone
        self._max_delay = settings.notifier.delivery.max_delay_hours * 3600.0
        self._campaigns_read: dict[str, tuple[_CampaignView, float]] = {}  # id -> (view, read at)

    async def hold(self, message: Message, profile: Mapping[str, Any] | None, now: float) -> Hold | None:
        """None if `message` may be sent at `now`; else why not (see `Hold`)."""
        expires_at = self.expires_at(message)
        if expires_at is not None and now > expires_at:
            return Hold(until=None)
        zone = rules.user_zone((profile or {}).get("timezone"), self._default_zone)
        campaign_rules = (await self._campaign(message.campaign_id, now)).rules
        instant = datetime.fromtimestamp(now, UTC)
        if not rules.in_quiet_hours(instant, campaign_rules, zone):
            return None
        return Hold(until=rules.after_quiet_hours(instant, campaign_rules, zone).timestamp())

    def expires_at(self, message: Message) -> float | None:
        """When `message` is too late to send (unix s); None when it never is."""
        return message.due + self._max_delay if self._max_delay else None

    async def trigger(self, campaign_id: str, now: float) -> Trigger | None:
        """The campaign's trigger (None for a scheduled campaign, or one gone), as of a minute ago."""
        return (await self._campaign(campaign_id, now)).trigger

    async def _campaign(self, campaign_id: str, now: float) -> _CampaignView:
        cached = self._campaigns_read.get(campaign_id)
        if cached is not None and now - cached[1] < RULES_CACHE_SECONDS:
            return cached[0]
        try:
            campaign = await self._campaigns.get(campaign_id)
            view = _CampaignView(campaign.effective_rules(self._defaults), campaign.trigger)
        except NotFoundError:
            view = _CampaignView(self._defaults, None)
        self._campaigns_read[campaign_id] = (view, now)
        return view


@dataclass(frozen=True)
class _CampaignView:
    """What sending needs of a campaign: its effective rules and its trigger."""

    rules: PushRules
    trigger: Trigger | None
