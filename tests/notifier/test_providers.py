"""Push providers over real HTTP: FCM v1 with its OAuth2 token flow, the signed webhook, the log."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from delivery_support import (
    CLIENT_EMAIL,
    FCM_SCOPE,
    PROJECT_ID,
    WEBHOOK_SECRET,
    FakeFcm,
    HttpServer,
    Reply,
    WebhookReceiver,
    fcm_error,
    make_private_key,
    running,
    with_provider,
    write_service_account,
)
from shop import NOW, ManualClock

from notifier.providers import (
    FcmProvider,
    LogProvider,
    Outcome,
    Push,
    SendResult,
    WebhookProvider,
    build_provider,
)
from recsvc.config import Settings
from recsvc.errors import ConfigError

pytestmark = pytest.mark.anyio

PUSH = Push(
    message_id="m-1",
    campaign_id="spring",
    user_id="gA-u1",
    device_id="phone",
    token="tok-phone",
    platform="android",
    title="Picked for you",
    body="Item a1 and 2 more",
    deep_link="shop://items/a1",
    items=("a1", "a2", "a3"),
)


def to(token: str) -> Push:
    return dataclasses.replace(PUSH, token=token)


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return make_private_key()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


# --- FCM ----------------------------------------------------------------------------------------


@pytest.fixture
def fcm(private_key: rsa.RSAPrivateKey) -> Iterator[FakeFcm]:
    fake = FakeFcm(private_key.public_key())
    with running(fake):
        yield fake


def fcm_settings(settings: Settings, fake: FakeFcm, folder: Path, key: rsa.RSAPrivateKey) -> Settings:
    account = write_service_account(folder, key, fake.token_uri)
    return with_provider(settings, "fcm", endpoint=fake.server.url, credentials_file=str(account.path))


@pytest.fixture
def fcm_provider(
    settings: Settings, fcm: FakeFcm, tmp_path: Path, private_key: rsa.RSAPrivateKey, http: httpx.AsyncClient
) -> FcmProvider:
    provider = build_provider(fcm_settings(settings, fcm, tmp_path, private_key), http)
    assert isinstance(provider, FcmProvider)
    return provider


async def test_fcm_sends_v1_message_with_token_from_the_jwt_bearer_grant(
    fcm_provider: FcmProvider, fcm: FakeFcm
) -> None:
    result = await fcm_provider.send(PUSH)

    assert result == SendResult(Outcome.DELIVERED)
    # The key file's token_uri got a JWT signed with the service account's key, for FCM's scope.
    (claims,) = fcm.claims
    assert claims["iss"] == CLIENT_EMAIL and claims["scope"] == FCM_SCOPE
    (send,) = fcm.sends
    assert send.path == f"/v1/projects/{PROJECT_ID}/messages:send"  # project id from the key file
    assert send.headers["authorization"] == "Bearer access-1"
    assert send.headers["content-type"] == "application/json"
    assert send.json() == {
        "message": {
            "token": "tok-phone",
            "notification": {"title": "Picked for you", "body": "Item a1 and 2 more"},
            "data": {
                "message_id": "m-1",
                "campaign": "spring",
                "deep_link": "shop://items/a1",
                "items": "a1,a2,a3",
            },
            # A repeat of the message (delivery is at least once) replaces it on the device.
            "android": {"notification": {"tag": "m-1"}},
            "apns": {"headers": {"apns-collapse-id": "m-1"}},
        }
    }


async def test_fcm_tells_android_and_apns_when_a_push_expires(
    settings: Settings, fcm: FakeFcm, tmp_path: Path, private_key: rsa.RSAPrivateKey, http: httpx.AsyncClient
) -> None:
    clock = ManualClock(NOW)
    provider = build_provider(fcm_settings(settings, fcm, tmp_path, private_key), http, clock=clock)
    expires_at = NOW.timestamp() + 3600.5  # an hour and a half second from the provider's now

    assert (
        await provider.send(dataclasses.replace(PUSH, expires_at=expires_at))
    ).outcome is Outcome.DELIVERED

    message = fcm.sends[0].json()["message"]
    assert message["android"]["ttl"] == "3600s"  # whole seconds, never past the expiry
    assert message["apns"]["headers"]["apns-expiration"] == str(int(NOW.timestamp()) + 3600)
    assert message["android"]["notification"] == {"tag": "m-1"}  # with the replace-repeat ids
    assert message["apns"]["headers"]["apns-collapse-id"] == "m-1"


async def test_fcm_caches_the_access_token(fcm_provider: FcmProvider, fcm: FakeFcm) -> None:
    for token in ("t1", "t2", "t3"):
        assert (await fcm_provider.send(to(token))).outcome is Outcome.DELIVERED

    assert fcm.issued == ["access-1"]
    assert [send.headers["authorization"] for send in fcm.sends] == ["Bearer access-1"] * 3


async def test_fcm_refreshes_a_token_close_to_expiry(fcm_provider: FcmProvider, fcm: FakeFcm) -> None:
    fcm.expires_in = 60  # inside google-auth's refresh margin: stale as soon as it arrives

    await fcm_provider.send(to("t1"))
    await fcm_provider.send(to("t2"))

    assert fcm.issued == ["access-1", "access-2"]
    assert [send.headers["authorization"] for send in fcm.sends] == ["Bearer access-1", "Bearer access-2"]


async def test_fcm_401_refreshes_the_token_once_and_sends_again(
    fcm_provider: FcmProvider, fcm: FakeFcm
) -> None:
    await fcm_provider.send(to("t1"))
    fcm.revoked.add("access-1")

    result = await fcm_provider.send(to("t2"))

    assert result.outcome is Outcome.DELIVERED
    assert fcm.issued == ["access-1", "access-2"]
    assert [send.headers["authorization"] for send in fcm.sends] == [
        "Bearer access-1",
        "Bearer access-1",
        "Bearer access-2",
    ]


async def test_fcm_401_with_a_fresh_token_is_transient(fcm_provider: FcmProvider, fcm: FakeFcm) -> None:
    fcm.revoked.update({"access-1", "access-2", "access-3"})

    result = await fcm_provider.send(PUSH)

    assert result.outcome is Outcome.TRANSIENT
    assert fcm.issued == ["access-1", "access-2"]  # refreshed once, not in a loop
    assert len(fcm.sends) == 2


async def test_fcm_token_endpoint_refusal_is_transient(fcm_provider: FcmProvider, fcm: FakeFcm) -> None:
    fcm.token_reply = Reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})

    result = await fcm_provider.send(PUSH)

    assert result.outcome is Outcome.TRANSIENT
    assert "invalid_grant" in result.detail
    assert fcm.sends == []


@pytest.mark.parametrize(
    ("reply", "outcome", "retry_after"),
    [
        (
            fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
            Outcome.INVALID_TOKEN,
            None,
        ),
        (
            fcm_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                "INVALID_ARGUMENT",
            ),
            Outcome.INVALID_TOKEN,
            None,
        ),
        (
            Reply(
                400,
                {
                    "error": {
                        "code": 400,
                        "message": "Invalid value at 'message.token'",
                        "status": "INVALID_ARGUMENT",
                        "details": [
                            {
                                "@type": "type.googleapis.com/google.rpc.BadRequest",
                                "fieldViolations": [{"field": "message.token", "description": "bad"}],
                            }
                        ],
                    }
                },
            ),
            Outcome.INVALID_TOKEN,
            None,
        ),
        (
            fcm_error(
                400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value'", "INVALID_ARGUMENT"
            ),
            Outcome.PERMANENT,
            None,
        ),
        (fcm_error(404, "NOT_FOUND", "Requested entity was not found."), Outcome.PERMANENT, None),
        (
            fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"),
            Outcome.PERMANENT,
            None,
        ),
        (
            Reply(
                429,
                fcm_error(429, "RESOURCE_EXHAUSTED", "quota", "QUOTA_EXCEEDED").body,
                {"Retry-After": "17"},
            ),
            Outcome.TRANSIENT,
            17.0,
        ),
        (fcm_error(500, "INTERNAL", "internal", "INTERNAL"), Outcome.TRANSIENT, None),
        (
            Reply(503, fcm_error(503, "UNAVAILABLE", "overloaded").body, {"Retry-After": "5"}),
            Outcome.TRANSIENT,
            5.0,
        ),
    ],
)
async def test_fcm_errors_map_to_outcomes(
    fcm_provider: FcmProvider, fcm: FakeFcm, reply: Reply, outcome: Outcome, retry_after: float | None
) -> None:
    fcm.script.add("tok-phone", reply)

    result = await fcm_provider.send(PUSH)

    assert (result.outcome, result.retry_after) == (outcome, retry_after)
    assert str(reply.status) in result.detail


async def test_network_failure_is_transient(
    settings: Settings, http: httpx.AsyncClient, tmp_path: Path, private_key: rsa.RSAPrivateKey
) -> None:
    fake = FakeFcm(private_key.public_key())
    with running(fake):
        provider = build_provider(fcm_settings(settings, fake, tmp_path, private_key), http)
        await provider.send(PUSH)  # the token is cached now
    # The server is gone: FCM's port refuses connections.

    result = await provider.send(PUSH)

    assert result.outcome is Outcome.TRANSIENT
    assert "ConnectError" in result.detail


async def test_fcm_needs_a_usable_key_file(
    settings: Settings, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ConfigError) as missing:
        build_provider(with_provider(settings, "fcm"), http)
    assert missing.value.fields["key"] == "notifier.providers.fcm.credentials_file"

    broken = tmp_path / "key.json"
    broken.write_text('{"type": "service_account"}')
    with pytest.raises(ConfigError, match="service account key"):
        build_provider(with_provider(settings, "fcm", credentials_file=str(broken)), http)


# --- webhook ------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    endpoint = WebhookReceiver()
    with running(endpoint):
        yield endpoint


@pytest.fixture
def webhook(settings: Settings, receiver: WebhookReceiver, http: httpx.AsyncClient) -> WebhookProvider:
    clock = ManualClock(NOW)
    configured = with_provider(settings, "webhook", url=receiver.url, secret=WEBHOOK_SECRET)
    provider = build_provider(configured, http, clock=clock)
    assert isinstance(provider, WebhookProvider)
    return provider


async def test_webhook_posts_signed_json(webhook: WebhookProvider, receiver: WebhookReceiver) -> None:
    expires_at = NOW.timestamp() + 3600.5
    result = await webhook.send(dataclasses.replace(PUSH, expires_at=expires_at))

    assert result.outcome is Outcome.DELIVERED
    assert receiver.rejected == []  # the receiver verified the HMAC of the raw body
    (request,) = receiver.deliveries
    assert request.path == "/push"
    assert request.headers["idempotency-key"] == "m-1:phone"
    assert request.json() == {
        "message_id": "m-1",
        "user_id": "gA-u1",
        "device_id": "phone",
        "token": "tok-phone",
        "platform": "android",
        "title": "Picked for you",
        "body": "Item a1 and 2 more",
        "deep_link": "shop://items/a1",
        "items": ["a1", "a2", "a3"],
        "campaign": "spring",
        "expires_at": expires_at,
    }


async def test_webhook_with_another_secret_is_rejected_by_the_receiver(
    settings: Settings, receiver: WebhookReceiver, http: httpx.AsyncClient
) -> None:
    provider = build_provider(with_provider(settings, "webhook", url=receiver.url, secret="wrong"), http)

    result = await provider.send(PUSH)

    assert result.outcome is Outcome.PERMANENT  # the receiver's 401
    assert len(receiver.rejected) == 1 and receiver.deliveries == []


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (410, Outcome.INVALID_TOKEN),
        (408, Outcome.TRANSIENT),
        (429, Outcome.TRANSIENT),
        (500, Outcome.TRANSIENT),
        (503, Outcome.TRANSIENT),
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
    ],
)
async def test_webhook_statuses_map_to_outcomes(
    webhook: WebhookProvider, receiver: WebhookReceiver, status: int, outcome: Outcome
) -> None:
    receiver.script.add("tok-phone", Reply(status, {"error": "nope"}))

    result = await webhook.send(PUSH)

    assert result.outcome is outcome
    assert result.retry_after is None


async def test_webhook_honours_retry_after_as_seconds_or_date(
    webhook: WebhookProvider, receiver: WebhookReceiver
) -> None:
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)  # against the provider's clock
    receiver.script.add(
        "tok-phone",
        Reply(429, {}, {"Retry-After": "42"}),
        Reply(503, {}, {"Retry-After": later}),
    )

    assert (await webhook.send(PUSH)).retry_after == 42.0
    assert (await webhook.send(PUSH)).retry_after == 90.0


async def test_webhook_network_failure_is_transient(settings: Settings, http: httpx.AsyncClient) -> None:
    server = HttpServer(lambda request: Reply())
    url = server.url  # bound, never served
    server.stop()
    provider = build_provider(with_provider(settings, "webhook", url=url, secret="s"), http)

    result = await provider.send(PUSH)

    assert result.outcome is Outcome.TRANSIENT


async def test_webhook_needs_url_and_secret(settings: Settings, http: httpx.AsyncClient) -> None:
    with pytest.raises(ConfigError) as no_url:
        build_provider(with_provider(settings, "webhook", secret="s"), http)
    assert no_url.value.fields["key"] == "notifier.providers.webhook.url"
    with pytest.raises(ConfigError) as no_secret:
        build_provider(with_provider(settings, "webhook", url="http://127.0.0.1:9/push"), http)
    assert no_secret.value.fields["key"] == "notifier.providers.webhook.secret"


# --- log ----------------------------------------------------------------------------------------


async def test_log_provider_prints_one_readable_line(
    settings: Settings, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    provider = build_provider(settings, http)  # the shipped default
    assert isinstance(provider, LogProvider)

    with caplog.at_level(logging.INFO, logger="recsvc.push"):
        result = await provider.send(PUSH)

    assert result.outcome is Outcome.DELIVERED
    (record,) = caplog.records
    line = record.getMessage()
    for part in ("gA-u1", "phone", "'Picked for you'", "'Item a1 and 2 more'", "-> shop://items/a1", "m-1"):
        assert part in line, line
