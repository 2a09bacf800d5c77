"""Firebase Cloud Messaging (HTTP v1 API): the provider for real Android and iOS devices.

Authentication is a short-lived OAuth2 access token obtained with the service account's key
(the JWT bearer grant, RFC 7523), which google-auth signs and exchanges; the token is cached and
refreshed shortly before it expires (google-auth's own margin), so a token request happens
about once an hour, not per push. The exchange is a blocking HTTP call, so it runs in a thread.

FCM's answers map to outcomes as its documentation describes them: an unregistered or invalid
token means the app was removed or the token rotated, so the device is forgotten; quota and
server errors are retried (honouring Retry-After); anything else about the request is permanent.
A token rejected for another project (SENDER_ID_MISMATCH) stays permanent on purpose: that is
usually a wrong `project_id`, and treating it as an invalid token would erase every device.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import httpx
import requests
from google.oauth2 import service_account

from notifier.providers.base import (
    DELIVERED,
    Outcome,
    Push,
    SendResult,
    retry_after_seconds,
    short_body,
    transport_failure,
)
from recsvc.config import FcmConfig
from recsvc.errors import ConfigError
from recsvc.state import utc_now

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"


def load_credentials(config: FcmConfig) -> service_account.Credentials:
    """The service account of `credentials_file`, scoped for FCM; a `ConfigError` if unusable."""
    key = "notifier.providers.fcm.credentials_file"
    if not config.credentials_file:
        raise ConfigError("the fcm provider needs a service account key file", key=key)
    try:
        credentials: service_account.Credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            config.credentials_file, scopes=[SCOPE]
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot use {config.credentials_file} as a service account key: {exc}", key=key
        ) from exc
    return credentials


class FcmProvider:
    """Sends through FCM HTTP v1 with a cached OAuth2 access token of a service account."""

    name = "fcm"

    def __init__(
        self,
        config: FcmConfig,
        http: httpx.AsyncClient,
        credentials: service_account.Credentials,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        project_id = config.project_id or credentials.project_id
        if not project_id:
            raise ConfigError(
                "the fcm provider needs a project_id (none in the config or the key file)",
                key="notifier.providers.fcm.project_id",
            )
        self.rate_per_second = config.rate_per_second
        self.url = f"{config.endpoint.rstrip('/')}/v1/projects/{project_id}/messages:send"
        self._config = config
        self._http = http
        self._credentials = credentials
        self._clock = clock
        self._token_lock = asyncio.Lock()

    async def send(self, push: Push) -> SendResult:
        try:
            token = await self._access_token()
            response = await self._post(push, token)
            if response.status_code == 401:  # revoked or expired early: one fresh token, one more try
                response = await self._post(push, await self._access_token(stale=token))
                if response.status_code == 401:
                    return SendResult(
                        Outcome.TRANSIENT, f"fcm rejected a fresh token: {short_body(response)}"
                    )
        except google.auth.exceptions.GoogleAuthError as exc:
            return SendResult(Outcome.TRANSIENT, f"fcm access token: {exc}")
        except httpx.HTTPError as exc:
            return transport_failure(exc)
        return self._classify(response)

    def message(self, push: Push) -> dict[str, Any]:
        """The JSON body of one send request.

        Delivery is at least once: a worker that dies after FCM accepted a push, before it
        recorded that, sends it again. The message id as Android's notification `tag` and as
        `apns-collapse-id` makes the device show the repeat in place of the first, so the user
        sees one notification. (Not `collapse_key`: FCM keeps at most four per device, and
        pushes of other campaigns waiting for an offline device could be dropped.)
        With `expires_at`, Android's TTL and APNs' expiration say when FCM and Apple stop trying
        a device that is offline.
        """
        android: dict[str, Any] = {"notification": {"tag": push.message_id}}
        apns_headers = {"apns-collapse-id": push.message_id}
        if push.expires_at is not None:
            android["ttl"] = f"{max(0, math.floor(push.expires_at - self._clock().timestamp()))}s"
            apns_headers["apns-expiration"] = str(math.floor(push.expires_at))
        return {
            "message": {
                "token": push.token,
                "notification": {"title": push.title, "body": push.body},
                "data": push.data,
                "android": android,
                "apns": {"headers": apns_headers},
            }
        }

    async def _post(self, push: Push, token: str) -> httpx.Response:
        return await self._http.post(
            self.url,
            json=self.message(push),
            headers={"Authorization": f"Bearer {token}"},
            timeout=self._config.timeout_seconds,
        )

    async def _access_token(self, *, stale: str | None = None) -> str:
        """The cached token while it is valid; a new one if it is (nearly) expired or `stale`."""
        async with self._token_lock:  # one refresh at a time; the other sends wait for its token
            credentials = self._credentials
            if not credentials.valid or credentials.token == stale:
                await asyncio.to_thread(self._refresh)
            token = credentials.token
            if not isinstance(token, str):
                raise google.auth.exceptions.RefreshError("no access token")  # type: ignore[no-untyped-call]
            return token

    def _refresh(self) -> None:
        with requests.Session() as session:
            request = google.auth.transport.requests.Request(session)
            timed = functools.partial(request, timeout=self._config.timeout_seconds)
            self._credentials.refresh(timed)  # type: ignore[no-untyped-call]

    def _classify(self, response: httpx.Response) -> SendResult:
        status = response.status_code
        if 200 <= status < 300:
            return DELIVERED
        error = _error_of(response)
        detail = f"fcm answered {status} {error.get('status', '')}: {short_body(response)}"
        codes = {
            part.get("errorCode") for part in error.get("details", []) if part.get("@type") == _FCM_ERROR_TYPE
        }
        if status == 404 and "UNREGISTERED" in codes:
            return SendResult(Outcome.INVALID_TOKEN, detail)
        if status == 400 and _about_token(error):
            return SendResult(Outcome.INVALID_TOKEN, detail)
        if status == 429 or status >= 500:
            return SendResult(Outcome.TRANSIENT, detail, retry_after_seconds(response.headers, self._clock))
        return SendResult(Outcome.PERMANENT, detail)


def _error_of(response: httpx.Response) -> dict[str, Any]:
    """The `error` object of an FCM error response (google.rpc.Status), or {} if there is none."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _about_token(error: dict[str, Any]) -> bool:
    """Whether an INVALID_ARGUMENT error blames the registration token, not the message."""
    for part in error.get("details", []):
        violations = part.get("fieldViolations", []) if part.get("@type") == _BAD_REQUEST_TYPE else []
        if any(violation.get("field") == "message.token" for violation in violations):
            return True
    return "registration token" in str(error.get("message", "")).lower()
