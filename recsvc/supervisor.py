"""`recsvc up`: the API server, the scheduler and a delivery worker in one terminal, for local runs.

Each part is its own `recsvc` process, exactly as it would run in production (where an orchestrator
starts them instead); this command only starts them, waits until the API is ready, optionally
creates and runs a demo campaign, and stops them all together: on Ctrl-C, on SIGTERM, or as soon as
one of them exits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from recsvc.config import Settings
from recsvc.errors import RecsvcError

READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 10.0


def _recsvc(*argv: str, config: Path | None) -> list[str]:
    """The command line of a `recsvc` subcommand, with this run's config."""
    command = [sys.executable, "-m", "recsvc.cli", *argv]
    return [*command, "--config", str(config)] if config is not None else command


def _wait_until_ready(url: str, processes: Sequence[subprocess.Popen[bytes]], deadline: float) -> None:
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise RecsvcError("a process exited while starting up; see its output above")
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RecsvcError(f"the API did not become ready at {url} within {READY_TIMEOUT_SECONDS:.0f}s")


def _stop(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _demo_campaign(path: Path, config: Path | None, base_url: str) -> None:
    """Create the campaign of `path` (unless it exists) and run it once now."""
    created = subprocess.run(
        _recsvc("campaigns", "create", str(path), config=config), capture_output=True, text=True, check=False
    )
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise RecsvcError(f"could not create the demo campaign: {created.stderr.strip()}")
    campaign_id = _file_id(path)
    print(
        f"campaign results: curl -H 'X-API-Key: <admin key>' {base_url}/v1/campaigns/{campaign_id}/stats",
        flush=True,
    )
    print(
        f"running campaign {campaign_id} now (pushes appear below, from the worker's log provider)",
        flush=True,
    )
    subprocess.run(_recsvc("campaigns", "run", campaign_id, config=config), check=False)


def _file_id(path: Path) -> str:
    """The `id` a demo campaign file must carry, so a second start finds the same campaign."""
    raw = path.read_text(encoding="utf-8")
    document = tomllib.loads(raw) if path.suffix == ".toml" else json.loads(raw)
    campaign_id = document.get("id")
    if not isinstance(campaign_id, str):
        raise RecsvcError(f"{path}: a demo campaign file needs an `id`")
    return campaign_id


def up(settings: Settings, config: Path | None, demo_campaign: Path | None) -> int:
    """Start everything, then wait; the exit code of the first process to stop, or 0 on Ctrl-C."""
    # Each part in a process group of its own: Ctrl-C in the terminal then reaches this process
    # alone, and `_stop` hands each part exactly one SIGINT. Reached by the terminal's as well,
    # the worker would take the second as "stop at once" and cut its graceful stop short.
    processes = [
        subprocess.Popen(_recsvc(part, config=config), process_group=0)
        for part in ("serve", "scheduler", "worker")
    ]
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        base_url = f"http://{settings.serving.host}:{settings.serving.port}"
        _wait_until_ready(f"{base_url}/readyz", processes, time.monotonic() + READY_TIMEOUT_SECONDS)
        print("recsvc is up: API, scheduler and delivery worker. Ctrl-C stops all of them.", flush=True)
        if demo_campaign is not None:
            _demo_campaign(demo_campaign, config, base_url)
        while not stopping:
            exited = [process for process in processes if process.poll() is not None]
            if exited:
                return exited[0].returncode or 1
            time.sleep(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop(processes)


def _up_command(args: argparse.Namespace, settings: Settings) -> int:
    config = getattr(args, "config", None) or _env_config()
    return up(settings, config, args.demo_campaign)


def _env_config() -> Path | None:
    value = os.environ.get("RECSVC_CONFIG")
    return Path(value) if value else None


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    command = subparsers.add_parser(
        "up", parents=[parent], help="run the API, the scheduler and a delivery worker together (local runs)"
    )
    command.add_argument(
        "--demo-campaign", type=Path, help="a campaign file to create (if absent) and run once at start"
    )
    command.set_defaults(handler=_up_command)
