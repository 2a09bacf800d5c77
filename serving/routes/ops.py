"""For operators and orchestrators: liveness, readiness and Prometheus metrics (no API key)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from serving.deps import ServicesDep
from serving.errors import ServiceUnavailable
from serving.openapi import problems
from serving.schemas import HealthPublic, ReadyPublic

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthPublic, summary="Liveness")
async def healthz() -> HealthPublic:
    """The process is up and its event loop answers."""
    return HealthPublic()


@router.get("/readyz", response_model=ReadyPublic, summary="Readiness", responses=problems(503))
async def readyz(services: ServicesDep) -> ReadyPublic:
    """Ready when a model is loaded and Redis answers; 503 (take it out of the load balancer) otherwise."""
    loaded = services.models.loaded
    redis_ok = await services.store.ping()
    if not redis_ok:
        services.metrics.redis_errors.labels(operation="ping").inc()
    if loaded is None or not redis_ok:
        missing = [
            *(["no model loaded (none promoted yet?)"] if loaded is None else []),
            *(["Redis does not answer"] if not redis_ok else []),
        ]
        raise ServiceUnavailable(
            "not ready: " + "; ".join(missing),
            retry_after=services.settings.serving.retry_after_seconds,
            model_loaded=loaded is not None,
            redis=redis_ok,
        )
    return ReadyPublic(model_version=loaded.version, redis=True)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={
        200: {"content": {"text/plain": {"example": 'recsvc_events_ingested_total{type="view"} 3.0'}}}
    },
)
async def metrics(services: ServicesDep) -> Response:
    """Request latency per route and status, answers per strategy, the served model version,
    events ingested per type and Redis errors, in the Prometheus text format."""
    return Response(services.metrics.render(), media_type=services.metrics.content_type)
