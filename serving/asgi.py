"""The uvicorn factory (`serving.asgi:app`, with `--factory`): one app per worker process.

Everything comes from the environment `recsvc serve` prepared: `RECSVC_CONFIG` and `RECSVC_*`
overrides for settings, `REDIS_URL` for Redis.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from threadpoolctl import threadpool_limits

from recsvc.config import load_settings
from recsvc.gc_tuning import tune_collector
from serving.app import create_app


def app() -> FastAPI:
    settings = load_settings()
    # The server's parallelism is its worker processes. A worker's engine calls run batches
    # (`serving.batching`), which FAISS and BLAS would spread over every core, each worker's
    # threads spinning against the others': on 2 cores with 2 workers, 396 requests/s at full
    # load against 990 with one thread each (bench/serve.py, one run each).
    threadpool_limits(1)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    application = create_app(settings)
    tune_collector()  # the app exists; the model loads later, in the lifespan (see `tune_collector`)
    return application
