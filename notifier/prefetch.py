"""A campaign run's pages, each read from Redis while the run decides and writes the one before.

A run is CPU-bound in Python while Redis waits, then waits while Redis reads; the read-ahead
lets the two overlap (the runner overlaps the previous batch's write the same way).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from notifier import segments
from notifier.segments import UserData


@dataclass(frozen=True)
class Page:
    """One batch of a run: the position after it, whether it is the last, the users to decide
    (read, without those whose message exists) and the message id of every user of the page."""

    position: int
    last: bool
    users: list[UserData]
    message_ids: dict[str, str]


@dataclass(frozen=True)
class Fetched:
    """A page as read from Redis, before its users' data is decoded."""

    position: int
    last: bool
    fetched: segments.FetchedUsers
    message_ids: dict[str, str]

    def page(self) -> Page:
        users = [user for user in self.fetched.decode() if not user.message_written]
        return Page(self.position, self.last, users, self.message_ids)


class Prefetch:
    """A run's pages, each read while the caller decides and writes the one before.

    The next page is asked of Redis as soon as the caller has one, so Redis reads it while the
    caller decides (mostly Python, on one core). Its reply is decoded when the caller asks for
    it (`next`), not as soon as it arrives: decoding is Python too and would only take turns
    with deciding, or with the index search for both cores.
    """

    def __init__(self, pages: AsyncGenerator[Fetched, None]) -> None:
        self._pages = pages
        self._ahead: asyncio.Task[Page | None] | None = None
        self._ended = False  # the last page was read
        self._decode = asyncio.Event()

    async def next(self) -> Page | None:
        """The next page (read ahead, or now), None after the last; starts reading the one after."""
        if self._ahead is None and not self._ended:
            self._ahead = asyncio.ensure_future(self._read())
        if self._ahead is None:
            return None
        self._decode.set()
        ahead, self._ahead = self._ahead, None
        page = await ahead
        self._decode.clear()
        if not self._ended:
            self._ahead = asyncio.ensure_future(self._read())
        return page

    async def _read(self) -> Page | None:
        fetched = await anext(self._pages, None)
        self._ended = fetched is None or fetched.last
        if fetched is None:
            return None
        await self._decode.wait()
        return fetched.page()

    async def aclose(self) -> None:
        """Cancel a read under way (its failure, if any, is not news: the run stopped anyway)."""
        if self._ahead is not None:
            self._ahead.cancel()
            await asyncio.wait([self._ahead])  # raises only if this task itself is cancelled
            if not self._ahead.cancelled():
                self._ahead.exception()
        await self._pages.aclose()
