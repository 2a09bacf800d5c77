"""`recsvc serve`: the environment reaches uvicorn's worker processes, and a real server answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from shop import ADMIN_KEY, APP_KEY, REPO, Models

from recsvc.cli import main
from recsvc.config import CONFIG_ENV, Settings
from recsvc.redis_conn import REDIS_URL_ENV
from recsvc.registry import Registry
from serving import cli

CONFIG = REPO / "configs" / "default.toml"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Whatever `serve` writes into os.environ is undone after the test."""
    for name in (CONFIG_ENV, cli.REGISTRY_ENV, REDIS_URL_ENV):
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    yield


def test_serve_hands_config_registry_and_redis_to_the_workers(
    clean_env: None,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, redis_url)
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(cli.uvicorn, "run", lambda *args, **kwargs: calls.append((args, kwargs)))

    code = main(
        [
            "serve",
            "--config",
            str(CONFIG),
            "--port",
            "8123",
            "--workers",
            "3",
            "--registry",
            str(tmp_path / "m"),
        ]
    )

    assert code == 0
    [(args, kwargs)] = calls
    assert args == ("serving.asgi:app",) and kwargs["factory"] is True
    assert kwargs["workers"] == 3 and kwargs["port"] == 8123 and kwargs["host"] == "127.0.0.1"
    assert os.environ[CONFIG_ENV] == str(CONFIG.resolve())
    assert os.environ[cli.REGISTRY_ENV] == str((tmp_path / "m").resolve())
    assert os.environ[REDIS_URL_ENV] == redis_url
    assert "http://127.0.0.1:8123/docs" in capsys.readouterr().out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_real_server_with_two_workers_answers(
    redis_settings: Settings, models: Models, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "served-models")
    registry.promote(registry.publish(models.first))
    port = free_port()
    env = {
        **os.environ,
        REDIS_URL_ENV: redis_settings.redis.url,
        "RECSVC_REDIS__PREFIX": redis_settings.redis.prefix,
        "RECSVC_SERVING__API_KEYS": json.dumps({APP_KEY: "app", ADMIN_KEY: "admin"}),
        "RECSVC_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "recsvc.cli", "serve", "--config", str(CONFIG)]
    command += ["--port", str(port), "--workers", "2", "--registry", str(registry.root)]
    server = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        for _ in range(4):  # both workers answer alike
            response = httpx.get(
                f"{base}/v1/users/gA-u1/recommendations", headers={"X-API-Key": APP_KEY}, timeout=5.0
            )
            assert response.status_code == 200, response.text
            assert response.json()["model_version"] == "v000001"
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=30)
    assert f"{base}/docs" in output
    known_user = models.first.user_ids.id_at(0)
    assert f"{base}/v1/users/{known_user}/recommendations" in output  # ready-to-paste examples
    assert f'"item_id": "{models.first.item_ids.id_at(0)}"' in output


def test_each_worker_runs_its_engine_calls_on_one_thread(redis_settings: Settings, tmp_path: Path) -> None:
    """Batched engine calls would otherwise spread FAISS and BLAS over every core, against the
    other workers doing the same."""
    script = (
        "import faiss, threadpoolctl, serving.asgi; serving.asgi.app(); "
        "print(faiss.omp_get_max_threads(), "
        "max(pool['num_threads'] for pool in threadpoolctl.threadpool_info()))"
    )
    env = {
        **os.environ,
        REDIS_URL_ENV: redis_settings.redis.url,
        "RECSVC_REDIS__PREFIX": redis_settings.redis.prefix,
        "RECSVC_REGISTRY__DIR": str(tmp_path / "models"),
        "OMP_NUM_THREADS": "3",  # what a worker would otherwise start with, on any machine
        "OPENBLAS_NUM_THREADS": "3",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]
