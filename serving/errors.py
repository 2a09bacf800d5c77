"""Errors only the HTTP layer raises; all of them are `RecsvcError`s, answered by one handler.

`headers` carries the HTTP headers an error needs beside its problem document
(`Retry-After`, `WWW-Authenticate`).
"""

from __future__ import annotations

from typing import Any

from recsvc.errors import InputError, RecsvcError


class HttpError(RecsvcError):
    """A `RecsvcError` that also names response headers."""

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **fields: Any) -> None:
        super().__init__(detail, **fields)
        self.headers = headers or {}


class ServiceUnavailable(HttpError):
    """A dependency (Redis, the model) cannot serve this request now; retry later."""

    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, *, retry_after: int | None = None, **fields: Any) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(detail, headers=headers, **fields)


class Unauthorized(HttpError):
    """No API key, or one that is not configured."""

    status = 401
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="recsvc"'})


class Forbidden(HttpError):
    """A valid API key whose role may not call this route."""

    status = 403
    title = "Forbidden"


class PayloadTooLarge(InputError):
    """A request body or batch larger than the configured limits."""

    status = 413
    title = "Payload too large"


class InvalidRequest(InputError):
    """Well-formed input that breaks a rule of the configuration; `errors` locates each problem.

    Each entry of `errors` is `{"loc": [...], "msg": str, "type": str}`, the shape FastAPI's own
    validation errors are answered in, so a client reads both the same way.
    """

    status = 422
    title = "Invalid request"

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        detail = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in errors)
        super().__init__(detail, errors=errors)
        self.errors = errors


def invalid(loc: list[str | int], msg: str, kind: str = "value_error") -> InvalidRequest:
    """One located validation problem."""
    return InvalidRequest([{"loc": loc, "msg": msg, "type": kind}])
