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

import numpy as np
import uvicorn

from recsvc.artifact import ITEM_IDS, USER_IDS
from recsvc.cli import port_number, positive_int, registry_option
from recsvc.config import CONFIG_ENV, Settings, config_path
from recsvc.redis_conn import REDIS_URL_ENV, ensure_redis
from recsvc.registry import Registry

REGISTRY_ENV = "RECSVC_REGISTRY__DIR"


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    serve = subparsers.add_parser(
        "serve", parents=[parent], help="run the HTTP API (recommendations, events, admin)"
    )
    serve.add_argument("--host", help="interface to listen on (default: [serving] host)")
    serve.add_argument("--port", type=port_number, help="port to listen on (default: [serving] port)")
    serve.add_argument(
        "--workers", type=positive_int, help="uvicorn worker processes (default: [serving] workers)"
    )
    registry_option(serve)
    serve.set_defaults(handler=serve_command)


def example_requests(settings: Settings, registry_dir: Path | None, base: str) -> str:
    """Ready-to-paste requests for a user the current model knows (any id works: unknown ones get popular)."""
    registry = Registry(registry_dir or settings.registry.dir)
    current = registry.current()
    user, item = "new-user-1", "<an item id>"
    if current is not None:
        users = np.load(registry.path(current) / USER_IDS, mmap_mode="r", allow_pickle=False)
        items = np.load(registry.path(current) / ITEM_IDS, mmap_mode="r", allow_pickle=False)
        user, item = (str(users[0]) if len(users) else user), (str(items[0]) if len(items) else item)
    key = next((k for k, role in settings.serving.api_keys.items() if role == "app"), "<app key>")
    return (
        f"try:\n  curl -H 'X-API-Key: {key}' '{base}/v1/users/{user}/recommendations?k=5'\n"
        f"  curl -H 'X-API-Key: {key}' -H 'Content-Type: application/json' -X POST {base}/v1/events "
        f'-d \'{{"user_id": "{user}", "item_id": "{item}", "type": "purchase"}}\''
        + ("" if current else "\n  (no model promoted yet: run `recsvc train --promote` first)")
    )


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
    print(example_requests(settings, args.registry, base), flush=True)
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
