"""Fixtures shared by every suite: settings isolated in a temp folder, the real datasets, a real Redis."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from shop import NOW, ManualClock, base_settings

from recsvc.config import Settings, load_settings
from recsvc.redis_conn import REDIS_URL_ENV, connect_sync, start_embedded, stop_embedded

REPO = Path(__file__).resolve().parents[1]


def find_shared_data() -> Path:
    """`shared/data` beside the checkout (CI clones the repo with shared/ next to it)."""
    for parent in REPO.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"no shared/data folder above {REPO}: the real datasets are missing")


@pytest.fixture(autouse=True)
def untuned_collector() -> Iterator[None]:
    """The collector's thresholds and frozen objects restored after each test: a test that runs an
    entry point in-process (`recsvc worker`, `campaigns run`) tunes them (`recsvc.gc_tuning`)."""
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    yield
    gc.set_threshold(*thresholds)
    if frozen == 0:
        gc.unfreeze()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return find_shared_data()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The shipped defaults with every folder redirected into this test's temp dir."""
    monkeypatch.setenv("RECSVC_DATA__DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECSVC_REGISTRY__DIR", str(tmp_path / "models"))
    monkeypatch.setenv("RECSVC_REDIS__EMBEDDED_PATH", str(tmp_path / "redis" / "recsvc.db"))
    return load_settings(REPO / "configs" / "default.toml")


# --- Redis: one real server per run; each test under its own key prefix ---------------------------


@pytest.fixture(scope="session")
def redis_key_prefix() -> str:
    """Prefix of every key this run writes, so runs sharing a server (CI) never meet."""
    return f"recsvc-test-{uuid.uuid4().hex}"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory, redis_key_prefix: str) -> Iterator[str]:
    """`REDIS_URL` when set (this run's keys are deleted at the end), else one embedded server."""
    url = os.environ.get(REDIS_URL_ENV)
    if url:
        yield url
        client = redis.Redis.from_url(url)
        try:
            doomed = list(client.scan_iter(match=f"{redis_key_prefix}*", count=1_000))
            for start in range(0, len(doomed), 1_000):
                client.delete(*doomed[start : start + 1_000])
        finally:
            client.close()
        return
    db = tmp_path_factory.mktemp("redis") / "tests.db"
    yield start_embedded(db)
    stop_embedded(db)


@pytest.fixture
def redis_settings(settings: Settings, redis_url: str, redis_key_prefix: str) -> Settings:
    """`settings` using the run's Redis, under a key prefix no other test uses."""
    prefix = f"{redis_key_prefix}:{uuid.uuid4().hex[:12]}"
    return settings.model_copy(
        update={"redis": settings.redis.model_copy(update={"url": redis_url, "prefix": prefix})}
    )


@pytest.fixture
def redis_client(redis_settings: Settings) -> Iterator[redis.Redis]:
    """A blocking client of the run's Redis, closed after the test."""
    client = connect_sync(redis_settings)
    yield client
    client.close()


# --- the planted shop (see `shop`), for the API and notifier suites -------------------------------


@pytest.fixture
def shop_settings(redis_settings: Settings) -> Settings:
    """The planted shop's model settings and test keys over the run's Redis and this test's folders."""
    base = base_settings()
    return redis_settings.model_copy(update={"serving": base.serving, "training": base.training})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio runs on asyncio only


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)
