"""Users per second of a campaign run from segment to outbox, beside the raw FAISS search it rests on.

    .venv/bin/python bench/fanout.py [--users 1000000 --items 100000 --factors 64] [--batch-size 5000]
                                     [--cache /tmp/bench-fanout] [--profile FILE]

Publishes `bench/engine.py`'s synthetic artifact (clustered item factors, 20 training items per
user, an HNSW index) into a registry under the cache folder, once: later runs with the same
shape reuse it. Loads one profile per model user into Redis (`REDIS_URL`, else an embedded server
under the cache folder, with persistence off, stopped at the end) under a key prefix of its own,
deleted at the end even when the run fails. Profiles have consent, one device, a timezone out of
ten and tier / points / locale attributes; 2% lack `points`.

The campaign selects `points >= 0` with consent and a device, keeps 10% as a control group,
sends 3 personalized items with templates over user and item fields, and has quiet hours off and
caps that never bind, so ~88% of users get a message in the outbox. Timed: one
`CampaignRunner.run` end to end (scan, read, decide with `recommend_many`, render, write), and
the reference: one `index.search` of the same users' stored vectors on the artifact's
inner-product index, with the same k, on every core (FAISS's threads), before and after the run
(the faster counts; the run decides two batches at once, each searching on one core). Prints
users/s, both times and their ratio, where the run's time went (timing wrappers installed by
this script only) and the CPU time this process and Redis used, whose sum over the cores bounds
any schedule. `--profile FILE` runs the campaign under cProfile and writes its stats there and
to FILE.decide (the deciding threads, which then take turns: one profiler); the times are then
inflated.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import secrets
import sys
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np
import redis.asyncio as aioredis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import notifier.runner as runner_module  # noqa: E402
from bench.engine import synthetic_artifact  # noqa: E402
from bench.redis_support import REDIS_TIMEOUT_SECONDS, bench_redis  # noqa: E402
from notifier import decisions, segments  # noqa: E402
from notifier.campaign import Campaign, CampaignSpec  # noqa: E402
from notifier.runner import CampaignRunner, RunSummary  # noqa: E402
from notifier.store import CampaignStore  # noqa: E402
from notifier.templates import CompiledContent  # noqa: E402
from recsvc.config import Settings, load_settings  # noqa: E402
from recsvc.current_model import ModelHolder  # noqa: E402
from recsvc.engine import Engine  # noqa: E402
from recsvc.gc_tuning import tune_collector  # noqa: E402
from recsvc.keys import Keys  # noqa: E402
from recsvc.redis_conn import connect_async  # noqa: E402
from recsvc.registry import Registry  # noqa: E402
from recsvc.state import profile_changes  # noqa: E402

T = TypeVar("T")

CAMPAIGN_ID = "fanout"
TIMEZONES = (
    "UTC",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Moscow",
    "Asia/Dubai",
    "Asia/Kolkata",
    "Asia/Tokyo",
    "Australia/Sydney",
    "America/New_York",
    "America/Los_Angeles",
)
TIERS = ("bronze", "silver", "gold")
LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "ja-JP")
LOAD_CHUNK = 10_000


def campaign_spec(items: int) -> CampaignSpec:
    return CampaignSpec.model_validate(
        {
            "name": "Fan-out benchmark",
            "segment": {
                "attributes": [{"field": "points", "op": "gte", "value": 0}],
                "push_consent": True,
                "has_device": True,
                "control_percent": 10,
            },
            "content": {
                "title": "{{ user.tier | title }} picks: {{ item.title }}",
                "body": (
                    "Hi {{ user.id }}, {{ item.title }} from {{ '%.2f' | format(item.price) }}, "
                    "{{ items[1].title }} and {{ items[2].title }} are waiting ({{ user.points }} points)."
                ),
                "deep_link": "shop://item/{{ item.item_id }}?campaign={{ campaign.id }}",
                "items": items,
                "source": "personalized",
            },
            "rules": {
                "max_per_day": 100,
                "max_per_week": 1000,
                "min_gap_hours": 1,
                "item_repeat_days": 14,
                "quiet_start": "00:00",
                "quiet_end": "00:00",
            },
        }
    )


def profile(n: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {"tier": TIERS[n % 3], "locale": LOCALES[n % 5]}
    if n % 50:  # 2% lack points, so the segment predicate excludes someone
        attributes["points"] = (n * 7919) % 5000
    return {
        "attributes": attributes,
        "timezone": TIMEZONES[n % len(TIMEZONES)],
        "push_consent": True,
        "devices": {"phone": {"token": f"token-{n}", "platform": "android" if n % 2 else "ios"}},
    }


# --- set-up ------------------------------------------------------------------------------------


def model_registry(cache: Path, users: int, items: int, factors: int) -> Registry:
    """A registry whose current version is the synthetic artifact of this shape, published once."""
    registry = Registry(cache / f"registry-{users}u-{items}i-{factors}f")
    if registry.current() is None:
        started = time.perf_counter()
        registry.promote(registry.publish(synthetic_artifact(items, users, factors)))
        print(f"published the synthetic artifact in {time.perf_counter() - started:.0f}s")
    return registry


def bench_settings(cache: Path, registry: Registry, prefix: str, batch_size: int) -> Settings:
    settings = load_settings(REPO / "configs" / "default.toml")
    notifier = settings.notifier.model_copy(update={"batch_size": batch_size})
    return settings.model_copy(
        update={
            "registry": settings.registry.model_copy(update={"dir": registry.root}),
            "redis": settings.redis.model_copy(
                update={"prefix": prefix, "embedded_path": cache / "redis" / "recsvc.db"}
            ),
            "notifier": notifier,
        }
    )


async def load_profiles(client: aioredis.Redis, keys: Keys, user_ids: list[str]) -> None:
    """Profile hashes and population membership, as `Store.put_profile` writes them, pipelined."""
    for start in range(0, len(user_ids), LOAD_CHUNK):
        chunk = user_ids[start : start + LOAD_CHUNK]
        async with client.pipeline(transaction=False) as pipe:
            for offset, user_id in enumerate(chunk):
                fields, _ = profile_changes(profile(start + offset))
                pipe.hset(keys.profile(user_id), mapping=fields)  # type: ignore[arg-type]
            pipe.sadd(keys.profiles(), *chunk)
            await pipe.execute()


@asynccontextmanager
async def run_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client for the run, inside `bench_redis`: no persistence (snapshots and AOF
    rewrites of gigabytes would fork in the timed part), keys deleted at the end."""
    with bench_redis(settings, appendonly=False):
        client = connect_async(settings, timeout=REDIS_TIMEOUT_SECONDS)
        try:
            yield client
        finally:
            await client.aclose()


# --- timing ------------------------------------------------------------------------------------


class Stages:
    """Seconds spent per stage, summed over batches, by wrappers around the run's functions.

    With `profiler`, the decide stage runs under it: cProfile sees only the thread it is enabled
    in, and deciding runs in worker threads, which then take turns (a profiler is one thread's).
    Deciding threads add their seconds under a lock: `+=` on a shared dict is not atomic.
    """

    def __init__(self, profiler: cProfile.Profile | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.profiler = profiler
        self._adding = threading.Lock()
        self._profiling = threading.Lock()

    def sync(self, name: str, function: Callable[..., T], *, profiled: bool = False) -> Callable[..., T]:
        profiler = self.profiler if profiled else None

        @wraps(function)
        def timed(*args: Any, **kwargs: Any) -> T:
            started = time.perf_counter()
            try:
                if profiler is not None:
                    with self._profiling:
                        return profiler.runcall(function, *args, **kwargs)
                return function(*args, **kwargs)
            finally:
                with self._adding:
                    self.seconds[name] += time.perf_counter() - started

        return timed

    def coroutine(self, name: str, function: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @wraps(function)
        async def timed(*args: Any, **kwargs: Any) -> T:
            started = time.perf_counter()
            try:
                return await function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started

        return timed


@contextmanager
def instrumented(stages: Stages, engine: Engine) -> Iterator[None]:
    """Install the timing wrappers (read, decode, decide, recommend_many, templates, write)."""
    patches: list[tuple[Any, str, Any]] = [
        (segments, "fetch_users", stages.coroutine("read", segments.fetch_users)),
        (segments.FetchedUsers, "decode", stages.sync("decode", segments.FetchedUsers.decode)),
        (runner_module, "decide", stages.sync("decide", decisions.decide, profiled=True)),
        (engine, "recommend_many", stages.sync("recommend_many", engine.recommend_many)),
        (CompiledContent, "render", stages.sync("templates", CompiledContent.render)),
        (CampaignRunner, "_commit", stages.coroutine("write", CampaignRunner._commit)),
    ]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches if name in owner.__dict__]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, _ in patches:
            if owner is engine:
                delattr(owner, name)
        for owner, name, original in saved:
            setattr(owner, name, original)


# --- the benchmark -----------------------------------------------------------------------------


async def run_campaign(
    runner: CampaignRunner, campaign: Campaign, run_id: str, stages: Stages, profile_to: Path | None
) -> tuple[RunSummary, float]:
    """Run the campaign once; with `profile_to`, the event loop's thread is profiled into it and
    the deciding thread (`stages.profiler`) into `<profile_to>.decide`."""
    profiler = cProfile.Profile() if profile_to is not None else None
    started = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    try:
        summary = await runner.run(campaign, run_id)
    finally:
        if profiler is not None:
            profiler.disable()
    elapsed = time.perf_counter() - started
    if profiler is not None and profile_to is not None:
        profiler.dump_stats(str(profile_to))
        decide_to = profile_to.with_name(profile_to.name + ".decide")
        if stages.profiler is not None:
            stages.profiler.dump_stats(str(decide_to))
        print(f"cProfile stats written to {profile_to} (event loop) and {decide_to} (decide)")
    return summary, elapsed


async def redis_busy(client: aioredis.Redis) -> dict[str, float]:
    """Seconds the server has spent per command (INFO commandstats), to diff around the run."""
    stats = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): fields["usec"] / 1e6 for name, fields in stats.items()}


async def redis_cpu(client: aioredis.Redis) -> float:
    """CPU seconds the Redis server has used (all its threads), to diff around the run."""
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def raw_search(engine: Engine, user_ids: list[str], k: int) -> float:
    """Seconds of one FAISS search of these users' stored vectors on the model's IP index."""
    artifact = engine.artifact
    rows = artifact.user_ids.indices_of(user_ids)
    vectors = np.ascontiguousarray(artifact.user_factors[rows[rows >= 0]], dtype=np.float32)
    started = time.perf_counter()
    artifact.index.search(vectors, k)
    return time.perf_counter() - started


async def bench(args: argparse.Namespace) -> None:
    cache: Path = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    registry = model_registry(cache, args.users, args.items, args.factors)
    prefix = f"bench-fanout-{secrets.token_hex(4)}"
    settings = bench_settings(cache, registry, prefix, args.batch_size)
    keys = Keys(prefix)
    models = ModelHolder(registry, settings)
    started = time.perf_counter()
    await models.refresh()
    loaded = models.loaded
    assert loaded is not None
    engine = loaded.engine
    print(f"model {loaded.version} loaded in {time.perf_counter() - started:.1f}s")

    async with run_client(settings) as client:
        user_ids = engine.artifact.user_ids.ids[: args.users].tolist()
        started = time.perf_counter()
        await load_profiles(client, keys, user_ids)
        print(f"loaded {len(user_ids):,} profiles in {time.perf_counter() - started:.1f}s")
        spec = campaign_spec(args.k)
        campaign = await CampaignStore(client, settings).create(spec, campaign_id=CAMPAIGN_ID)
        runner = CampaignRunner(client, settings, models)
        run_id = "bench-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")

        stages = Stages(cProfile.Profile() if args.profile is not None else None)
        asked = [
            user
            for user in user_ids
            if segments.attribute_holds(spec.segment.attributes[0], profile_of(user))
        ]
        raw_before = raw_search(engine, asked, args.k)
        busy_before, redis_cpu_before = await redis_busy(client), await redis_cpu(client)
        python_cpu_before = time.process_time()
        with instrumented(stages, engine):
            summary, elapsed = await run_campaign(runner, campaign, run_id, stages, args.profile)
        python_cpu = time.process_time() - python_cpu_before
        redis_cpu_used = await redis_cpu(client) - redis_cpu_before
        busy = {
            command: seconds - busy_before.get(command, 0.0)
            for command, seconds in (await redis_busy(client)).items()
        }
        counts = summary.counts
        sent = counts.get("sent", 0)
        queued = int(await client.xlen(keys.outbox()))
        delayed = int(await client.zcard(keys.outbox_delayed()))
        if queued != sent or delayed:
            raise SystemExit(f"outbox holds {queued:,} (+{delayed:,} delayed), the run sent {sent:,}")

        raw = min(raw_before, raw_search(engine, asked, args.k))

    print(
        f"{os.cpu_count()} cores, FAISS threads {faiss.omp_get_max_threads()}, "
        f"batch size {args.batch_size:,}, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"users              {len(user_ids):>12,}")
    print(f"recommended for    {counts.get('targeted', 0) + counts.get('control:targeted', 0):>12,}")
    print(
        f"messages written   {summary.messages:>12,}  ({sent:,} in the outbox, "
        f"{summary.messages - sent:,} control)"
    )
    print(f"run                {elapsed:>12.1f} s   {len(user_ids) / elapsed:>10,.0f} users/s")
    print(
        f"raw FAISS search   {raw:>12.1f} s   {len(asked) / raw:>10,.0f} users/s  "
        f"({len(asked):,} vectors, k={args.k}; the faster of before and after the run)"
    )
    print(f"ratio run / raw    {elapsed / raw:>12.2f}")
    seconds = stages.seconds
    print("where the run's time went: wall time each stage was under way; stages overlap (Redis")
    print("writes a batch and reads the next while the runner decides two), so they sum to more:")
    for name, value in (
        ("read users (Redis)", seconds["read"]),
        ("decode users", seconds["decode"]),
        ("decide (2 threads, summed)", seconds["decide"]),
        ("  recommend_many", seconds["recommend_many"]),
        ("  templates", seconds["templates"]),
        ("  segment, rules, rest", seconds["decide"] - seconds["recommend_many"] - seconds["templates"]),
        ("write (one script)", seconds["write"]),
    ):
        print(f"  {name:<24}{value:>8.1f} s  {100 * value / elapsed:>5.1f}%")
    top = sorted(busy.items(), key=lambda pair: -pair[1])[:4]
    print(
        "Redis commands (wall time on the server, including waits for a core): "
        + ", ".join(f"{command} {seconds:.1f} s" for command, seconds in top)
    )
    cores = os.cpu_count() or 1
    print(
        f"CPU during the run: this process {python_cpu:.1f} s, Redis {redis_cpu_used:.1f} s; "
        f"on {cores} cores no schedule beats {(python_cpu + redis_cpu_used) / cores:.1f} s"
    )


def profile_of(user_id: str) -> dict[str, Any]:
    """The profile `load_profiles` stored for a synthetic user id ("u<n>")."""
    return profile(int(user_id.removeprefix("u")))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument(
        "--k", type=int, default=3, help="items per push (content.items; 3 or more: the body names three)"
    )
    parser.add_argument("--batch-size", type=int, default=5_000, help="notifier.batch_size")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench-fanout"))
    parser.add_argument("--profile", type=Path, help="run the campaign under cProfile, stats to FILE")
    tune_collector()  # as `recsvc scheduler` does at start-up
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
