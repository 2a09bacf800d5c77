"""`SchemaResponse`: a response schema instance serialized once, by pydantic, straight to bytes.

A route that returns a schema instance has FastAPI dump it to a dict, validate that against
the `response_model` again and serialize the result: three passes over a value the route
just built and validated. Returning it wrapped in `SchemaResponse` skips to the last pass;
the route keeps `response_model=` for the OpenAPI document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.responses import Response


class SchemaResponse(Response):
    """A JSON response whose content is a pydantic model instance."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if not isinstance(content, BaseModel):
            raise TypeError(f"SchemaResponse needs a pydantic model, got {type(content).__name__}")
        return content.__pydantic_serializer__.to_json(content)
