"""Connections: URL precedence, and the embedded server every process of one deployment shares."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recsvc import cli, redis_conn
from recsvc.config import Settings
from recsvc.redis_conn import (
    REDIS_URL_ENV,
    connect_async,
    connect_sync,
    embedded_files,
    ensure_redis,
    open_connections,
    redis_url,
    stop_embedded,
)

REPO = Path(__file__).resolve().parents[2]


def with_url(settings: Settings, url: str) -> Settings:
    return settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": url})})


@pytest.fixture
def embedded(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings with no Redis URL anywhere: the embedded server under this test's folder."""
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    monkeypatch.delenv("RECSVC_REDIS__URL", raising=False)
    assert redis_url(settings) is None
    yield settings
    stop_embedded(settings.redis.embedded_path)


def server_pid(client: redis.Redis) -> int:
    return int(client.info("server")["process_id"])


def crash(pid: int) -> None:
    """SIGKILL the server (no chance to save) and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    assert exits(pid), f"redis-server {pid} survived SIGKILL"


def exits(pid: int, within: float = 30) -> bool:
    """Whether process `pid` has exited or exits within `within` seconds."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([descriptor], [], [], within)  # readable once it exited
        return bool(readable)
    finally:
        os.close(descriptor)


def test_redis_url_prefers_the_environment_then_the_config(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    assert redis_url(with_url(settings, "")) is None
    assert redis_url(with_url(settings, "redis://config:6379/0")) == "redis://config:6379/0"
    monkeypatch.setenv(REDIS_URL_ENV, "redis://env:6379/1")
    assert redis_url(with_url(settings, "redis://config:6379/0")) == "redis://env:6379/1"
    assert ensure_redis(settings) == "redis://env:6379/1"
    assert not settings.redis.embedded_path.parent.exists()  # a URL starts nothing


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio runs on asyncio only


@pytest.mark.anyio
async def test_clients_use_the_configured_timeout(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")
    sync_client = connect_sync(settings)
    async_client = connect_async(settings)
    try:
        for client in (sync_client, async_client):
            options = client.connection_pool.connection_kwargs
            assert options["socket_timeout"] == settings.serving.redis_timeout_seconds
            assert options["socket_connect_timeout"] == settings.serving.redis_timeout_seconds
            assert options["decode_responses"] is True
    finally:
        sync_client.close()
        await async_client.aclose()


def test_two_clients_of_one_settings_share_one_embedded_server(embedded: Settings) -> None:
    first, second = connect_sync(embedded), connect_sync(embedded)
    try:
        first.set("shared", "yes")
        assert second.get("shared") == "yes"
        assert server_pid(first) == server_pid(second)
        assert ensure_redis(embedded).startswith("unix://")
    finally:
        first.close()
        second.close()


def test_processes_starting_together_share_one_embedded_server(embedded: Settings) -> None:
    script = (
        "import sys\n"
        "from recsvc.config import load_settings\n"
        "from recsvc.redis_conn import connect_sync\n"
        "client = connect_sync(load_settings(sys.argv[1]))\n"
        "client.set('from-' + sys.argv[2], 1)\n"
        "print(client.info('server')['process_id'])\n"
        "client.close()\n"
    )
    config = str(REPO / "configs" / "default.toml")
    processes = [
        subprocess.Popen([sys.executable, "-c", script, config, str(n)], stdout=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    pids = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert [process.returncode for process in processes] == [0, 0, 0]

    with connect_sync(embedded) as client:
        assert pids == {str(server_pid(client))}
        assert sorted(client.keys("from-*")) == ["from-0", "from-1", "from-2"]


def test_accepted_writes_survive_a_crash_of_the_embedded_server(embedded: Settings) -> None:
    with connect_sync(embedded) as client:
        client.set("accepted", "event")
        before = server_pid(client)
    crash(before)  # no snapshot on the way down: only the append-only file has the write

    with connect_sync(embedded) as client:
        assert server_pid(client) != before
        assert client.get("accepted") == "event"


def test_stop_saves_and_a_restart_finds_the_data(embedded: Settings) -> None:
    with connect_sync(embedded) as client:
        client.set("kept", "1")
    assert stop_embedded(embedded.redis.embedded_path) is True
    assert stop_embedded(embedded.redis.embedded_path) is False

    with connect_sync(embedded) as client:
        assert client.get("kept") == "1"


def test_a_server_still_loading_its_files_is_waited_for_past_the_start_timeout(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = 2_000_000  # loading these takes seconds, far past the start timeout below
    with connect_sync(embedded, timeout=60.0) as client:
        client.execute_command("DEBUG", "POPULATE", keys)
        client.bgrewriteaof()  # the append-only file now holds them (as an RDB preamble)
        while client.info("persistence")["aof_rewrite_in_progress"]:
            time.sleep(0.05)
    assert stop_embedded(embedded.redis.embedded_path) is True

    monkeypatch.setattr(redis_conn, "EMBEDDED_START_TIMEOUT_SECONDS", 0.3)
    with connect_sync(embedded) as client:
        assert client.dbsize() == keys


def test_the_stop_command_stops_the_embedded_server_and_keeps_its_data(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with connect_sync(embedded) as client:
        client.set("kept", "1")
        pid = server_pid(client)
    monkeypatch.setenv("RECSVC_REDIS__EMBEDDED_PATH", str(embedded.redis.embedded_path))

    assert cli.main(["redis", "stop"]) == 0
    assert "stopped the embedded Redis" in capsys.readouterr().out
    assert exits(pid), "the server process is still running"  # gone, not just its record
    assert cli.main(["redis", "stop"]) == 0
    assert "no embedded Redis" in capsys.readouterr().out
    with connect_sync(embedded) as client:
        assert client.get("kept") == "1"
    monkeypatch.setenv(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")
    assert cli.main(["redis", "stop"]) == 1  # with a URL there is no embedded server to stop


def test_a_snapshot_only_db_keeps_its_data_when_the_append_only_file_is_turned_on(embedded: Settings) -> None:
    with connect_sync(embedded) as client:
        client.set("from-snapshot", "1")
    stop_embedded(embedded.redis.embedded_path)
    files = embedded_files(embedded.redis.embedded_path)
    (files.folder / files.aof).unlink()  # as an older, snapshot-only deployment left it

    with connect_sync(embedded) as client:
        assert client.get("from-snapshot") == "1"
        assert client.config_get("appendonly") == {"appendonly": "yes"}


def test_a_socket_path_too_long_for_unix_sockets_moves_to_the_temp_folder(
    embedded: Settings, tmp_path: Path
) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 5) / "recsvc.db"
    settings = embedded.model_copy(
        update={"redis": embedded.redis.model_copy(update={"embedded_path": deep})}
    )
    try:
        with connect_sync(settings) as client:
            client.set("deep", "1")
            assert client.get("deep") == "1"
        assert len(str(embedded_files(deep).socket)) <= 100
    finally:
        stop_embedded(deep)


@pytest.mark.anyio
async def test_opening_connections_ahead_tolerates_a_redis_that_is_down(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(REDIS_URL_ENV, raising=False)
    client = connect_async(with_url(settings, "redis://127.0.0.1:9/0"))
    try:
        assert await open_connections(client, 3) == 0
    finally:
        await client.aclose()
