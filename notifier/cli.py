"""`recsvc campaigns ...`: marketers' campaign commands, the same operations as `/v1/campaigns`.

Campaign files are JSON or TOML documents of a `CampaignSpec` (see `configs/campaigns/`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from notifier import dead_letters
from notifier.campaign import CampaignSpec
from notifier.runner import CampaignRunner, manual_run_id
from notifier.scheduler import run_scheduler
from notifier.stats import campaign_stats
from notifier.store import CampaignStore
from notifier.worker import run_worker
from recsvc.cli import positive_int, print_json
from recsvc.config import Settings
from recsvc.current_model import ModelHolder
from recsvc.errors import InputError
from recsvc.gc_tuning import tune_collector
from recsvc.keys import Keys
from recsvc.redis_conn import connect_async
from recsvc.registry import Registry
from recsvc.state import utc_now

# A campaign run writes thousands of messages per transaction: far beyond the API's Redis timeout.
COMMAND_REDIS_TIMEOUT_SECONDS = 60.0

Action = Callable[[argparse.Namespace, Settings, aioredis.Redis], Awaitable[Any]]


def read_campaign_file(path: Path) -> tuple[str | None, CampaignSpec]:
    """A campaign file's optional `id` and its validated spec; errors name the file and the field."""
    try:
        raw = path.read_text(encoding="utf-8")
        document = tomllib.loads(raw) if path.suffix == ".toml" else json.loads(raw)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: {exc}", path=str(path)) from exc
    campaign_id = document.pop("id", None)
    try:
        return (campaign_id if isinstance(campaign_id, str) else None), CampaignSpec.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise InputError(f"{path}: {problems}", path=str(path)) from exc


async def _create(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    file_id, spec = read_campaign_file(args.file)
    campaign = await CampaignStore(client, settings).create(spec, args.id or file_id)
    return campaign.model_dump(mode="json")


async def _replace(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    _, spec = read_campaign_file(args.file)
    campaign = await CampaignStore(client, settings).replace(args.campaign_id, spec)
    return campaign.model_dump(mode="json")


async def _list(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    return [
        {"id": c.id, "name": c.name, "status": c.status, "fires": _fires(c.model_dump(mode="json"))}
        for c in await CampaignStore(client, settings).list()
    ]


async def _show(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    return (await CampaignStore(client, settings).get(args.campaign_id)).model_dump(mode="json")


async def _pause(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    campaign = await CampaignStore(client, settings).set_status(args.campaign_id, "paused")
    return {"id": campaign.id, "status": campaign.status}


async def _resume(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    campaign = await CampaignStore(client, settings).set_status(args.campaign_id, "active")
    return {"id": campaign.id, "status": campaign.status}


async def _delete(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    await CampaignStore(client, settings).delete(args.campaign_id)
    return {"id": args.campaign_id, "deleted": True}


async def _stats(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    await CampaignStore(client, settings).get(args.campaign_id)
    return await campaign_stats(client, Keys(settings.redis.prefix), args.campaign_id)


async def _runner(settings: Settings, client: aioredis.Redis) -> CampaignRunner:
    """A runner over the registry's current model."""
    models = ModelHolder(Registry(settings.registry.dir), settings)
    await models.refresh()
    return CampaignRunner(client, settings, models)


async def _run(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    tune_collector()  # this process executes a run, as the scheduler's does
    campaign = await CampaignStore(client, settings).get(args.campaign_id)
    runner = await _runner(settings, client)
    summary = await runner.run(campaign, args.run_id or manual_run_id(utc_now()))
    return asdict(summary)


async def _preview(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    campaign = await CampaignStore(client, settings).get(args.campaign_id)
    return asdict(await (await _runner(settings, client)).preview(campaign, args.user))


async def _audience(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    campaign = await CampaignStore(client, settings).get(args.campaign_id)
    return asdict(await (await _runner(settings, client)).audience(campaign.segment, campaign.id))


def _fires(campaign: dict[str, Any]) -> str:
    if campaign.get("trigger"):
        trigger = campaign["trigger"]
        return f"{trigger['delay_minutes']:g} min after {trigger['event']}"
    schedule = campaign.get("schedule")
    if not schedule:
        return "on demand"
    details = {key: value for key, value in schedule.items() if key != "kind" and value is not None}
    return f"{schedule['kind']} " + " ".join(f"{key}={value}" for key, value in details.items())


def run_action(action: Action) -> Callable[[argparse.Namespace, Settings], int]:
    """A CLI handler that runs `action` with a Redis client and prints its result as JSON."""

    def handler(args: argparse.Namespace, settings: Settings) -> int:
        async def main() -> Any:
            client = connect_async(settings, timeout=COMMAND_REDIS_TIMEOUT_SECONDS)
            try:
                return await action(args, settings, client)
            finally:
                await client.aclose()

        print_json(asyncio.run(main()))
        return 0

    return handler


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    campaigns = subparsers.add_parser("campaigns", help="push campaigns: define, pause, run, results")
    actions = campaigns.add_subparsers(dest="action", required=True)

    create = actions.add_parser("create", parents=[parent], help="create a campaign from a JSON/TOML file")
    create.add_argument("file", type=Path)
    create.add_argument("--id", help="campaign id (default: the file's `id`, else made from the name)")
    create.set_defaults(handler=run_action(_create))
    replace = actions.add_parser("replace", parents=[parent], help="replace a campaign's definition")
    replace.add_argument("campaign_id")
    replace.add_argument("file", type=Path)
    replace.set_defaults(handler=run_action(_replace))
    actions.add_parser("list", parents=[parent], help="every campaign").set_defaults(
        handler=run_action(_list)
    )
    for name, action, text in (
        ("show", _show, "one campaign's definition"),
        ("pause", _pause, "stop runs and triggers until resumed"),
        ("resume", _resume, "resume a paused campaign"),
        ("delete", _delete, "delete a campaign, its runs and statistics"),
        ("stats", _stats, "results per run and in total"),
    ):
        command = actions.add_parser(name, parents=[parent], help=text)
        command.add_argument("campaign_id")
        command.set_defaults(handler=run_action(action))
    run = actions.add_parser("run", parents=[parent], help="run a campaign now, in this process")
    run.add_argument("campaign_id")
    run.add_argument("--run-id", help="resume or repeat this run (default: a new id from the time)")
    run.set_defaults(handler=run_action(_run))
    preview = actions.add_parser(
        "preview", parents=[parent], help="what one user would get now, and why (writes nothing)"
    )
    preview.add_argument("campaign_id")
    preview.add_argument("--user", required=True, help="the user id")
    preview.set_defaults(handler=run_action(_preview))
    audience = actions.add_parser("audience", parents=[parent], help="how many users the segment reaches")
    audience.add_argument("campaign_id")
    audience.set_defaults(handler=run_action(_audience))


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    tune_collector()
    asyncio.run(run_worker(settings, burst=args.burst))
    return 0


def _scheduler(args: argparse.Namespace, settings: Settings) -> int:
    tune_collector()  # before the model loads: a model swapped out later must stay collectable
    asyncio.run(run_scheduler(settings))
    return 0


def register_scheduler(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    scheduler = subparsers.add_parser(
        "scheduler",
        parents=[parent],
        help="fire campaigns, triggered pushes and housekeeping on schedule (one leads at a time)",
    )
    scheduler.set_defaults(handler=_scheduler)


def register_worker(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    worker = subparsers.add_parser(
        "worker", parents=[parent], help="deliver pushes from the outbox (start any number of them)"
    )
    worker.add_argument("--burst", action="store_true", help="stop once nothing is due instead of waiting")
    worker.set_defaults(handler=_worker)


async def _list_dead_letters(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    keys = Keys(settings.redis.prefix)
    found = await dead_letters.dead_letters(client, keys, campaign_id=args.campaign, limit=args.limit)
    return [asdict(letter) for letter in found]


async def _replay_dead_letters(args: argparse.Namespace, settings: Settings, client: aioredis.Redis) -> Any:
    keys = Keys(settings.redis.prefix)
    now = utc_now().timestamp()
    return asdict(await dead_letters.replay(client, keys, now, campaign_id=args.campaign))


def register_dead_letters(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    letters = subparsers.add_parser(
        "dead-letters", help="pushes given up after max_attempts: list them, replay them"
    )
    actions = letters.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[parent], help="the dead letters, oldest first")
    listing.add_argument("--campaign", help="only this campaign's")
    listing.add_argument("--limit", type=positive_int, default=100, help="at most this many (default 100)")
    listing.set_defaults(handler=run_action(_list_dead_letters))
    replaying = actions.add_parser(
        "replay", parents=[parent], help="queue the dead messages again, once the cause is fixed"
    )
    replaying.add_argument("--campaign", help="only this campaign's")
    replaying.set_defaults(handler=run_action(_replay_dead_letters))
