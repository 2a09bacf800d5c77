"""The `recsvc` command: a thin argparse shell whose subcommands come from every layer.

Layers above `recsvc` (training, serving, notifier) register their subcommands through the
`recsvc.commands` entry-point group, so this bottom layer never imports them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from recsvc.config import Settings, load_settings
from recsvc.errors import ConfigError, NotFoundError, RecsvcError
from recsvc.redis_conn import redis_url, stop_embedded
from recsvc.registry import Registry
from recsvc.report import fmt, metrics_table

Handler = Callable[[argparse.Namespace, Settings], int]
Subparsers = Any  # argparse's _SubParsersAction is private


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts, so `--config` may follow the subcommand name."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML config file (default: $RECSVC_CONFIG or configs/default.toml)",
    )
    return parent


def registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, help="model registry folder (default: [registry] dir)")


def open_registry(args: argparse.Namespace, settings: Settings) -> Registry:
    return Registry(args.registry or settings.registry.dir)


def positive_int(text: str) -> int:
    """An argparse type for counts: 0 or less is refused rather than taken as "the default"."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port_number(text: str) -> int:
    """An argparse type for a TCP port (1-65535)."""
    value = positive_int(text)
    if value > 65_535:
        raise argparse.ArgumentTypeError(f"ports go up to 65535, got {value}")
    return value


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _existing_registry(args: argparse.Namespace, settings: Settings) -> Registry:
    """The registry a `models` command reads or changes: a folder that is not there is an error
    (a mistyped `--registry`, most likely), and is never created."""
    registry = open_registry(args, settings)
    if not registry.root.exists():
        raise NotFoundError(f"no model registry at {registry.root}: nothing has been published there")
    return registry


def _models_list(args: argparse.Namespace, settings: Settings) -> int:
    registry = _existing_registry(args, settings)
    rows = [
        {
            "version": info.version,
            "current": info.current,
            "created_at": info.created_at.isoformat(timespec="seconds") if info.created_at else None,
            "metrics": info.manifest.get("metrics", {}),
            "error": info.error,  # why a broken version cannot be served; None for a sound one
        }
        for info in registry.versions()
    ]
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no models in {registry.root}")
        return 0
    metric = settings.evaluation.promote_metric
    print(f"{'':2}{'version':<10}{'created (UTC)':<28}{metric + ' model':>16}{'popularity':>12}")
    for row in rows:
        if row["error"] is not None:
            print(f"{'*' if row['current'] else ' ':2}{row['version']:<10}BROKEN: {row['error']}")
            continue
        model = row["metrics"].get("model", {}).get(metric)
        popular = row["metrics"].get("popularity", {}).get(metric)
        print(
            f"{'*' if row['current'] else ' ':2}{row['version']:<10}{row['created_at']:<28}"
            f"{fmt(model):>16}{fmt(popular):>12}"
        )
    return 0


def _models_show(args: argparse.Namespace, settings: Settings) -> int:
    registry = _existing_registry(args, settings)
    manifest = registry.manifest(args.version)
    if args.json:
        print_json(manifest)
        return 0
    print(f"version {args.version}{' (current)' if registry.current() == args.version else ''}")
    print(f"created {manifest.get('created_at')}")
    print("parameters: " + json.dumps(manifest.get("parameters", {}).get("model")), end=" ")
    print(json.dumps({k: v for k, v in manifest.get("parameters", {}).items() if k != "event_weights"}))
    data = manifest.get("data", {})
    print(f"data: {data.get('events')} events, {data.get('users')} users, {data.get('items')} items")
    metrics = manifest.get("metrics", {})
    print(metrics_table(metrics.get("model", {}), metrics.get("popularity", {})))
    print("index: " + json.dumps(manifest.get("index", {})))
    return 0


def _models_promote(args: argparse.Namespace, settings: Settings) -> int:
    registry = _existing_registry(args, settings)
    registry.promote(args.version)
    print(f"current model: {registry.current()}")
    return 0


def _models_rollback(args: argparse.Namespace, settings: Settings) -> int:
    registry = _existing_registry(args, settings)
    print(f"current model: {registry.rollback()}")
    return 0


def _register_models(subparsers: Subparsers, parent: argparse.ArgumentParser) -> None:
    models = subparsers.add_parser("models", help="list, inspect, promote and roll back model versions")
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list", parents=[parent], help="every version, oldest first; broken ones marked with why"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(handler=_models_list)
    show = actions.add_parser("show", parents=[parent], help="one version's manifest")
    show.add_argument("version")
    show.add_argument("--json", action="store_true", help="print the manifest as JSON")
    show.set_defaults(handler=_models_show)
    promote = actions.add_parser(
        "promote", parents=[parent], help="make a version current (atomic; it must load)"
    )
    promote.add_argument("version")
    promote.set_defaults(handler=_models_promote)
    rollback = actions.add_parser("rollback", parents=[parent], help="return to the previous current")
    rollback.set_defaults(handler=_models_rollback)
    for parser in (listing, show, promote, rollback):
        registry_option(parser)


def _register_redis(subparsers: Subparsers, parent: argparse.ArgumentParser) -> None:
    embedded = subparsers.add_parser("redis", help="the embedded Redis, used when no Redis URL is set")
    actions = embedded.add_subparsers(dest="action", required=True)
    stop = actions.add_parser(
        "stop",
        parents=[parent],
        help="stop it, saving first: it outlives the processes that use it, so their data stays",
    )
    stop.set_defaults(handler=_redis_stop)


def _redis_stop(_: argparse.Namespace, settings: Settings) -> int:
    if redis_url(settings) is not None:
        print("recsvc: REDIS_URL or [redis] url is set, so no embedded Redis is in use", file=sys.stderr)
        return 1
    path = settings.redis.embedded_path
    if stop_embedded(path):
        print(f"stopped the embedded Redis of {path}; its data is kept for the next start")
    else:
        print(f"no embedded Redis of {path} is running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full parser: built-in subcommands plus every registered layer's."""
    parent = common_options()
    parser = argparse.ArgumentParser(prog="recsvc", parents=[parent], description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _register_models(subparsers, parent)
    _register_redis(subparsers, parent)
    for entry in sorted(entry_points(group="recsvc.commands"), key=lambda e: e.name):
        entry.load()(subparsers, parent)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load settings, run the chosen handler; deliberate errors print without a traceback."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(getattr(args, "config", None))
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        handler: Handler = args.handler
        return handler(args, settings)
    except ConfigError as exc:
        print(f"recsvc: {exc.detail}", file=sys.stderr)
        return 2
    except RecsvcError as exc:
        print(f"recsvc: {exc.detail}", file=sys.stderr)
        return 1
    except OSError as exc:  # the system's answer about a path the user gave: a file, not a folder...
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"recsvc: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, past a command's own graceful stop
        print("recsvc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
