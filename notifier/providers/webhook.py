"""The generic provider: each push is POSTed as signed JSON to an endpoint the customer runs.

It lets a shop route pushes through a system of its own (another push vendor, an in-app inbox)
without recsvc knowing about it. The receiver authenticates us by the HMAC signature of the raw
body and drops duplicates by the idempotency key, because a push may be sent again after a
worker crashed between sending and recording the send.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import datetime

import httpx

from notifier.providers.base import (
    DELIVERED,
    Outcome,
    Push,
    SendResult,
    retry_after_seconds,
    short_body,
    transport_failure,
)
from recsvc.config import WebhookConfig
from recsvc.errors import ConfigError
from recsvc.state import utc_now

SIGNATURE_HEADER = "X-Recsvc-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_RETRYABLE_4XX = frozenset({408, 429})


def signature(secret: str, body: bytes) -> str:
    """The value of `X-Recsvc-Signature` for a raw request body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(push: Push) -> dict[str, object]:
    return {
        "message_id": push.message_id,
        "user_id": push.user_id,
        "device_id": push.device_id,
        "token": push.token,
        "platform": push.platform,
        "title": push.title,
        "body": push.body,
        "deep_link": push.deep_link,
        "items": list(push.items),
        "campaign": push.campaign_id,
        "expires_at": push.expires_at,
    }


class WebhookProvider:
    """POSTs pushes to `providers.webhook.url`; 2xx delivered, 410 invalid token."""

    name = "webhook"

    def __init__(
        self, config: WebhookConfig, http: httpx.AsyncClient, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        if not config.url:
            raise ConfigError("the webhook provider needs a url", key="notifier.providers.webhook.url")
        if not config.secret:
            raise ConfigError(
                "the webhook provider needs a secret to sign requests with",
                key="notifier.providers.webhook.secret",
            )
        self.rate_per_second = config.rate_per_second
        self._config = config
        self._http = http
        self._clock = clock

    async def send(self, push: Push) -> SendResult:
        body = json.dumps(payload(push), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature(self._config.secret, body),
            IDEMPOTENCY_HEADER: f"{push.message_id}:{push.device_id}",
        }
        try:
            response = await self._http.post(
                self._config.url, content=body, headers=headers, timeout=self._config.timeout_seconds
            )
        except httpx.HTTPError as exc:
            return transport_failure(exc)
        return self._classify(response)

    def _classify(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        if 200 <= status < 300:
            return DELIVERED
        detail = f"webhook answered {status}: {short_body(response)}"
        if status == 410:
            return SendResult(Outcome.INVALID_TOKEN, detail)
        if status in _RETRYABLE_4XX or status >= 500:
            return SendResult(Outcome.TRANSIENT, detail, retry_after_seconds(response.headers, self._clock))
        return SendResult(Outcome.PERMANENT, detail)
