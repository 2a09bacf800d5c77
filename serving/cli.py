"""`recsvc serve`: the HTTP API under uvicorn, registered through the `recsvc.commands` entry point.

uvicorn builds the app in each worker process from `serving.asgi:app`, so everything a worker
needs travels in the environment: the config file (`RECSVC_CONFIG`), the registry folder and
the Redis URL. Without a Redis URL an embedded Redis is started here, once, in the supervising
process, and every worker connects to it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import uvicorn

from recsvc.cli import registry_option
from recsvc.config import CONFIG_ENV, Settings, config_path
from recsvc.redis_conn import REDIS_URL_ENV, ensure_redis

REGISTRY_ENV = "RECSVC_REGISTRY__DIR"


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    serve = subparsers.add_parser(
        "serve", parents=[parent], help="run the HTTP API (recommendations, events, admin)"
    )
    serve.add_argument("--host", help="interface to listen on (default: [serving] host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: [serving] port)")
    serve.add_argument("--workers", type=int, help="uvicorn worker processes (default: [serving] workers)")
    registry_option(serve)
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace, settings: Settings) -> int:
    host = args.host or settings.serving.host
    port = args.port or settings.serving.port
    workers = args.workers or settings.serving.workers
    os.environ[CONFIG_ENV] = str(config_path(getattr(args, "config", None)).resolve())
    if args.registry is not None:
        os.environ[REGISTRY_ENV] = str(Path(args.registry).resolve())
    os.environ[REDIS_URL_ENV] = ensure_redis(settings)
    base = f"http://{host}:{port}"
    print(f"recsvc: serving on {base} with {workers} worker(s); API docs at {base}/docs", flush=True)
    uvicorn.run(
        "serving.asgi:app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
    )
    return 0
