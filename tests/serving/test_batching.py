"""Concurrent recommendation requests share engine calls, and each still gets its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import replace
from typing import Any

import pytest
from serving_support import Api
from shop import NOW, Models, base_settings, items_of

from recsvc.engine import Engine, RecentEvent, Recommendations
from recsvc.errors import InputError
from recsvc.state import unix_micros
from serving.batching import RecommendationBatcher, Shared

pytestmark = pytest.mark.anyio

NOW_US = unix_micros(NOW)


class CountingEngine(Engine):
    """The real engine, recording the users of each `recommend_many` call; a call with the
    user `breaking` fails, as a bug triggered by one user's data would."""

    calls: list[list[str]]
    breaking = "user-whose-data-breaks-the-engine"

    def recommend_many(self, user_ids: Sequence[str], **kwargs: Any) -> list[Recommendations]:
        self.calls.append(list(user_ids))
        if self.breaking in user_ids:
            raise RuntimeError("broken by one user's data")
        return super().recommend_many(user_ids, **kwargs)


@pytest.fixture
def engine(models: Models) -> CountingEngine:
    engine = CountingEngine(models.first, "v000001", base_settings())
    engine.calls = []
    return engine


def shared(engine: Engine, **changes: Any) -> Shared:
    plain = Shared(
        engine=engine,
        catalog=engine.catalog,
        k=5,
        exclude=frozenset(),
        category=None,
        include_seen=False,
        trending=(),
    )
    return replace(plain, **changes)


def viewed(*items: str) -> list[RecentEvent]:
    return [RecentEvent(item, "view", NOW_US - 1_000_000) for item in items]


def alone(
    engine: Engine, user_id: str, options: Shared, recent: Sequence[RecentEvent], excluded: Collection[str]
) -> Recommendations:
    return engine.recommend(
        user_id,
        k=options.k,
        recent=recent,
        excluded=excluded,
        exclude=options.exclude,
        category=options.category,
        include_seen=options.include_seen,
        catalog=options.catalog,
        trending=options.trending,
        now_us=NOW_US,
    )


async def test_requests_of_one_turn_share_one_call_and_each_gets_what_it_would_alone(
    engine: CountingEngine,
) -> None:
    batches: list[int] = []
    batcher = RecommendationBatcher(lambda: NOW_US, batches.append)
    b_items = sorted(items_of("B"))
    requests = [
        ("gA-u1", viewed(*b_items[:4]), set()),  # a known user whose fresh events pull towards B
        ("gA-u2", (), {sorted(items_of("A"))[0]}),  # a known user with a dismissed item
        ("gB-u3", (), set()),
        ("nobody-new", viewed(*b_items[4:7]), set()),  # a user the model has never seen
    ]
    options = shared(engine)

    answers = await asyncio.gather(
        *(
            batcher.recommend(user, options, recent=recent, excluded=dismissed)
            for user, recent, dismissed in requests
        )
    )

    assert engine.calls == [[user for user, _, _ in requests]] and batches == [4]
    engine.calls.clear()
    expected = [alone(engine, user, options, recent, dismissed) for user, recent, dismissed in requests]
    assert answers == expected
    assert [answer.strategy for answer in answers] == ["realtime", "personalized", "personalized", "realtime"]


async def test_a_user_asked_twice_and_requests_that_differ_go_to_separate_calls(
    engine: CountingEngine,
) -> None:
    batcher = RecommendationBatcher(lambda: NOW_US, lambda size: None)
    same, other_k, in_a = shared(engine), shared(engine, k=3), shared(engine, category="A")

    answers = await asyncio.gather(
        batcher.recommend("gA-u1", same, recent=viewed(min(items_of("B"))), excluded=()),
        batcher.recommend("gA-u1", same, recent=(), excluded=()),
        batcher.recommend("gB-u1", same, recent=(), excluded=()),
        batcher.recommend("gB-u1", other_k, recent=(), excluded=()),
        batcher.recommend("gB-u2", in_a, recent=(), excluded=()),
    )

    assert sorted(engine.calls) == [["gA-u1"], ["gA-u1", "gB-u1"], ["gB-u1"], ["gB-u2"]]
    assert answers[0].strategy == "realtime" and answers[1].strategy == "personalized"
    assert len(answers[3].items) == 3
    assert {item.category for item in answers[4].items} == {"A"}


async def test_an_engine_error_reaches_only_the_requests_that_cause_it(engine: CountingEngine) -> None:
    batcher = RecommendationBatcher(lambda: NOW_US, lambda size: None)
    broken = shared(engine, k=0)  # the engine refuses k=0 (the API never lets one through)
    options = shared(engine)

    outcomes = await asyncio.gather(
        batcher.recommend("gA-u1", broken, recent=(), excluded=()),
        batcher.recommend("gA-u2", broken, recent=(), excluded=()),
        batcher.recommend("gA-u3", options, recent=(), excluded=()),
        batcher.recommend(engine.breaking, options, recent=(), excluded=()),
        batcher.recommend("gB-u1", options, recent=(), excluded=()),
        return_exceptions=True,
    )

    assert [type(outcome) for outcome in outcomes] == [
        InputError,
        InputError,
        Recommendations,
        RuntimeError,
        Recommendations,
    ]
    assert engine.calls[-4:] == [["gA-u3", engine.breaking, "gB-u1"], ["gA-u3"], [engine.breaking], ["gB-u1"]]
    engine.calls.clear()
    assert outcomes[4] == alone(engine, "gB-u1", options, (), ())


async def test_a_request_cancelled_while_queued_leaves_the_others_answered(engine: CountingEngine) -> None:
    batcher = RecommendationBatcher(lambda: NOW_US, lambda size: None)
    options = shared(engine)
    gone = asyncio.ensure_future(batcher.recommend("gA-u1", options, recent=(), excluded=()))
    staying = asyncio.ensure_future(batcher.recommend("gA-u2", options, recent=(), excluded=()))
    await asyncio.sleep(0)  # both are queued
    gone.cancel()

    answer = await staying

    assert gone.cancelled() and engine.calls == [["gA-u1", "gA-u2"]]
    assert answer.items == alone(engine, "gA-u2", options, (), ()).items


async def test_concurrent_api_requests_are_answered_as_one_at_a_time(api: Api) -> None:
    users = [f"g{group}-u{n}" for group in "AB" for n in range(6)] + ["someone-new"]

    async def ask(user: str) -> dict[str, Any]:
        response = await api.app_client.get(f"/v1/users/{user}/recommendations", params={"k": 5})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return {key: value for key, value in body.items() if key != "request_id"}

    together = await asyncio.gather(*(ask(user) for user in users))
    one_by_one = [await ask(user) for user in users]

    assert together == one_by_one
    metrics = (await api.anonymous.get("/metrics")).text
    assert f"recsvc_recommendation_batch_users_sum {2 * len(users)}.0" in metrics
    calls = float(metrics.split("recsvc_recommendation_batch_users_count ")[1].split()[0])
    assert calls < 2 * len(users)  # the concurrent ones shared calls
