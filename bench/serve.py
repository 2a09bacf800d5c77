"""Recommendation latency and throughput of the real server beside a bare FastAPI endpoint.

    .venv/bin/python bench/serve.py [--users 200000 --items 100000 --events 5000000] [--workers 2]
                                    [--repeat 3] [--work FOLDER]

Trains a 100k-item x 64-factor model on synthetic data (or reuses the one in --work), starts
`recsvc serve` and a bare FastAPI JSON endpoint under the same uvicorn settings, posts fresh
events for the users it will ask about, then loads both servers in two ways from a separate process:
- open loop at a fixed rate (default 500 requests/s): p50 and p99 latency, measured after a
  warm-up at the same rate (default 3 s, not counted), so they describe the steady state;
- closed loop with wrk (installed from Debian's packages when missing): maximum requests/s.
It measures `--repeat` rounds, the two servers in turn so that a slow spell of the machine hits
both (on this 2-core VM two identical runs differed by 30%), and prints each figure's median
and range, and the ratio of the medians.

Redis is `REDIS_URL` or an embedded server in the work folder, shared by the bench and the server
(see `bench/redis_support.py`: no snapshot or AOF-rewrite forks while timed; the AOF itself stays
on, as events are durable in production; the bench's keys are deleted at the end). Measured on
2 cores before these settings: a snapshot triggered by the posted events slowed the first second
of the open loop to p50 125 ms, and the bench's keys piled up from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.redis_support import bench_redis  # noqa: E402
from recsvc.config import load_settings  # noqa: E402

APP_KEY = "bench-app-key"
ADMIN_KEY = "bench-admin-key"
HEADERS = {"X-API-Key": APP_KEY}

WRK_SCRIPT = """
local users = {%s}
local prefix = "%s"
local suffix = "%s"
request = function()
  local user = users[math.random(1, #users)]
  return wrk.format("GET", prefix .. user .. suffix, {["X-API-Key"] = "%s"})
end
"""


def bare_app() -> object:
    """The reference: a FastAPI endpoint returning a JSON body of the same shape, with no work."""
    from fastapi import FastAPI

    app = FastAPI()
    body = {
        "request_id": "x" * 32,
        "strategy": "realtime",
        "items": [
            {"item_id": f"i{n:06d}", "score": 1.0, "title": "Item", "category": "c"} for n in range(10)
        ],
    }

    @app.get("/v1/users/{user_id}/recommendations")
    async def recommendations(user_id: str) -> dict[str, object]:
        return {"user_id": user_id, **body}

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"server at {url} did not become ready")


@contextmanager
def server(command: list[str], env: dict[str, str], ready_url: str) -> Iterator[None]:
    process = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)
    try:
        wait_ready(ready_url)
        yield
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


class _Connection:
    """One keep-alive HTTP/1.1 connection: send a GET, read the head, then `Content-Length` bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def get(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status


async def open_loop(
    host: str,
    port: int,
    path_prefix: str,
    users: list[str],
    rate: int,
    seconds: float,
    connections: int,
    warmup: float,
) -> tuple[float, float, int]:
    """p50 and p99 latency in ms of requests sent at a fixed rate, whatever the answers' speed.

    A request's latency counts from its scheduled time, so waiting for a free connection counts
    too (no coordinated omission). Requests of the first `warmup` seconds are sent at the same
    rate but not counted. Raw asyncio streams rather than an HTTP library: the generator must
    cost far less CPU than the server it measures.
    """
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(_Connection(*await asyncio.open_connection(host, port)))
    latencies: list[float] = []
    errors = 0

    async def one(user: str, scheduled: float) -> None:
        nonlocal errors
        connection = await pool.get()
        request = (
            f"GET {path_prefix}{user}/recommendations?k=10 HTTP/1.1\r\nHost: {host}\r\n"
            f"X-API-Key: {APP_KEY}\r\n\r\n"
        ).encode()
        try:
            status = await connection.get(request)
        except (OSError, asyncio.IncompleteReadError):
            status = 0
            connection = _Connection(*await asyncio.open_connection(host, port))
        pool.put_nowait(connection)
        if scheduled >= measured_from:
            latencies.append((time.perf_counter() - scheduled) * 1000)
            errors += status != 200

    tasks = []
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    measured_from = start + warmup
    for n in range(int(rate * (warmup + seconds))):
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(users[int(rng.integers(len(users)))], scheduled)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().writer.close()
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)), errors


def open_loop_process(
    base: str, users: list[str], rate: int, seconds: float, warmup: float
) -> tuple[float, float, int]:
    """`open_loop` in a process of its own, so the generator and the server never share a core's time."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    args = (host, int(port), "/v1/users/", users, rate, seconds, 64, warmup)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_run_open_loop, *args).result()


def _run_open_loop(*args: Any) -> tuple[float, float, int]:
    return asyncio.run(open_loop(*args))


def wrk(base: str, users: list[str], seconds: int) -> tuple[float, float, float]:
    """Requests/s, p50 and p99 (ms) at full load from wrk: 2 threads, 32 connections."""
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, capture_output=True)
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    quoted = ",".join(f'"{user}"' for user in users[:5000])
    script.write_text(WRK_SCRIPT % (quoted, "/v1/users/", "/recommendations?k=10", APP_KEY))
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec")))
    percent = {
        line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()[:3] in ("50%", "99%")
    }
    return rps, _ms(percent["50%"]), _ms(percent["99%"])


def _spread(values: np.ndarray) -> str:
    return f"{np.median(values):.2f} ({values.min():.2f}-{values.max():.2f})"


def _ms(text: str) -> float:
    for unit, factor in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def recsvc(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "recsvc.cli", *args], env=env, cwd=REPO, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"recsvc {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def post_fresh_events(base: str, users: list[str], items: list[str]) -> None:
    """Five fresh views per user, so every measured request folds in recent events."""
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=base, headers=HEADERS, timeout=30.0) as client:
        for start in range(0, len(users), 100):
            batch = [
                {"user_id": user, "item_id": items[int(rng.integers(len(items)))], "type": "view"}
                for user in users[start : start + 100]
                for _ in range(5)
            ]
            response = client.post("/v1/events", json={"events": batch})
            response.raise_for_status()


def users_per_engine_call(base: str) -> str:
    """Mean and largest batch of the recommendation engine calls, from one worker's /metrics
    (whichever answers): concurrent requests share engine calls (`serving.batching`)."""
    text = httpx.get(f"{base}/metrics", timeout=30.0).text
    series = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("recsvc_recommendation_batch_users")
    }
    calls = series["recsvc_recommendation_batch_users_count"]
    below = [
        (float(name.split('le="')[1].split('"')[0]), count)
        for name, count in series.items()
        if "_bucket" in name and "+Inf" not in name
    ]
    largest = min((bound for bound, count in below if count == calls), default=float("inf"))
    mean = series["recsvc_recommendation_batch_users_sum"] / calls
    return f"mean {mean:.2f} over {calls:,.0f} calls, largest <= {largest:g}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers of both servers")
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--warmup", type=float, default=3.0, help="open-loop seconds sent but not measured")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of both servers' measurements, in turn")
    parser.add_argument("--work", type=Path, help="reuse this folder's data and model")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="recsvc-bench-serve-"))
    os.environ |= {
        "RECSVC_DATA__DIR": str(work / "data"),
        "RECSVC_REGISTRY__DIR": str(work / "models"),
        "RECSVC_REDIS__EMBEDDED_PATH": str(work / "redis" / "recsvc.db"),
        "RECSVC_REDIS__PREFIX": f"bench-{os.getpid()}",
        "RECSVC_SERVING__API_KEYS": json.dumps({APP_KEY: "app", ADMIN_KEY: "admin"}),
        "RECSVC_LOG_LEVEL": "WARNING",
        "OPENBLAS_NUM_THREADS": "1",
    }
    env = dict(os.environ)
    if not (work / "models").exists():
        print(
            f"synthesizing {args.users:,} users x {args.items:,} items x {args.events:,} events, training ..."
        )
        recsvc(
            "data",
            "synth",
            "--users",
            str(args.users),
            "--items",
            str(args.items),
            "--events",
            str(args.events),
            env=env,
        )
        recsvc("train", "--promote", env=env)
    manifest = json.loads(
        recsvc(
            "models",
            "show",
            json.loads(recsvc("models", "list", "--json", env=env))[-1]["version"],
            "--json",
            env=env,
        )
    )
    import pyarrow.parquet as pq

    users = pq.read_table(work / "data" / "users.parquet", columns=["user_id"]).column(0).to_pylist()[:20_000]
    items = pq.read_table(work / "data" / "items.parquet", columns=["item_id"]).column(0).to_pylist()

    port, bare_port = free_port(), free_port()
    base, bare_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
    serve = [sys.executable, "-m", "recsvc.cli", "serve", "--port", str(port), "--workers", str(args.workers)]
    bare = [
        sys.executable,
        "-m",
        "uvicorn",
        "serve:bare_app",
        "--factory",
        "--app-dir",
        str(REPO / "bench"),
        "--port",
        str(bare_port),
        "--workers",
        str(args.workers),
        "--log-level",
        "warning",
    ]
    rounds: dict[str, list[tuple[float, ...]]] = {base: [], bare_base: []}
    with (
        bench_redis(load_settings(), appendonly=True),
        server(serve, env, f"{base}/readyz"),
        server(bare, env, f"{bare_base}/v1/users/x/recommendations"),
    ):
        post_fresh_events(base, users, items)
        for _ in range(args.repeat):
            for url, measured in rounds.items():  # in turn, so a slow spell of the machine hits both
                measured.append(
                    (
                        *open_loop_process(url, users, args.rate, args.seconds, args.warmup),
                        *wrk(url, users, args.seconds),
                    )
                )
        batching = users_per_engine_call(base)

    shape = manifest["shape"]
    print(
        f"model: {shape['items']:,} items x {shape['factors']} factors, index {manifest['index']['kind']}; "
        f"{args.workers} uvicorn worker(s); {os.cpu_count()} cores; users with 5 fresh events each; "
        f"{args.repeat} round(s) each, in turn: median (range)"
    )
    ours, reference = np.array(rounds[base]), np.array(rounds[bare_base])
    names = {0: f"open loop {args.rate}/s: p50 ms", 1: f"open loop {args.rate}/s: p99 ms"}
    names |= {3: "wrk max requests/s", 4: "wrk p50 ms", 5: "wrk p99 ms"}
    print(f"{'':32}{'recsvc':>28}{'bare FastAPI':>28}{'ratio':>8}")
    for column, name in names.items():
        mine, theirs = ours[:, column], reference[:, column]
        ratio = np.median(mine) / np.median(theirs)
        print(f"{name:<32}{_spread(mine):>28}{_spread(theirs):>28}{ratio:>8.2f}")
    print(f"{'open loop errors, all rounds':<32}{int(ours[:, 2].sum()):>28}{int(reference[:, 2].sum()):>28}")
    print(f"users per engine call, one worker's whole run: {batching}")
    print(f"targets: p99 < 10 ms at {args.rate}/s; throughput ratio >= 0.5")


if __name__ == "__main__":
    main()
