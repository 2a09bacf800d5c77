"""Catalog changes between trainings: prices, titles, categories and availability."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import AdminKey, ServicesDep, check_id_length
from serving.errors import InvalidRequest, PayloadTooLarge
from serving.openapi import AUTH, problems
from serving.schemas import ItemsUpdate, ItemsUpdated

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.put(
    "/items",
    response_model=ItemsUpdated,
    summary="Update catalog items (admin)",
    responses=problems(400, *AUTH, 413, 415, 422, 503),
)
async def put_items(_: AdminKey, body: ItemsUpdate, services: ServicesDep) -> ItemsUpdated:
    """Merge the given fields into each item; absent fields keep their value.

    Every server applies the change on its next request: an item with `available: false` is
    never recommended from then on, until it is made available again.
    """
    settings = services.settings
    if len(body.items) > settings.serving.max_batch:
        raise PayloadTooLarge(
            f"at most {settings.serving.max_batch} items per request, got {len(body.items)}",
            limit=settings.serving.max_batch,
        )
    errors = [
        error
        for position, item in enumerate(body.items)
        if (error := check_id_length(["body", "items", position, "item_id"], item.item_id, settings))
    ]
    if errors:
        raise InvalidRequest(errors)
    updates = [item.model_dump(exclude_unset=True) for item in body.items]
    with services.guarded("upsert_items"):
        await services.store.upsert_items(updates)
        await services.catalogs.refresh(services.store)
    return ItemsUpdated(updated=len({item.item_id for item in body.items}))
