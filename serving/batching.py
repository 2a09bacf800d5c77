"""Concurrent recommendation requests of one worker, answered by one engine call.

A batch of one pays the engine's fixed cost (a few hundred numpy calls: about 1 ms on this
machine's cores) for a single user; `Engine.recommend_many` pays it once for many users. The
engine is synchronous and holds the event loop while it runs, so under load the requests whose
Redis reads complete meanwhile would queue anyway: here they join the next batch instead.

Nothing waits on a timer. A request queues its user and the batch runs at the end of the
current event-loop turn, so at low load every batch is a single request served as soon as
before, and batches grow only when requests arrive faster than they are answered, which is
when the saving matters. Each request's state is still read fresh from Redis before it queues,
so a batch answers what the requests would have got one by one (with one `now` for the batch,
read when it runs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from recsvc.catalog import Catalog
from recsvc.engine import Engine, RecentEvent, Recommendations


@dataclass(frozen=True)
class Shared:
    """What requests must have in common to share an engine call (hashable)."""

    engine: Engine
    catalog: Catalog
    k: int
    exclude: frozenset[str]
    category: str | None
    include_seen: bool
    trending: tuple[tuple[str, float], ...]


@dataclass
class _Batch:
    user_ids: list[str] = field(default_factory=list)
    recent: dict[str, Sequence[RecentEvent]] = field(default_factory=dict)
    excluded: dict[str, Collection[str]] = field(default_factory=dict)
    answers: list[asyncio.Future[Recommendations]] = field(default_factory=list)


class RecommendationBatcher:
    """Queues recommendation requests and answers each turn's queue with one engine call per kind.

    Belongs to one event loop (one per worker process), like the app that holds it.
    """

    def __init__(self, now_us: Callable[[], int], observe_batch: Callable[[int], None]) -> None:
        self._now_us = now_us
        self._observe_batch = observe_batch
        self._queued: dict[Shared, list[_Batch]] = {}
        self._flush_scheduled = False

    async def recommend(
        self,
        user_id: str,
        shared: Shared,
        *,
        recent: Sequence[RecentEvent],
        excluded: Collection[str],
    ) -> Recommendations:
        """`shared.engine.recommend` for this user, computed in a batch with the turn's other requests."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Recommendations] = loop.create_future()
        batch = self._batch_for(user_id, shared)
        batch.user_ids.append(user_id)
        batch.recent[user_id] = recent
        batch.excluded[user_id] = excluded
        batch.answers.append(answer)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await answer

    def _batch_for(self, user_id: str, shared: Shared) -> _Batch:
        """The first queued batch of this kind without `user_id`: the engine takes per-user state
        by id, so two requests for one id (a user asking twice, or forgotten users, who are all
        served as one anonymous id) go to separate calls."""
        batches = self._queued.setdefault(shared, [])
        for batch in batches:
            if user_id not in batch.recent:
                return batch
        batches.append(_Batch())
        return batches[-1]

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, {}
        now_us = self._now_us()
        for shared, batches in queued.items():
            for batch in batches:
                self._observe_batch(len(batch.user_ids))
                _answer(batch, shared, now_us)


def _answer(batch: _Batch, shared: Shared, now_us: int) -> None:
    """Runs one engine call and hands each request its result.

    If the call fails, each of its users is asked again alone, so an error one user's data
    causes reaches that request only, as it would have without batching.
    """
    try:
        results = _recommend(batch.user_ids, batch, shared, now_us)
    except Exception as error:
        if len(batch.user_ids) == 1:
            _settle(batch.answers[0], error)
            return
        for user_id, answer in zip(batch.user_ids, batch.answers, strict=True):
            try:
                [result] = _recommend([user_id], batch, shared, now_us)
            except Exception as alone:
                _settle(answer, alone)
            else:
                _settle(answer, result)
        return
    for answer, result in zip(batch.answers, results, strict=True):
        _settle(answer, result)


def _recommend(user_ids: list[str], batch: _Batch, shared: Shared, now_us: int) -> list[Recommendations]:
    return shared.engine.recommend_many(
        user_ids,
        k=shared.k,
        recent=batch.recent,
        excluded=batch.excluded,
        exclude=shared.exclude,
        category=shared.category,
        include_seen=shared.include_seen,
        catalog=shared.catalog,
        trending=shared.trending,
        now_us=now_us,
    )


def _settle(answer: asyncio.Future[Recommendations], outcome: Recommendations | Exception) -> None:
    if answer.done():  # the request was cancelled meanwhile (its client went away)
        return
    if isinstance(outcome, Exception):
        answer.set_exception(outcome)
    else:
        answer.set_result(outcome)
