"""A push message and how it enters the outbox: the one record every notifier part shares.

A message is stored once, as a Redis hash under its id, and referenced by id everywhere else:
the outbox stream (ready to send), the delayed set (due later: local-time sends, quiet hours,
retries), tracking (opens, clicks, conversions) and the dead-letter stream. Its id is derived
from (campaign, run, user), so a run that is executed again finds the messages it already wrote
and writes each user's message exactly once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from recsvc.keys import Keys

# Values of the `status` field of a message hash.
QUEUED = "queued"  # in the outbox stream or the delayed set
CONTROL = "control"  # control group: recorded for measurement, never sent
SENT = "sent"  # accepted by the provider for at least one device
FAILED = "failed"  # invalid tokens or a permanent provider error
DEAD = "dead"  # moved to the dead-letter stream after the last attempt


def message_id(campaign_id: str, run_id: str, user_id: str) -> str:
    """The idempotency key of one user's message in one run, short enough for a tracking URL."""
    digest = hashlib.blake2b(f"{campaign_id}\0{run_id}\0{user_id}".encode(), digest_size=12)
    return digest.hexdigest()


@dataclass(frozen=True)
class Message:
    """One rendered push to one user; `due` is the unix time it may be sent."""

    message_id: str
    campaign_id: str
    run_id: str
    user_id: str
    title: str
    body: str
    deep_link: str | None
    items: tuple[str, ...]
    due: float
    control: bool = False

    def fields(self, created: float) -> dict[str, str]:
        """The message as the fields of its Redis hash."""
        return {
            "campaign": self.campaign_id,
            "run": self.run_id,
            "user": self.user_id,
            "title": self.title,
            "body": self.body,
            "deep_link": self.deep_link or "",
            "items": json.dumps(list(self.items)),
            "due": repr(self.due),
            "control": "1" if self.control else "0",
            "status": CONTROL if self.control else QUEUED,
            "attempts": "0",
            "created": repr(created),
        }

    @classmethod
    def from_fields(cls, message_id: str, fields: Mapping[str, str]) -> Message:
        return cls(
            message_id=message_id,
            campaign_id=fields["campaign"],
            run_id=fields["run"],
            user_id=fields["user"],
            title=fields["title"],
            body=fields["body"],
            deep_link=fields.get("deep_link") or None,
            items=tuple(json.loads(fields.get("items", "[]"))),
            due=float(fields["due"]),
            control=fields.get("control") == "1",
        )


def stage_messages(
    pipe: Any, keys: Keys, messages: Iterable[Message], *, now: float, ttl_seconds: int
) -> None:
    """Add the commands that store `messages` and queue them to a pipeline (sync or async).

    Control-group messages are only stored. A message due now goes to the outbox stream, a later
    one to the delayed set; the caller executes the pipeline, in a transaction with whatever else
    must happen together with it (caps, dedupe records, statistics).
    """
    for message in messages:
        key = keys.message(message.message_id)
        pipe.hset(key, mapping=message.fields(created=now))
        pipe.expire(key, ttl_seconds)
        if message.control:
            continue
        if message.due <= now:
            pipe.xadd(keys.outbox(), {"message_id": message.message_id})
        else:
            pipe.zadd(keys.outbox_delayed(), {message.message_id: message.due})
