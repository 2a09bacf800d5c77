"""Reading recommendations: for a user, similar to an item, and what is popular now.

Each request reads what it needs from Redis in one round trip (a user's state and the catalog
overrides' version in one pipeline, beside trending when needed; the overrides themselves only
when their version moved), then asks the engine, which is synchronous and fast enough to run
on the event loop; concurrent requests share one engine call (`serving.batching`). When Redis
fails the answer comes from the model alone, with `realtime: false`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query

from recsvc.engine import Recommendation, Recommendations
from serving.batching import Shared
from serving.deps import AppKey, ItemIdPath, K, ModelDep, RequestId, Services, ServicesDep, UserIdPath
from serving.errors import ServiceUnavailable, invalid
from serving.openapi import AUTH, problems
from serving.responses import SchemaResponse
from serving.schemas import PopularPublic, RecommendationPublic, RecommendationsPublic, SimilarPublic

router = APIRouter(prefix="/v1", tags=["recommendations"])

T = TypeVar("T")
# A forgotten user is served as if the model had never seen them: as an id no model holds
# (training drops empty ids), with only the events recorded since they were forgotten.
_NOBODY = ""
# Trending items fetched beyond k, so that filtered ones (unavailable, seen) leave enough.
_TRENDING_MARGIN = 20

Category = Annotated[
    str | None,
    Query(min_length=1, max_length=256, description="only items of this category", examples=["shoes"]),
]
Exclude = Annotated[
    list[str],
    Query(description="item ids never to return (repeat the parameter)", examples=[["i1", "i2"]]),
]
IncludeSeen = Annotated[
    bool, Query(description="also return items the user already interacted with", examples=[False])
]


@router.get(
    "/users/{user_id:path}/recommendations",
    response_model=RecommendationsPublic,
    summary="Recommendations for a user",
    responses=problems(*AUTH, 422, 503),
)
async def recommendations(
    _: AppKey,
    user_id: UserIdPath,
    model: ModelDep,
    services: ServicesDep,
    request_id: RequestId,
    k: K,
    category: Category = None,
    exclude: Exclude = [],  # noqa: B006 (FastAPI copies defaults per request)
    include_seen: IncludeSeen = False,
) -> SchemaResponse:
    """The top `k` items for `user_id`, folding in their events of the last moments.

    An unknown user is not an error: they get trending and popular items with `known_user: false`.
    """
    _check_exclude(exclude, services)
    engine = model.engine
    known = user_id in engine.artifact.user_ids
    trending_k = k + len(exclude) + _TRENDING_MARGIN
    store = services.store
    request_state, trending = await asyncio.gather(
        _optional(services, "user_state", store.request_state(user_id)),
        _optional(services, "trending", store.trending(trending_k, category)) if not known else _nothing(),
    )
    state = None
    if request_state is not None:
        state, catalog_version = request_state
        await _optional(services, "catalog_overrides", services.catalogs.sync(store, catalog_version))
    if state is not None and state.forgotten and trending is None:
        trending = await _optional(services, "trending", services.store.trending(trending_k, category))
    result = await services.batcher.recommend(
        _NOBODY if state is not None and state.forgotten else user_id,
        Shared(
            engine=engine,
            catalog=services.catalogs.catalog(engine),
            k=k,
            exclude=frozenset(exclude),
            category=category,
            include_seen=include_seen,
            trending=tuple(trending or ()),
        ),
        recent=state.recent if state is not None else (),
        excluded=state.dismissed if state is not None else (),
    )
    services.metrics.recommendations.labels(endpoint="recommendations", strategy=result.strategy).inc()
    return SchemaResponse(_recommendations(result, user_id, request_id, realtime=state is not None))


@router.get(
    "/items/{item_id:path}/similar",
    response_model=SimilarPublic,
    summary="Items similar to an item",
    responses=problems(*AUTH, 404, 422, 503),
)
async def similar(
    _: AppKey,
    item_id: ItemIdPath,
    model: ModelDep,
    services: ServicesDep,
    request_id: RequestId,
    k: K,
    category: Category = None,
) -> SchemaResponse:
    """Items bought and viewed by the same people as `item_id` (404 for an item the model lacks)."""
    catalog_version = await _optional(
        services, "catalog_overrides", services.catalogs.refresh(services.store)
    )
    engine = model.engine
    items = engine.similar(item_id, k=k, category=category, catalog=services.catalogs.catalog(engine))
    services.metrics.recommendations.labels(endpoint="similar", strategy="personalized").inc()
    return SchemaResponse(
        SimilarPublic(
            request_id=request_id,
            item_id=item_id,
            model_version=model.version,
            realtime=catalog_version is not None,
            items=_items(items),
        )
    )


@router.get(
    "/popular",
    response_model=PopularPublic,
    summary="Trending and popular items",
    responses=problems(*AUTH, 422, 503),
)
async def popular(
    _: AppKey,
    model: ModelDep,
    services: ServicesDep,
    request_id: RequestId,
    k: K,
    category: Category = None,
    exclude: Exclude = [],  # noqa: B006 (FastAPI copies defaults per request)
) -> SchemaResponse:
    """Items trending in recent events (from Redis), topped up by the model's overall popularity."""
    _check_exclude(exclude, services)
    store = services.store
    _overrides_version, trending = await asyncio.gather(
        _optional(services, "catalog_overrides", services.catalogs.refresh(store)),
        _optional(services, "trending", store.trending(k + len(exclude) + _TRENDING_MARGIN, category)),
    )
    engine = model.engine
    items = engine.popular(
        k=k,
        category=category,
        catalog=services.catalogs.catalog(engine),
        trending=trending or (),
        exclude=exclude,
    )
    services.metrics.recommendations.labels(endpoint="popular", strategy="popular").inc()
    return SchemaResponse(
        PopularPublic(
            request_id=request_id,
            category=category,
            model_version=model.version,
            realtime=trending is not None,
            items=_items(items),
        )
    )


async def _nothing() -> None:
    return None


async def _optional(services: Services, operation: str, call: Awaitable[T]) -> T | None:
    """The call's result, or None (counted and logged) when Redis fails."""
    try:
        with services.guarded(operation):
            return await call
    except ServiceUnavailable:
        return None


def _check_exclude(exclude: Sequence[str], services: Services) -> None:
    limit = services.settings.serving.max_batch
    if len(exclude) > limit:
        raise invalid(["query", "exclude"], f"at most {limit} excluded items, got {len(exclude)}")


def _items(items: Sequence[Recommendation]) -> list[RecommendationPublic]:
    return [
        RecommendationPublic(
            item_id=item.item_id,
            score=item.score,
            title=item.title,
            category=item.category,
            price=item.price,
            url=item.url,
            image_url=item.image_url,
        )
        for item in items
    ]


def _recommendations(
    result: Recommendations, user_id: str, request_id: str, *, realtime: bool
) -> RecommendationsPublic:
    return RecommendationsPublic(
        request_id=request_id,
        user_id=user_id,
        model_version=result.model_version,
        strategy=result.strategy,
        known_user=result.known_user,
        realtime=realtime,
        items=_items(result.items),
    )
