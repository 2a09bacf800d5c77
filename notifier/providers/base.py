"""What every push provider speaks: one push to one device in, one classified outcome out.

The worker decides what happens next (done, remove the device, retry later, give up) from the
outcome alone, so each provider's only job is to translate its service's answers into these
four outcomes; nothing provider-specific leaks into the delivery loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Protocol

import httpx


class Outcome(StrEnum):
    DELIVERED = "delivered"  # the provider accepted the push
    TRANSIENT = "transient"  # try again later (rate limited, provider down, network error)
    INVALID_TOKEN = "invalid_token"  # the device token will never work again: forget the device
    PERMANENT = "permanent"  # this push cannot be sent as it is; retrying would not help


@dataclass(frozen=True)
class Push:
    """One message addressed to one device of its user."""

    message_id: str
    campaign_id: str
    user_id: str
    device_id: str
    token: str
    platform: str | None
    title: str
    body: str
    deep_link: str | None
    items: tuple[str, ...]
    # Unix s after which the push is worthless: providers ask the platform to drop it then rather
    # than deliver it late to a device that was offline (None: no limit).
    expires_at: float | None = None

    @property
    def data(self) -> dict[str, str]:
        """The app-facing payload: string values only, as FCM's `data` requires."""
        data = {"message_id": self.message_id, "campaign": self.campaign_id, "items": ",".join(self.items)}
        if self.deep_link:
            data["deep_link"] = self.deep_link
        return data


@dataclass(frozen=True)
class SendResult:
    """A provider's answer to one push; `retry_after` (seconds) only for transient outcomes."""

    outcome: Outcome
    detail: str = ""
    retry_after: float | None = None


DELIVERED = SendResult(Outcome.DELIVERED)


class Provider(Protocol):
    """A push service; `name` keys its shared rate limit, `rate_per_second` is that limit."""

    name: str
    rate_per_second: float

    async def send(self, push: Push) -> SendResult: ...


def transport_failure(exc: httpx.HTTPError) -> SendResult:
    """A network error or timeout: the push may be retried (the provider never answered)."""
    return SendResult(Outcome.TRANSIENT, f"{type(exc).__name__}: {exc}".rstrip(": "))


def retry_after_seconds(headers: Mapping[str, str], clock: Callable[[], datetime]) -> float | None:
    """The `Retry-After` header (RFC 9110: delay seconds or an HTTP date) in seconds from now."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" in a date means UTC with no claim about local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - clock()).total_seconds())


def short_body(response: httpx.Response, limit: int = 300) -> str:
    """The start of an error response's body, for logs and dead letters."""
    text = response.text.strip().replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
