"""Push providers: the services a delivery worker hands pushes to, chosen by configuration."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import httpx

from notifier.providers.base import DELIVERED, Outcome, Provider, Push, SendResult
from notifier.providers.fcm import FcmProvider, load_credentials
from notifier.providers.log import LogProvider
from notifier.providers.webhook import WebhookProvider
from recsvc.config import Settings
from recsvc.state import utc_now

__all__ = [
    "DELIVERED",
    "FcmProvider",
    "LogProvider",
    "Outcome",
    "Provider",
    "Push",
    "SendResult",
    "WebhookProvider",
    "build_provider",
]


def build_provider(
    settings: Settings, http: httpx.AsyncClient, *, clock: Callable[[], datetime] = utc_now
) -> Provider:
    """The provider `notifier.delivery.provider` names, sending over `http`.

    Reads the FCM key file when FCM is chosen; a missing or unusable setting is a `ConfigError`.
    """
    providers = settings.notifier.providers
    match settings.notifier.delivery.provider:
        case "fcm":
            return FcmProvider(providers.fcm, http, load_credentials(providers.fcm), clock=clock)
        case "webhook":
            return WebhookProvider(providers.webhook, http, clock=clock)
        case "log":
            return LogProvider(providers.log.rate_per_second)
