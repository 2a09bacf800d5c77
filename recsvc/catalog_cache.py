"""The catalog with the latest overrides from Redis, fetched again only when their version moves.

Every request asks Redis for the overrides' version (one GET); the whole set of overrides
comes back only when it changed, and is kept here with its version as one tuple, so concurrent
requests never see a version with another version's overrides. `Catalog.with_overrides`
caches the applied view per model, so applying a change costs once per model, not per request.
When Redis is down the last overrides seen keep applying: an item marked unavailable stays so.
"""

from __future__ import annotations

from typing import Any

from recsvc.catalog import Catalog
from recsvc.engine import Engine
from recsvc.state import Store

Overrides = dict[str, dict[str, Any]]


class CatalogCache:
    """The newest catalog overrides this process has seen, with their version."""

    def __init__(self) -> None:
        self._seen: tuple[int, Overrides] | None = None

    @property
    def version(self) -> int | None:
        seen = self._seen
        return seen[0] if seen is not None else None

    async def refresh(self, store: Store) -> int:
        """Fetch the overrides if their version changed; returns the version (store errors propagate)."""
        version, overrides = await store.catalog_overrides(self.version)
        seen = self._seen
        # A slow answer must not replace a newer one another request stored meanwhile.
        if overrides is not None and (seen is None or version >= seen[0]):
            self._seen = (version, overrides)
        return version

    async def sync(self, store: Store, version: int) -> int:
        """`refresh`, for a caller that already read the overrides' version: fetches only on a change."""
        if version == self.version:
            return version
        return await self.refresh(store)

    def catalog(self, engine: Engine) -> Catalog:
        """`engine`'s catalog with the last overrides seen applied."""
        seen = self._seen
        if seen is None:
            return engine.catalog
        return engine.catalog.with_overrides(*seen)
