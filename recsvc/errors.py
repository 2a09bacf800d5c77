"""The one family of errors recsvc raises on purpose.

Each error carries its own HTTP status and structured fields, so the API can answer any of
them as RFC 9457 problem+json with one handler, and the CLI can print them without a traceback.
"""

from __future__ import annotations

from typing import Any


class RecsvcError(Exception):
    """Base of every deliberate error; `status` is the HTTP status it maps to."""

    status: int = 500
    title: str = "Internal error"

    def __init__(self, detail: str, **fields: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.fields = fields


class ConfigError(RecsvcError):
    """A configuration value is missing or wrong; `key` names it (dotted path)."""

    status = 500
    title = "Invalid configuration"


class InputError(RecsvcError):
    """Input supplied by a caller is malformed."""

    status = 400
    title = "Invalid input"


class EventFileError(InputError):
    """A row of an event or catalog file is malformed; names the file and the line."""

    title = "Malformed event file"

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {reason}", path=path, line=line, reason=reason)
        self.path = path
        self.line = line
        self.reason = reason


class NotFoundError(RecsvcError):
    """A named thing (model version, item, campaign) does not exist."""

    status = 404
    title = "Not found"


class RegistryError(RecsvcError):
    """The model registry cannot do what was asked (nothing to roll back to, corrupt artifact)."""

    status = 409
    title = "Registry conflict"


class ArtifactError(RecsvcError):
    """A model artifact is incomplete, corrupt or of an unknown schema version."""

    status = 500
    title = "Invalid model artifact"


class ConflictError(RecsvcError):
    """The request conflicts with the current state (an id already taken, a run already running)."""

    status = 409
    title = "Conflict"
