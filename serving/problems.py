"""RFC 9457 problem details: the one shape of every error this API answers.

`problem_response` renders a problem; the handlers below turn each family of exceptions into
one: our own `RecsvcError`s (one handler on the base class serves every subclass, since
Starlette looks handlers up along the MRO), FastAPI's validation errors (422, or 400 for a body
that is not JSON), Starlette's HTTP exceptions (unknown route, wrong method) and, as a last
resort, any other exception (500, logged: that is a bug).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Scope

from recsvc.errors import RecsvcError
from serving.errors import HttpError
from serving.schemas import EVENT_BODY_TAGS

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:recsvc:problem:"
REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_STATE = "request_id"


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE


def problem_type(name: str) -> str:
    """A stable problem type URI from a class name: NotFoundError -> urn:recsvc:problem:not-found."""
    base = name.removesuffix("Error") or name
    return PROBLEM_TYPE_PREFIX + re.sub(r"(?<!^)(?=[A-Z])", "-", base).lower()


def request_id_of(scope: Scope) -> str | None:
    """The request id the request-context middleware assigned, if it ran."""
    state = scope.get("state")
    value = state.get(REQUEST_ID_STATE) if isinstance(state, dict) else None
    return value if isinstance(value, str) else None


def problem_response(
    scope: Scope,
    status: int,
    *,
    title: str,
    detail: str,
    type_: str = "about:blank",
    errors: Sequence[dict[str, Any]] | None = None,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemResponse:
    """One problem document; `instance` is the request path, `request_id` ties it to the logs."""
    body: dict[str, Any] = {
        **(extensions or {}),
        "type": type_,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": scope.get("path", ""),
    }
    headers = dict(headers or {})
    request_id = request_id_of(scope)
    if request_id is not None:
        body["request_id"] = request_id
        # Set here too: a 500 is sent from outside the middleware that adds it to other answers.
        headers[REQUEST_ID_HEADER] = request_id
    if errors is not None:
        body["errors"] = list(errors)
    return ProblemResponse(body, status_code=status, headers=headers)


async def recsvc_error(request: Request, exc: Exception) -> ProblemResponse:
    """Any deliberate error: its own status, title and (for client errors) structured fields."""
    assert isinstance(exc, RecsvcError)
    if exc.status >= 500 and not isinstance(exc, HttpError):  # ours are logged where they arise
        log.error("%s answered %d: %s", type(exc).__name__, exc.status, exc.detail)
    # Our own HTTP errors choose their fields for clients; other server errors may hold paths.
    public = exc.status < 500 or isinstance(exc, HttpError)
    fields = {key: value for key, value in exc.fields.items() if _is_json(value)} if public else {}
    errors = fields.pop("errors", None)
    return problem_response(
        request.scope,
        exc.status,
        title=exc.title,
        detail=exc.detail,
        type_=problem_type(type(exc).__name__),
        errors=errors,
        extensions=fields,
        headers=exc.headers if isinstance(exc, HttpError) else None,
    )


async def validation_error(request: Request, exc: Exception) -> ProblemResponse:
    """FastAPI's request validation: 422 with every located error, or 400 for malformed JSON."""
    assert isinstance(exc, RequestValidationError)
    errors = [_located(error) for error in exc.errors()]
    if any(error["type"] == "json_invalid" for error in errors):
        return problem_response(
            request.scope,
            400,
            title="Malformed JSON",
            detail="the request body is not valid JSON: "
            + "; ".join(f"{error['msg']} at {error['loc'][-1]}" for error in errors),
            type_=problem_type("MalformedJson"),
            errors=errors,
        )
    detail = "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in errors)
    return problem_response(
        request.scope,
        422,
        title="Invalid request",
        detail=detail,
        type_=problem_type("InvalidRequest"),
        errors=errors,
    )


async def http_error(request: Request, exc: Exception) -> ProblemResponse:
    """Starlette's own HTTP errors: unknown route (404), wrong method (405, with Allow)."""
    assert isinstance(exc, HTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if exc.detail and exc.detail != phrase else _http_detail(request, exc.status_code)
    return problem_response(
        request.scope, exc.status_code, title=phrase, detail=detail, headers=dict(exc.headers or {})
    )


async def unexpected_error(request: Request, exc: Exception) -> ProblemResponse:
    """A bug: log it with its traceback, and still answer a problem rather than a bare 500."""
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request.scope,
        500,
        title="Internal server error",
        detail="an unexpected error occurred; it has been logged",
        type_=problem_type("InternalError"),
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RecsvcError, recsvc_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)


def _located(error: Any) -> dict[str, Any]:
    """A validation error without the echoed input (it may be large or sensitive)."""
    loc = [part for part in error.get("loc", ()) if isinstance(part, str | int)]
    # The events body is a tagged union (one event or a batch); its tag is not a field name.
    if len(loc) > 1 and loc[0] == "body" and loc[1] in EVENT_BODY_TAGS:
        del loc[1]
    return {"loc": loc, "msg": str(error.get("msg", "")), "type": str(error.get("type", "value_error"))}


def _http_detail(request: Request, status: int) -> str:
    if status == 404:
        return f"no route {request.url.path}"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    return HTTPStatus(status).description


def _is_json(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)
