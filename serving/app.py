"""`create_app(settings)`: the whole HTTP API, built on demand and never at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import redis.asyncio as aioredis
from fastapi import FastAPI

from notifier.runner import CampaignRunner
from notifier.store import CampaignStore
from notifier.tracking import Tracker
from recsvc.catalog_cache import CatalogCache
from recsvc.config import Settings
from recsvc.current_model import LoadedModel, ModelHolder
from recsvc.redis_conn import connect_async, open_connections
from recsvc.registry import Registry
from recsvc.state import Store, unix_micros, utc_now
from serving.batching import RecommendationBatcher
from serving.deps import Services
from serving.metrics import Metrics
from serving.middleware import BodyLimitMiddleware, JsonBodyMiddleware, RequestContextMiddleware
from serving.openapi import install_openapi
from serving.problems import install_problem_handlers
from serving.routes import campaigns, dead_letters, events, items, models, ops, push, recommendations, users

ROUTERS = tuple(
    module.router
    for module in (recommendations, events, users, items, push, models, campaigns, dead_letters, ops)
)

log = logging.getLogger(__name__)

CAMPAIGN_REDIS_TIMEOUT_SECONDS = 30.0

DESCRIPTION = """
Personalized recommendations for mobile commerce apps, and the admin surface around them.

Authenticate with `Authorization: Bearer <API key>` or `X-API-Key: <API key>`. Keys have the role
`app` (recommendations, events, feedback, profiles) or `admin` (everything, plus catalog, models
and reading profiles). Every error is an RFC 9457 `application/problem+json` document.
"""

TAGS = [
    {"name": "recommendations", "description": "What to show a user: personal, similar, popular."},
    {"name": "events", "description": "What users do; folded into their next recommendations."},
    {"name": "users", "description": "Profiles and push tokens; forgetting a user."},
    {"name": "push", "description": "Opens and clicks of push messages, reported by the app."},
    {"name": "catalog", "description": "Item changes between trainings (admin)."},
    {"name": "models", "description": "Model versions and promotion (admin)."},
    {
        "name": "campaigns",
        "description": "Push campaigns: segment, schedule, content, rules, results (admin).",
    },
    {"name": "operations", "description": "Health, readiness and metrics (no key)."},
]


def create_app(
    settings: Settings,
    *,
    registry: Registry | None = None,
    redis: aioredis.Redis | None = None,
    clock: Callable[[], datetime] | None = None,
) -> FastAPI:
    """The API over `settings`' registry and Redis (or the ones given).

    Building it connects nothing (Redis connections open on first use, though without a Redis
    URL the embedded server is started); the lifespan loads the current model and starts
    watching the registry.
    """
    client = redis if redis is not None else connect_async(settings)
    metrics = Metrics()
    now = clock or utc_now
    registry = registry or Registry(settings.registry.dir)
    # Campaign work (audiences, previews) reads many users per call: its own client, with a timeout
    # meant for that rather than the recommendation path's.
    campaign_client = (
        redis if redis is not None else connect_async(settings, timeout=CAMPAIGN_REDIS_TIMEOUT_SECONDS)
    )
    holder = ModelHolder(registry, settings, on_swap=lambda model: metrics.served_version(model.version))
    services = Services(
        settings=settings,
        registry=registry,
        models=holder,
        redis=client,
        store=Store(client, settings, clock=now),
        campaigns=CampaignStore(client, settings, clock=now),
        runner=CampaignRunner(campaign_client, settings, holder, clock=now),
        tracker=Tracker(
            client, settings, clock=now, category_of=lambda item_id: services.category_of(item_id)
        ),
        catalogs=CatalogCache(),
        batcher=RecommendationBatcher(lambda: unix_micros(now()), metrics.batch_users.observe),
        metrics=metrics,
        clock=now,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await services.models.refresh()
        except Exception:  # a broken registry must not stop the server; the watcher retries
            log.exception("could not load the current model at start-up")
        await open_connections(client, settings.serving.redis_connections_at_start)
        watcher = asyncio.create_task(services.models.watch(), name="recsvc-model-watcher")
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if redis is None:
                await client.aclose()
                await campaign_client.aclose()

    app = FastAPI(
        title="recsvc",
        version="1",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.services = services
    install_problem_handlers(app)
    install_openapi(app)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(JsonBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.serving.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app


def served_model(app: FastAPI) -> LoadedModel | None:
    """The model an app currently serves (for tests and tools)."""
    services: Services = app.state.services
    return services.models.loaded
