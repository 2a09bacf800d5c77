"""The uvicorn factory (`serving.asgi:app`, with `--factory`): one app per worker process.

Everything comes from the environment `recsvc serve` prepared: `RECSVC_CONFIG` and `RECSVC_*`
overrides for settings, `REDIS_URL` for Redis.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

from recsvc.config import load_settings
from recsvc.gc_tuning import tune_collector
from serving.app import create_app


def app() -> FastAPI:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    application = create_app(settings)
    tune_collector()  # the app exists; the model loads later, in the lifespan (see `tune_collector`)
    return application
