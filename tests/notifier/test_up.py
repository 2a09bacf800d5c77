"""`recsvc up` (what `make run` ends with): API, scheduler and worker deliver a demo campaign."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import redis
from shop import ADMIN_KEY, APP_KEY, REPO

from recsvc.config import Settings
from recsvc.redis_conn import REDIS_URL_ENV
from recsvc.registry import Registry
from training.profiles import import_profiles

DEADLINE_SECONDS = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_up_runs_everything_and_the_demo_campaign_is_delivered(
    shop_settings: Settings, registry: Registry, redis_client: redis.Redis, tmp_path: Path
) -> None:
    users = [f"gA-u{n}" for n in range(5)] + [f"gB-u{n}" for n in range(5)]
    import_profiles(
        redis_client,
        shop_settings,
        pa.table({"user_id": users, "push_consent": [True] * 10}),
        demo_devices=True,
    )
    demo = tmp_path / "demo.json"
    demo.write_text(
        json.dumps(
            {
                "id": "demo-test",
                "name": "Demo",
                "segment": {"push_consent": True},
                "content": {"title": "{{ item.title }}", "body": "{{ items | length }} picks"},
                "rules": {"quiet_start": "00:00", "quiet_end": "00:00"},
            }
        )
    )
    port = free_port()
    env = {
        **os.environ,
        REDIS_URL_ENV: shop_settings.redis.url,
        "RECSVC_REDIS__PREFIX": shop_settings.redis.prefix,
        "RECSVC_REGISTRY__DIR": str(registry.root),
        "RECSVC_SERVING__PORT": str(port),
        "RECSVC_SERVING__API_KEYS": json.dumps({APP_KEY: "app", ADMIN_KEY: "admin"}),
        "RECSVC_NOTIFIER__SCHEDULER__RETRAIN_CRON": "",
    }
    command = [sys.executable, "-m", "recsvc.cli", "up", "--config", str(REPO / "configs" / "default.toml")]
    process = subprocess.Popen(
        [*command, "--demo-campaign", str(demo)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    stats_url = f"http://127.0.0.1:{port}/v1/campaigns/demo-test/stats"
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        total: dict[str, int] = {}
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(stats_url, headers={"X-API-Key": ADMIN_KEY}, timeout=2.0)
                total = response.json().get("total", {}) if response.status_code == 200 else {}
            except httpx.TransportError:
                pass
            if total.get("delivered") == len(users):
                break
            time.sleep(0.5)
        assert total.get("sent") == total.get("delivered") == len(users), total
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "Traceback" not in output, output
    pushes = [line for line in output.splitlines() if "recsvc.push: push to" in line]
    assert sorted(line.split("push to ")[1].split()[0] for line in pushes) == sorted(users)
    assert stats_url in output
    with socket.socket() as probe:  # the API stopped with the supervisor
        assert probe.connect_ex(("127.0.0.1", port)) != 0
