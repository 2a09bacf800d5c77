"""The run's read-ahead: closing it while a read is pending (a run that stopped) cancels the
read, closes the pages' generator and raises nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from notifier import segments
from notifier.prefetch import Fetched, Prefetch

pytestmark = pytest.mark.anyio

GUARD_SECONDS = 30  # a broken read-ahead fails the test instead of hanging the suite


def fetched(position: int) -> Fetched:
    return Fetched(position, False, segments.FetchedUsers([], [], []), {})


class Pages:
    """A generator of one page, then a read that never completes; records how it ended."""

    def __init__(self) -> None:
        self.asked_again = asyncio.Event()
        self.interrupted_by: type[BaseException] | None = None
        self.closed = False

    async def __call__(self) -> AsyncGenerator[Fetched, None]:
        try:
            yield fetched(1)
            self.asked_again.set()
            try:
                await asyncio.Event().wait()  # Redis never answers
            except BaseException as exc:
                self.interrupted_by = type(exc)
                raise
            yield fetched(2)
        finally:
            self.closed = True


async def test_closing_with_a_read_pending_cancels_it_and_closes_the_pages() -> None:
    pages = Pages()
    prefetch = Prefetch(pages())
    async with asyncio.timeout(GUARD_SECONDS):
        page = await prefetch.next()
        assert page is not None and page.position == 1
        await pages.asked_again.wait()  # the read-ahead of page 2 is under way
        await prefetch.aclose()
    assert pages.interrupted_by is asyncio.CancelledError  # the pending read itself was cancelled
    assert pages.closed


async def test_closing_after_the_read_ahead_failed_raises_nothing() -> None:
    failed = asyncio.Event()
    closed: list[bool] = []

    async def pages() -> AsyncGenerator[Fetched, None]:
        try:
            yield fetched(1)
            failed.set()
            raise ConnectionError("Redis went away")
        finally:
            closed.append(True)

    prefetch = Prefetch(pages())
    async with asyncio.timeout(GUARD_SECONDS):
        assert await prefetch.next() is not None
        await failed.wait()
        await prefetch.aclose()  # the run stopped anyway: its failed read-ahead is not news
    assert closed == [True]
