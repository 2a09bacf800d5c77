"""The model this process serves, swapped for a newer one without a restart or a failed request.

`ModelHolder.loaded` is one reference to an immutable `LoadedModel`. A request reads it once
and keeps using that model to the end, so replacing the reference (a single assignment, atomic
in the event loop) never disturbs a request in flight; the old model is freed when the last
request using it finishes. Loading and warming run in a worker thread, never on the loop.

The registry is polled by `watch` (started by the app's lifespan); `refresh` is its run-once
step, which tests call directly. `promote` serves the API's promote route.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from recsvc.config import Settings
from recsvc.engine import Engine
from recsvc.errors import ArtifactError, RecsvcError, RegistryError
from recsvc.registry import Registry

log = logging.getLogger(__name__)

WARM_QUERIES = 3


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One loaded, warmed model version."""

    version: str
    engine: Engine
    loaded_at: float


class ModelHolder:
    """Holds the served model; loads the registry's current version when it changes."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        *,
        on_swap: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.loaded: LoadedModel | None = None
        self._on_swap = on_swap
        self._lock = asyncio.Lock()
        self._failed: str | None = None  # a version that failed to load: not retried until it changes

    @property
    def version(self) -> str | None:
        loaded = self.loaded
        return loaded.version if loaded is not None else None

    async def refresh(self) -> bool:
        """Load and swap in the registry's current version if it is not the one served.

        Returns whether a new model was swapped in. A version that fails to load is logged and
        skipped (the previous model keeps serving) until the registry names another one.
        """
        async with self._lock:  # one load at a time, and never racing a promotion
            current = await asyncio.to_thread(self.registry.current)
            if current is None or current in (self.version, self._failed):
                return False
            try:
                model = await asyncio.to_thread(self._load, current)
            except RecsvcError as exc:
                self._failed = current
                log.error("cannot serve model %s, keeping %s: %s", current, self.version, exc.detail)
                return False
            self._install(model)
            return True

    async def promote(self, version: str) -> LoadedModel:
        """Load `version`, make it the registry's current one, and serve it.

        Loading comes first, so a version that cannot be served is never promoted
        (`RegistryError`); an unknown version is a `NotFoundError`.
        """
        async with self._lock:
            await asyncio.to_thread(self.registry.path, version)
            model = self.loaded
            if model is None or model.version != version:
                try:
                    model = await asyncio.to_thread(self._load, version)
                except ArtifactError as exc:
                    raise RegistryError(f"cannot promote {version}: {exc.detail}", version=version) from exc
            await asyncio.to_thread(self.registry.promote, version)
            self._install(model)
            return model

    def _install(self, model: LoadedModel) -> None:
        previous = self.version
        self.loaded = model  # the swap: requests already running keep their reference
        self._failed = None
        log.info("serving model %s (was %s)", model.version, previous)
        if self._on_swap is not None:
            self._on_swap(model)

    async def watch(self) -> None:
        """Poll the registry every `model_poll_seconds` until cancelled; errors never stop it."""
        while True:
            try:
                await self.refresh()
            except Exception:  # a broken registry file must not end polling for good
                log.exception(
                    "model poll failed; retrying in %.1fs", self.settings.serving.model_poll_seconds
                )
            await asyncio.sleep(self.settings.serving.model_poll_seconds)

    def _load(self, version: str) -> LoadedModel:
        artifact = self.registry.load(version)
        engine = Engine(artifact, version, self.settings)
        _warm(engine)
        return LoadedModel(version=version, engine=engine, loaded_at=time.time())


def _warm(engine: Engine) -> None:
    """Run a few real queries so the first requests do not pay for lazy setup (id maps, pages)."""
    popular = engine.popular(k=WARM_QUERIES)
    for item in popular:
        engine.similar(item.item_id, k=WARM_QUERIES)
    users = engine.artifact.user_ids
    now_us = time.time_ns() // 1_000
    for row in range(min(WARM_QUERIES, len(users))):
        engine.recommend(users.id_at(row), k=WARM_QUERIES, now_us=now_us)
