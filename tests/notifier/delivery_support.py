"""Helpers of the delivery suites: real HTTP servers on 127.0.0.1 that play FCM (with its OAuth2
token endpoint) and a webhook receiver, a service-account key made here, and queued messages.

The servers run `http.server` in a thread and answer from a script per device token, so a test
says "this token is unregistered" or "the first send fails with 503" and then looks at exactly
what arrived over the socket.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import threading
import urllib.parse
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from notifier.messages import Message, message_id, stage_messages
from recsvc.config import Settings
from recsvc.keys import Keys

PROJECT_ID = "test-project"
CLIENT_EMAIL = f"pusher@{PROJECT_ID}.iam.gserviceaccount.com"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
WEBHOOK_SECRET = "test-webhook-secret"


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Received], Reply]


class HttpServer:
    """A threaded HTTP server on 127.0.0.1 that records requests and answers through `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[Received] = []
        self._handler = handler
        outer = self

        class _Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received = Received(
                    self.command,
                    self.path,
                    {name.lower(): value for name, value in self.headers.items()},
                    self.rfile.read(length),
                )
                outer.requests.append(received)
                reply = outer._handler(received)
                body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        # A short poll interval keeps `stop` (which waits for the serving loop to notice) quick.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the port (also for a server never started)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()


class Script:
    """Replies per device token, used in order; a token with none left gets `default`.

    A hook may run before a reply (in the server's thread), to change the world meanwhile.
    """

    def __init__(self, default: Reply) -> None:
        self.default = default
        self._replies: dict[str, deque[Reply]] = defaultdict(deque)
        self._hooks: dict[str, Callable[[], object]] = {}
        self._lock = threading.Lock()

    def add(self, token: str, *replies: Reply) -> None:
        with self._lock:
            self._replies[token].extend(replies)

    def before(self, token: str, hook: Callable[[], object]) -> None:
        self._hooks[token] = hook

    def reply_for(self, token: str) -> Reply:
        hook = self._hooks.pop(token, None)
        if hook is not None:
            hook()
        with self._lock:
            queue = self._replies.get(token)
            return queue.popleft() if queue else self.default


# --- FCM ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceAccount:
    """A service-account key file made for the test, and the public half to verify its JWTs."""

    path: Path
    public_key: rsa.RSAPublicKey


def make_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_service_account(folder: Path, key: rsa.RSAPrivateKey, token_uri: str) -> ServiceAccount:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": PROJECT_ID,
        "private_key_id": "test-key-1",
        "private_key": pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    path = folder / "service-account.json"
    path.write_text(json.dumps(info))
    return ServiceAccount(path, key.public_key())


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verified_jwt(assertion: str, public_key: rsa.RSAPublicKey) -> dict[str, Any]:
    """The claims of an RS256 JWT whose signature `public_key` verifies (raises otherwise)."""
    header, payload, signature = assertion.split(".")
    public_key.verify(_b64url(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    assert json.loads(_b64url(header))["alg"] == "RS256"
    claims: dict[str, Any] = json.loads(_b64url(payload))
    return claims


class FakeFcm:
    """FCM HTTP v1 and Google's OAuth2 token endpoint, on one local server.

    The token endpoint checks the JWT bearer grant (signature, issuer, scope) and issues
    `access-1`, `access-2`, ... valid for `expires_in` seconds; `revoke` makes FCM refuse a token.
    Sends need a live token and are answered from `script` by device token.
    """

    def __init__(self, public_key: rsa.RSAPublicKey, *, expires_in: int = 3600) -> None:
        self.public_key = public_key
        self.expires_in = expires_in
        self.script = Script(Reply(200, {"name": f"projects/{PROJECT_ID}/messages/1"}))
        self.issued: list[str] = []
        self.claims: list[dict[str, Any]] = []
        self.revoked: set[str] = set()
        self.token_reply: Reply | None = None  # set to make the token endpoint fail
        self._numbers = itertools.count(1)
        self.server = HttpServer(self._handle)

    @property
    def token_uri(self) -> str:
        return f"{self.server.url}/token"

    @property
    def sends(self) -> list[Received]:
        return [request for request in self.server.requests if request.path.endswith(":send")]

    def _handle(self, request: Received) -> Reply:
        if request.path == "/token":
            return self._token(request)
        if request.path != f"/v1/projects/{PROJECT_ID}/messages:send":
            return Reply(404, {"error": {"code": 404, "message": "no such path", "status": "NOT_FOUND"}})
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self.issued or bearer in self.revoked:
            return Reply(401, {"error": {"code": 401, "message": "bad token", "status": "UNAUTHENTICATED"}})
        return self.script.reply_for(request.json()["message"]["token"])

    def _token(self, request: Received) -> Reply:
        form = urllib.parse.parse_qs(request.body.decode())
        assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        claims = verified_jwt(form["assertion"][0], self.public_key)
        assert claims["iss"] == CLIENT_EMAIL and claims["scope"] == FCM_SCOPE, claims
        self.claims.append(claims)
        if self.token_reply is not None:
            return self.token_reply
        token = f"access-{next(self._numbers)}"
        self.issued.append(token)
        return Reply(200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})


def fcm_error(status: int, name: str, message: str, error_code: str | None = None) -> Reply:
    """An FCM v1 error response (google.rpc.Status with an FcmError detail)."""
    details = []
    if error_code is not None:
        details.append(
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}
        )
    return Reply(status, {"error": {"code": status, "message": message, "status": name, "details": details}})


# --- webhook ------------------------------------------------------------------------------------


class WebhookReceiver:
    """A customer's webhook endpoint: verifies the HMAC signature and answers from `script`.

    `deliveries` holds the verified pushes; a request with a bad signature gets 401.
    """

    def __init__(self, secret: str = WEBHOOK_SECRET) -> None:
        self.secret = secret
        self.script = Script(Reply(202, {"ok": True}))
        self.deliveries: list[Received] = []
        self.rejected: list[Received] = []
        self._lock = threading.Lock()
        self.server = HttpServer(self._handle)

    @property
    def url(self) -> str:
        return f"{self.server.url}/push"

    def _handle(self, request: Received) -> Reply:
        expected = "sha256=" + hmac.new(self.secret.encode(), request.body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("x-recsvc-signature", ""), expected):
            self.rejected.append(request)
            return Reply(401, {"error": "bad signature"})
        reply = self.script.reply_for(request.json()["token"])
        if 200 <= reply.status < 300:
            with self._lock:
                self.deliveries.append(request)
        return reply

    def delivered_keys(self) -> list[str]:
        """The Idempotency-Key of every accepted push."""
        return [request.headers["idempotency-key"] for request in self.deliveries]


@contextmanager
def running(server: FakeFcm | WebhookReceiver) -> Iterator[None]:
    server.server.start()
    try:
        yield
    finally:
        server.server.stop()


# --- settings and messages ----------------------------------------------------------------------


def with_delivery(settings: Settings, **changes: Any) -> Settings:
    """`settings` with fields of `[notifier.delivery]` changed."""
    notifier = settings.notifier
    delivery = notifier.delivery.model_copy(update=changes)
    return settings.model_copy(update={"notifier": notifier.model_copy(update={"delivery": delivery})})


def with_provider(settings: Settings, name: str, **changes: Any) -> Settings:
    """`settings` delivering through provider `name`, with fields of its config changed."""
    notifier = settings.notifier
    section = getattr(notifier.providers, name).model_copy(update=changes)
    providers = notifier.providers.model_copy(update={name: section})
    delivery = notifier.delivery.model_copy(update={"provider": name})
    return settings.model_copy(
        update={"notifier": notifier.model_copy(update={"providers": providers, "delivery": delivery})}
    )


async def queue_message(
    redis: aioredis.Redis,
    settings: Settings,
    user_id: str,
    *,
    now: datetime,
    due: datetime | None = None,
    campaign_id: str = "spring",
    run_id: str = "run-1",
    title: str = "Picked for you",
    items: tuple[str, ...] = ("a1", "a2"),
) -> Message:
    """Store and queue one message, as a campaign run does (outbox if due, else the delayed set)."""
    message = Message(
        message_id=message_id(campaign_id, run_id, user_id),
        campaign_id=campaign_id,
        run_id=run_id,
        user_id=user_id,
        title=title,
        body=f"Hi {user_id}, new things you may like",
        deep_link=f"shop://items/{items[0]}" if items else None,
        items=items,
        due=(due or now).timestamp(),
    )
    async with redis.pipeline(transaction=True) as pipe:
        stage_messages(pipe, Keys(settings.redis.prefix), [message], now=now.timestamp(), ttl_seconds=86_400)
        await pipe.execute()
    return message


def devices(*tokens: str) -> dict[str, dict[str, str]]:
    """A profile's devices: one per token, device ids `d0`, `d1`, ...; platform android."""
    return {f"d{n}": {"token": token, "platform": "android"} for n, token in enumerate(tokens)}
