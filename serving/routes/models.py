"""The model registry over HTTP: list versions, promote one (this server swaps to it at once)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path

from recsvc.registry import Registry
from serving.deps import AdminKey, ServicesDep
from serving.openapi import AUTH, problems
from serving.schemas import ModelPublic, ModelsPublic, PromotedPublic

router = APIRouter(prefix="/v1/models", tags=["models"])

Version = Annotated[str, Path(pattern=r"^v\d{6,}$", examples=["v000004"])]


@router.get("", response_model=ModelsPublic, summary="List model versions (admin)", responses=problems(*AUTH))
async def list_models(_: AdminKey, services: ServicesDep) -> ModelsPublic:
    """Every published version, oldest first, with its evaluation metrics.

    A broken version (empty, half copied, a corrupt manifest) is listed with `error` saying why;
    it never fails the listing. A registry folder that does not exist yet lists no versions.
    """
    current, versions = await asyncio.to_thread(_versions, services.registry)
    serving = services.models.version
    return ModelsPublic(
        current=current,
        serving=serving,
        versions=[model.model_copy(update={"serving": model.version == serving}) for model in versions],
    )


@router.post(
    "/{version}/promote",
    response_model=PromotedPublic,
    summary="Promote a model version (admin)",
    responses=problems(*AUTH, 404, 409, 422),
)
async def promote(_: AdminKey, version: Version, services: ServicesDep) -> PromotedPublic:
    """Make `version` current in the registry; this server serves it before answering.

    The version is loaded first, so one that cannot be served is never promoted. Other servers
    pick it up on their next poll of the registry.
    """
    previous = await asyncio.to_thread(services.registry.current)
    loaded = await services.models.promote(version)
    return PromotedPublic(version=version, previous=previous, serving=loaded.version)


def _versions(registry: Registry) -> tuple[str | None, list[ModelPublic]]:
    infos = registry.versions()
    return registry.current(), [
        ModelPublic(
            version=info.version,
            created_at=info.created_at,
            current=info.current,
            serving=False,
            metrics=info.manifest.get("metrics", {}),
            error=info.error,
        )
        for info in infos
    ]
