"""Pure ASGI middleware: request ids and timing around every request, and the body size limit.

Both are plain ASGI callables rather than `BaseHTTPMiddleware`, so they add no task or
memory stream per request and see the exact bytes that arrive.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import Metrics
from serving.problems import REQUEST_ID_STATE, problem_response, problem_type

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_REQUEST_ID_HEADER = b"x-request-id"
UNMATCHED_ROUTE = "<unmatched>"


class RequestContextMiddleware:
    """Assigns the request id (the caller's `X-Request-ID` when valid), echoes it, and times the request.

    Latency is recorded per route template (never the raw path, which would give every user
    id its own series) and status; a request that matched no route counts as `<unmatched>`.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})[REQUEST_ID_STATE] = request_id
        header = request_id.encode("ascii")
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != _REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (_REQUEST_ID_HEADER, header)]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            # `path_format`: the template without converters (`{user_id}`, not `{user_id:path}`).
            template = getattr(route, "path_format", None) or UNMATCHED_ROUTE
            self.metrics.observe_request(
                scope.get("method", ""), str(template), status, time.perf_counter() - started
            )


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == _REQUEST_ID_HEADER:
            text = bytes(value).decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
            break  # invalid: replaced by a fresh id rather than rejected
    return uuid.uuid4().hex


class _BodyTooLarge(Exception):
    """Raised into the application when its body passes the limit; never escapes this module."""


class BodyLimitMiddleware:
    """Answers 413 when a request body passes `max_bytes`.

    A `Content-Length` over the limit is refused before the application runs. Otherwise the
    bytes are counted as they arrive (chunked bodies have no length), and on passing the limit
    the application's read fails and whatever it answers is replaced by the 413 problem.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _content_length(scope) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        too_large = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                return  # the application's answer to a failed read is replaced by the 413
            response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not too_large:
                raise
        if too_large and not response_started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            scope,
            413,
            title="Payload too large",
            detail=f"the request body is larger than {self.max_bytes} bytes",
            type_=problem_type("PayloadTooLarge"),
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class JsonBodyMiddleware:
    """Answers 415 to a request body the API cannot read: not JSON, or compressed.

    Every body the API takes is JSON. Without this, FastAPI answered a form or plain-text body
    with a 422 saying only "Input should be a valid dictionary", and a gzipped one with a bare
    400. Requests without a body pass whatever their headers say.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        unreadable = _unreadable_body(scope) if scope["type"] == "http" else None
        if unreadable is None:
            await self.app(scope, receive, send)
            return
        response = problem_response(
            scope,
            415,
            title="Unsupported media type",
            detail=unreadable,
            type_=problem_type("UnsupportedMediaType"),
        )
        await response(scope, receive, send)


def _unreadable_body(scope: Scope) -> str | None:
    """Why the request's body cannot be read as JSON, or None (readable, or no body)."""
    if scope["method"] not in _BODY_METHODS:  # the recommendation path pays nothing
        return None
    headers = {bytes(name): bytes(value).decode("latin-1") for name, value in scope.get("headers", [])}
    if _content_length(scope) == 0 and b"transfer-encoding" not in headers:
        return None
    encoding = headers.get(b"content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"Content-Encoding {encoding!r} is not supported: send the body uncompressed"
    content_type = headers.get(b"content-type")
    if content_type is None:
        return None  # left to the route, which reads the body as JSON or answers what is missing
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return None
    return f"the body must be JSON, sent with Content-Type: application/json; got {media_type!r}"


def _content_length(scope: Scope) -> int:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0  # malformed: the server rejects it; the counting below still applies
    return 0
