"""Subcommands of `recsvc` that belong to the training layer: data, train, tune.

Registered through the `recsvc.commands` entry points; each handler parses nothing itself and
calls the Python API in `training.pipeline`, `training.importers`, `training.synth`, `training.tune`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from recsvc.cli import open_registry, positive_int, print_json, registry_option
from recsvc.config import Settings
from recsvc.redis_conn import connect_sync
from training import importers, io, pipeline, profiles, synth, tune


def _import(args: argparse.Namespace, settings: Settings) -> int:
    summary = importers.import_dataset(args.kind, args.src, args.out)
    print(
        f"imported {summary.events:,} events of {summary.users:,} users and {summary.items:,} items "
        f"into {summary.out}"
    )
    for reason, count in sorted(summary.skipped.items()):
        print(f"  skipped {count:,} rows: {reason}")
    return 0


def _synth(args: argparse.Namespace, settings: Settings) -> int:
    config = settings.synth
    summary = synth.synthesize(
        args.out or settings.data.dir,
        users=args.users or config.users,
        items=args.items or config.items,
        events=args.events or config.events,
        categories=args.categories or config.categories,
        days=args.days or config.days,
        seed=config.seed if args.seed is None else args.seed,
        progress=sys.stderr.isatty(),
    )
    print(
        f"wrote {summary.events:,} events of {summary.users:,} users over {summary.items:,} items "
        f"to {args.out or settings.data.dir} in {summary.seconds:.1f}s"
    )
    return 0


def register_data(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    data = subparsers.add_parser("data", help="import real datasets or synthesize one")
    actions = data.add_subparsers(dest="action", required=True)
    imp = actions.add_parser("import", parents=[parent], help="convert a public dataset to canonical events")
    imp.add_argument("kind", choices=["movielens", "taobao", "lastfm"])
    imp.add_argument("src", type=Path, help="the dataset's folder or rating file")
    imp.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    imp.set_defaults(handler=_import)
    gen = actions.add_parser("synth", parents=[parent], help="write a synthetic catalog, profiles and events")
    gen.add_argument("--out", type=Path, help="dataset folder to write (default: [data] dir)")
    for name in ("users", "items", "events", "categories", "days"):
        gen.add_argument(f"--{name}", type=positive_int, help=f"default: [synth] {name}")
    gen.add_argument("--seed", type=int, help="default: [synth] seed")
    gen.set_defaults(handler=_synth)


def _import_users(args: argparse.Namespace, settings: Settings) -> int:
    path = args.path / "users.parquet" if args.path.is_dir() else args.path
    users = io.read_users(path)
    client = connect_sync(settings, timeout=30.0)
    try:
        written = profiles.import_profiles(client, settings, users, demo_devices=args.demo_devices)
    finally:
        client.close()
    devices = " with a demo device each" if args.demo_devices else ""
    print(f"imported {written:,} user profiles{devices} from {path}")
    return 0


def register_users(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    users = subparsers.add_parser("users", help="user profiles in Redis")
    actions = users.add_subparsers(dest="action", required=True)
    imp = actions.add_parser(
        "import",
        parents=[parent],
        help="load profiles from users.parquet/CSV (or a dataset folder) into Redis",
    )
    imp.add_argument("path", type=Path, help="a users file, or a dataset folder holding users.parquet")
    imp.add_argument(
        "--demo-devices",
        action="store_true",
        help="give every user a demo push token (for local runs with the log provider)",
    )
    imp.set_defaults(handler=_import_users)


def _train(args: argparse.Namespace, settings: Settings) -> int:
    result = pipeline.train(
        settings,
        events=args.events,
        items=args.items,
        progress=sys.stderr.isatty(),
    )
    registry = open_registry(args, settings)
    version, promoted, reason = pipeline.publish(
        settings, result, registry, promote=args.promote, promote_if_better=args.promote_if_better
    )
    if args.json:
        print_json({"version": version, "promoted": promoted, "reason": reason, **result.manifest})
        return 0
    data = result.manifest["data"]
    print(f"trained on {data['events']:,} events: {data['users']:,} users x {data['items']:,} items")
    for reason_skipped, count in sorted(data["skipped"].items()):
        print(f"  skipped {count:,} rows: {reason_skipped}")
    print(f"hold-out: {data['split']}; {result.evaluation.users_evaluated:,} users evaluated")
    print(result.evaluation.table())
    index = result.manifest["index"]
    print(f"index: {index['kind']}, recall@{index['recall_k']} {index['recall']:.4f} against exact search")
    print("timings: " + ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in result.timings.items()))
    print(f"version {version} written to {registry.path(version)}; {reason}")
    return 0


def register_train(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    train = subparsers.add_parser("train", parents=[parent], help="train, evaluate and publish a model")
    train.add_argument(
        "--events",
        type=Path,
        nargs="+",
        action="extend",
        help="event files, folders of them, or dataset folders (default: [data] dir)",
    )
    train.add_argument("--items", type=Path, help="item catalog (default: items.parquet of the dataset)")
    registry_option(train)
    how = train.add_mutually_exclusive_group()
    how.add_argument("--promote", action="store_true", help="make the new version current")
    how.add_argument(
        "--promote-if-better",
        action="store_true",
        help="make it current only if it beats the current model on [evaluation] promote_metric",
    )
    train.add_argument("--json", action="store_true", help="print the version and manifest as JSON")
    train.set_defaults(handler=_train)


def _tune(args: argparse.Namespace, settings: Settings) -> int:
    report = tune.tune(settings, events=args.events, trials=args.trials, seed=args.seed)
    if args.json:
        print_json(report.as_dict())
        return 0
    print(report.table())
    print("\nbest configuration (paste into your config file):")
    print(report.best_toml())
    return 0


def register_tune(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "tune", parents=[parent], help="search ALS hyperparameters on a validation split"
    )
    parser.add_argument(
        "--events",
        type=Path,
        nargs="+",
        action="extend",
        help="event files, folders of them, or dataset folders (default: [data] dir)",
    )
    parser.add_argument("--trials", type=positive_int, default=20, help="random-search trials (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search")
    parser.add_argument("--json", action="store_true", help="print every trial as JSON")
    parser.set_defaults(handler=_tune)
