"""The development provider: every push becomes one readable log line instead of a notification.

It is what `make run` uses, so a developer sees exactly what users would get (who, which device,
the rendered text and where a tap leads) without any push credentials.
"""

from __future__ import annotations

import logging

from notifier.providers.base import DELIVERED, Push, SendResult

logger = logging.getLogger("recsvc.push")


class LogProvider:
    """Logs each push at INFO on `recsvc.push` and reports it delivered."""

    name = "log"

    def __init__(self, rate_per_second: float) -> None:
        self.rate_per_second = rate_per_second

    async def send(self, push: Push) -> SendResult:
        platform = f" ({push.platform})" if push.platform else ""
        link = f" -> {push.deep_link}" if push.deep_link else ""
        items = f" [items: {', '.join(push.items)}]" if push.items else ""
        logger.info(
            "push to %s on %s%s: %r / %r%s%s (message %s, campaign %s)",
            push.user_id,
            push.device_id,
            platform,
            push.title,
            push.body,
            link,
            items,
            push.message_id,
            push.campaign_id,
        )
        return DELIVERED
