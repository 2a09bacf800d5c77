"""OpenAPI declarations shared by the routes: the problem responses each route may answer."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from serving.problems import PROBLEM_MEDIA_TYPE
from serving.schemas import Problem

_DESCRIPTIONS = {
    400: "Malformed JSON body",
    401: "Missing or unknown API key",
    403: "The API key's role may not call this route",
    404: "Not found",
    409: "Conflict",
    413: "Request body or batch too large",
    415: "The body is not JSON (`Content-Type: application/json`), or is compressed",
    422: "Invalid request (every problem located in `errors`)",
    503: "Redis or the model is unavailable; retry after `Retry-After` seconds",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for problem+json answers with the given statuses."""
    return {status: {"model": Problem, "description": _DESCRIPTIONS[status]} for status in statuses}


def install_openapi(app: FastAPI) -> None:
    """Generate the schema once, with every error response as `application/problem+json`.

    FastAPI documents a response `model` under `application/json`; ours are problem documents.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    for status, response in operation.get("responses", {}).items():
                        content = response.get("content", {})
                        if str(status)[0] in "45" and "application/json" in content:
                            content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


AUTH = (401, 403)
