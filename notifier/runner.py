"""A campaign run: segment -> sample and control -> rules -> recommendations -> template -> outbox.

The population is walked in batches. A batch is read in one pipeline (`segments.fetch_users`),
decided in a worker thread (predicates, rules, one `recommend_many` call, rendering; all CPU;
`notifier.decisions`) and written in one atomic Lua script (`notifier.batch_write`): messages,
the users' push records, counters, and the run's checkpoint (the SSCAN cursor, or the offset in
an explicit user list). A run killed at any point and run again resumes after the last batch
written, so every user is decided, counted and messaged once. Users whose message of the run
already exists are skipped: a second line of defence (SSCAN may return a member twice), and what
lets a triggered campaign hand batch after batch of users to its day's run (a user handed over
twice is messaged once; only a user who was suppressed the first time is decided, and counted,
again).

Several batches are in flight at once, so that Redis, the index search and Python overlap on few
cores: two batches are decided side by side (`DECIDING_AT_ONCE` threads, each searching the
index on one core, so one thread's search, which releases the GIL, runs beside the other's
Python), while Redis applies the write of the batch before and reads the batch after
(`notifier.prefetch`). Writes stay in order: batch N's is sent only after N-1's was applied, so
a lease lost at N-1 stops the run before N writes, and the checkpoint only moves forward. A run
stopped with a write in flight cancels it; the script is atomic, so the batch was written whole
or not at all. Batches hold distinct users, so one batch's decisions never depend on another's
writes.

The run's hash (`Keys.campaign_run`) holds, besides `status`, `started` and `finished`, the
checkpoint `position` and, for a run over explicit users, `users` and `trigger_events` (JSON),
so a resume needs nothing but the campaign and the run id.

One process executes a run at a time, and one run in the deployment writes at a time: it holds
two leases (`notifier.run_leases`), renewed by every batch write, which fails (and stops the
run) if either was lost meanwhile. Within a process, runs take turns on a lock instead of
polling. Caps are read before a batch and written with it, so two runs due at once, or a
`recsvc campaigns run` beside the scheduler, cannot both push a user past a cap.

Processes that execute runs tune the garbage collector once at start-up (`recsvc.gc_tuning`):
a batch keeps some 10^5 objects alive, which the default thresholds re-walk again and again.

`preview` and `audience` go through the same functions as `run` and write nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import redis.asyncio as aioredis

from notifier import rules, segments, stats
from notifier.batch_write import APPLY, BatchWrite, Windows, stage_records
from notifier.campaign import Campaign, Segment
from notifier.decisions import Context, Group, Outcome, behaviour_of, count, decide, tally_users
from notifier.messages import Message, message_id, stage_messages
from notifier.prefetch import Fetched, Page, Prefetch
from notifier.run_leases import Held, RunLeases
from notifier.segments import Behaviour, Check, UserData
from notifier.store import CampaignStore
from notifier.templates import Templates
from recsvc.ann import search_on_one_core
from recsvc.catalog_cache import CatalogCache
from recsvc.config import Settings
from recsvc.current_model import LoadedModel, ModelHolder
from recsvc.engine import RecentEvent, Recommendation
from recsvc.errors import ConflictError, RecsvcError
from recsvc.keys import SECONDS_PER_DAY, Keys
from recsvc.redis_conn import unavailable_as_error
from recsvc.state import Store, utc_now

PREVIEW_RUN = "preview"
EXACT_AUDIENCE_MAX = 100_000  # above this many profiles, `audience` estimates from a sample
AUDIENCE_SAMPLE = 20_000
# Batches decided at once, each in its own thread whose index search uses one core: while one
# thread searches (without the GIL), the other's Python (segment, rules, templates) runs on the
# other core. One thread searching on every core left a core idle through every Python part
# (bench/fanout.py, 2 cores: run / raw search 3.7 before, 2.7-3.0 after).
DECIDING_AT_ONCE = 2
TRENDING_MARGIN = 50  # trending items fetched beyond k, for users whose exclusions remove some


def manual_run_id(moment: datetime) -> str:
    """The id of a run started by hand, distinct from the scheduler's minute-based ids."""
    return "manual-" + moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


class ModelNotLoaded(RecsvcError):
    """Campaigns need recommendations, and no model is loaded (none promoted yet?)."""

    status = 503
    title = "No model loaded"


@dataclass(frozen=True)
class RunSummary:
    """What one execution of a run did; `counts` are the counters it added (see `notifier.stats`)."""

    campaign_id: str
    run_id: str
    status: Literal["done", "paused"]
    counts: dict[str, int]
    messages: int
    resumed: bool


@dataclass(frozen=True)
class Preview:
    """What one user would get from a campaign now, and why; times are ISO 8601."""

    campaign_id: str
    user_id: str
    group: Group
    checks: list[Check]
    reason: str | None
    scheduled: str | None
    due: str | None
    due_local: str | None
    deferred: bool
    title: str | None
    body: str | None
    deep_link: str | None
    items: list[Recommendation]
    strategy: str | None
    model_version: str


@dataclass(frozen=True)
class Audience:
    """How many users a segment reaches; `sampled` and `control` are expected per run."""

    population: int
    examined: int
    matching: int
    with_consent: int
    with_device: int
    reachable: int
    sampled: int
    control: int
    estimated: bool


@dataclass(frozen=True)
class _Progress:
    """Where an execution starts: the stored position and the run's definition."""

    position: int
    users: list[str] | None
    trigger_events: dict[str, RecentEvent]
    resumed: bool
    done: bool


@dataclass(frozen=True)
class _Deciding:
    """A batch being decided: its page, the context it is decided in, and the task deciding it."""

    page: Page
    ctx: Context
    task: asyncio.Task[tuple[Counter[str], list[tuple[UserData, Message]]]]


class CampaignRunner:
    """Executes, previews and sizes campaigns against one deployment's Redis and current model."""

    def __init__(
        self,
        redis: aioredis.Redis,
        settings: Settings,
        models: ModelHolder,
        *,
        clock: Callable[[], datetime] = utc_now,
        templates: Templates | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._models = models
        self._clock = clock
        self._templates = templates or Templates()
        self._keys = Keys(settings.redis.prefix)
        self._store = Store(redis, settings, clock=clock)
        self._campaigns = CampaignStore(redis, settings, clock=clock, templates=self._templates)
        self._catalogs = CatalogCache()
        self._apply = redis.register_script(APPLY)  # EVALSHA: the script is sent once, not per batch
        self._leases = RunLeases(redis, self._keys, settings.notifier.run_lock_seconds, sleep=sleep)
        # Runs read a batch's caps before they write its pushes, so runs take turns: in this
        # process by this lock, across processes by the writer lease (`notifier.run_leases`).
        self._one_run_at_a_time = asyncio.Lock()

    # --- run --------------------------------------------------------------------------------------

    async def run(
        self,
        campaign: Campaign,
        run_id: str,
        *,
        users: Sequence[str] | None = None,
        trigger_events: Mapping[str, RecentEvent] | None = None,
    ) -> RunSummary:
        """Execute run `run_id` over the whole population, or only over `users` (triggered pushes).

        Without `users`, a run that exists is resumed where its last execution stopped (with the
        users and trigger events that execution was given), and a finished one does nothing. With
        `users`, those users are decided whether or not the run exists: a triggered campaign
        hands each due batch to its day's run, and users already messaged in it are skipped.
        """
        if campaign.status != "active":
            return RunSummary(campaign.id, run_id, "paused", {}, 0, resumed=False)
        async with self._one_run_at_a_time:
            return await self._execute(campaign, run_id, users, trigger_events)

    async def _execute(
        self,
        campaign: Campaign,
        run_id: str,
        users: Sequence[str] | None,
        trigger_events: Mapping[str, RecentEvent] | None,
    ) -> RunSummary:
        loaded = self._loaded()
        held = await self._leases.acquire(campaign.id, run_id)
        try:
            progress = await self._start(campaign.id, run_id, users, trigger_events)
            if progress.done:
                return RunSummary(campaign.id, run_id, "done", {}, 0, resumed=True)
            base = await self._context(campaign, run_id, loaded, progress.trigger_events)
            windows = await self._windows(campaign)
            totals: Counter[str] = Counter()
            written = 0
            pages = Prefetch(self._pages(campaign.id, run_id, progress))
            writing: asyncio.Task[None] | None = None  # the batch before, written meanwhile
            try:
                async with aclosing(self._decided(pages, base)) as batches:
                    async for decided, counts, messages in batches:
                        if writing is not None:
                            await writing  # in order: a batch lost with the lease stops the run here
                        page, ctx = decided.page, decided.ctx
                        writing = asyncio.ensure_future(
                            self._commit(ctx, messages, counts, held, page.position, page.last, windows)
                        )
                        totals.update(counts)
                        written += len(messages)
                if writing is not None:
                    await writing
            finally:
                await _stop(writing)
                await pages.aclose()
        finally:
            await self._leases.release(held)
        return RunSummary(campaign.id, run_id, "done", dict(totals), written, progress.resumed)

    async def _pages(
        self, campaign_id: str, run_id: str, progress: _Progress
    ) -> AsyncGenerator[Fetched, None]:
        """The run's batches from the stored position, each with its users' data read."""
        seen: set[str] = set()
        async for position, last, page in self._batches(progress):
            fresh = [user_id for user_id in dict.fromkeys(page) if user_id not in seen]
            seen.update(fresh)
            ids = {user_id: message_id(campaign_id, run_id, user_id) for user_id in fresh}
            message_keys = [self._keys.message(message) for message in ids.values()]
            fetched = await segments.fetch_users(self._redis, self._keys, fresh, message_keys=message_keys)
            yield Fetched(position, last, fetched, ids)

    async def _decided(
        self, pages: Prefetch, base: Context
    ) -> AsyncGenerator[tuple[_Deciding, Counter[str], list[tuple[UserData, Message]]], None]:
        """The run's pages decided, in order, `DECIDING_AT_ONCE` at a time, with their counters
        and messages; closing it early cancels the decisions under way."""
        deciders = ThreadPoolExecutor(
            DECIDING_AT_ONCE, thread_name_prefix="campaign-decide", initializer=search_on_one_core
        )
        deciding: deque[_Deciding] = deque()
        try:
            while True:
                while len(deciding) < DECIDING_AT_ONCE and (page := await pages.next()) is not None:
                    deciding.append(self._start_deciding(deciders, base, page))
                if not deciding:
                    return
                decided = deciding.popleft()
                counts, messages = await decided.task
                yield decided, counts, messages
        finally:
            for pending in deciding:
                await _stop(pending.task)
            deciders.shutdown(wait=False, cancel_futures=True)

    def _start_deciding(self, deciders: Executor, base: Context, page: Page) -> _Deciding:
        """Start deciding `page`, as of now, on one of `deciders`' threads."""
        ctx = replace(base, now=self._clock())
        return _Deciding(page, ctx, asyncio.ensure_future(self._decide(deciders, ctx, page)))

    async def _decide(
        self, deciders: Executor, ctx: Context, page: Page
    ) -> tuple[Counter[str], list[tuple[UserData, Message]]]:
        """One batch's counters and messages (with their users), decided on a `deciders` thread."""
        deciding = functools.partial(decide, page.users, ctx, explain=False)
        outcomes = await asyncio.get_running_loop().run_in_executor(deciders, deciding)
        written = [
            (outcome.user, _message(outcome, ctx, page.message_ids[outcome.user.user_id]))
            for outcome in outcomes
            if outcome.rendered
        ]
        return count(outcomes), written

    async def _commit(
        self,
        ctx: Context,
        written: list[tuple[UserData, Message]],
        counts: Mapping[str, int],
        held: Held,
        position: int,
        last: bool,
        windows: Windows,
    ) -> None:
        """One atomic script (`batch_write.APPLY`), applied only while this execution holds its leases."""
        keys, campaign_id, run_id = self._keys, ctx.campaign.id, ctx.run_id
        now = ctx.now.timestamp()
        messages = [message for _, message in written]
        latest = max((message.due for message in messages), default=now)
        ttl = math.ceil(self._settings.notifier.message_ttl_days * SECONDS_PER_DAY + max(0.0, latest - now))
        checkpoint: dict[str, str] = {"position": str(position)}
        if last:
            checkpoint.update(status="done", finished=repr(now))
        batch = BatchWrite()
        pipe: Any = batch  # redis-py types its command methods for its own clients only
        stage_messages(pipe, keys, messages, now=now, ttl_seconds=ttl)
        for user, message in written:
            stage_records(pipe, keys, user, message, now, windows)
        stats.stage_counts(pipe, keys, campaign_id, run_id, counts)
        pipe.hset(keys.campaign_run(campaign_id, run_id), mapping=checkpoint)
        for lease in held.keys:
            pipe.pexpire(lease, self._leases.lease_ms)
        document = batch.encoded()
        with unavailable_as_error("write campaign batch"):
            applied = await self._apply(keys=list(held.keys), args=[held.token, document])
        if not applied:
            raise self._leases.lost(held)

    async def _start(
        self,
        campaign_id: str,
        run_id: str,
        users: Sequence[str] | None,
        trigger_events: Mapping[str, RecentEvent] | None,
    ) -> _Progress:
        """Where this execution starts: a resumed run where its last execution stopped, a new
        population run or a call with its own users from the beginning (recorded for a resume)."""
        keys = self._keys
        run_key = keys.campaign_run(campaign_id, run_id)
        with unavailable_as_error("start campaign run"):
            stored: dict[str, str] = await self._redis.hgetall(run_key)  # type: ignore[assignment]
            if users is None and stored:
                return _Progress(
                    position=int(stored.get("position", "0")),
                    users=json.loads(stored["users"]) if "users" in stored else None,
                    trigger_events=_events_from_json(stored.get("trigger_events", "{}")),
                    resumed=True,
                    done=stored.get("status") == "done",
                )
            listed = list(dict.fromkeys(users)) if users is not None else None
            events = dict(trigger_events or {})
            fields = {"status": "running", "position": "0"}
            if listed is not None:
                fields["users"] = json.dumps(listed)
                fields["trigger_events"] = json.dumps({user: asdict(event) for user, event in events.items()})
            started = self._clock().timestamp()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(run_key, mapping=fields)  # type: ignore[arg-type]
                pipe.hsetnx(run_key, "started", repr(started))
                pipe.zadd(keys.campaign_runs(campaign_id), {run_id: started}, nx=True)
                await pipe.execute()
        return _Progress(0, listed, events, resumed=False, done=False)

    async def _batches(self, progress: _Progress) -> AsyncIterator[tuple[int, bool, list[str]]]:
        """(position after the batch, whether it is the last, its users) from the stored position."""
        size = self._settings.notifier.batch_size
        if progress.users is not None:
            users = progress.users
            start = progress.position
            if start >= len(users):
                yield len(users), True, []
            for offset in range(start, len(users), size):
                end = min(offset + size, len(users))
                yield end, end == len(users), users[offset:end]
            return
        async for cursor, page in segments.scan_population(self._redis, self._keys, size, progress.position):
            yield cursor, cursor == 0, page

    # --- resuming ---------------------------------------------------------------------------------

    async def queue(self, campaign: Campaign, run_id: str) -> None:
        """Record a population run that no process executes yet: the scheduler's leader finds it
        among `unfinished_runs` and executes it, so an API call never runs a campaign itself."""
        if campaign.status != "active":
            raise ConflictError(f"campaign {campaign.id!r} is paused", campaign_id=campaign.id)
        progress = await self._start(campaign.id, run_id, None, None)
        if progress.resumed:
            raise ConflictError(f"run {run_id!r} of campaign {campaign.id!r} exists", run_id=run_id)

    async def unfinished_runs(self) -> list[tuple[str, str]]:
        """(campaign id, run id) of runs left `running` by a process that no longer holds the lease."""
        keys = self._keys
        with unavailable_as_error("find unfinished runs"):
            campaign_ids = sorted(str(cid) for cid in await self._redis.hkeys(keys.campaigns()))
            async with self._redis.pipeline(transaction=False) as pipe:
                for campaign_id in campaign_ids:
                    pipe.zrange(keys.campaign_runs(campaign_id), 0, -1)
                listed = await pipe.execute()
            runs = [
                (cid, str(run)) for cid, run_ids in zip(campaign_ids, listed, strict=True) for run in run_ids
            ]
            async with self._redis.pipeline(transaction=False) as pipe:
                for campaign_id, run_id in runs:
                    pipe.hget(keys.campaign_run(campaign_id, run_id), "status")
                    pipe.exists(keys.campaign_run_lock(campaign_id, run_id))
                found = await pipe.execute()
        return [
            run
            for run, status, locked in zip(runs, found[::2], found[1::2], strict=True)
            if status == "running" and not locked
        ]

    # --- preview and audience -----------------------------------------------------------------

    async def preview(
        self,
        campaign: Campaign,
        user_id: str,
        *,
        run_id: str = PREVIEW_RUN,
        trigger_event: RecentEvent | None = None,
    ) -> Preview:
        """What `user_id` would get from a run `run_id` now, and why; writes nothing."""
        loaded = self._loaded()
        events = {user_id: trigger_event} if trigger_event is not None else {}
        ctx = await self._context(campaign, run_id, loaded, events)
        data = await segments.read_users(self._redis, self._keys, [user_id])
        [outcome] = await asyncio.to_thread(decide, data, ctx)
        return _preview(outcome, ctx)

    async def audience(self, segment: Segment, campaign_id: str = "preview") -> Audience:
        """How many users `segment` reaches now: exact up to `EXACT_AUDIENCE_MAX` profiles, else
        estimated from a random sample of `AUDIENCE_SAMPLE` (`estimated: true`)."""
        keys, size = self._keys, self._settings.notifier.batch_size
        with unavailable_as_error("audience"):
            population = int(await self._redis.scard(keys.profiles()))
        behaviour = await self.behaviour_of(segment)
        tally: Counter[str] = Counter()
        estimated = population > EXACT_AUDIENCE_MAX
        if estimated:
            with unavailable_as_error("sample population"):
                drawn = [str(u) for u in await self._redis.srandmember(keys.profiles(), AUDIENCE_SAMPLE)]  # type: ignore[union-attr]
            pages = [drawn[start : start + size] for start in range(0, len(drawn), size)]
            for page in pages:
                tally.update(await self._tally(segment, campaign_id, page, behaviour))
        else:
            seen: set[str] = set()
            async for _, page in segments.scan_population(self._redis, keys, size):
                fresh = [user for user in dict.fromkeys(page) if user not in seen]
                seen.update(fresh)
                tally.update(await self._tally(segment, campaign_id, fresh, behaviour))
        examined = tally["examined"]
        scale = population / examined if estimated and examined else 1.0
        share = segment.sample_percent / 100.0

        def scaled(name: str, factor: float = 1.0) -> int:
            return round(tally[name] * scale * factor)

        return Audience(
            population=population,
            examined=examined,
            matching=scaled("matching"),
            with_consent=scaled("with_consent"),
            with_device=scaled("with_device"),
            reachable=scaled("reachable"),
            sampled=scaled("matching", share),
            control=scaled("control", share),
            estimated=estimated,
        )

    async def _tally(
        self, segment: Segment, campaign_id: str, user_ids: list[str], behaviour: Behaviour
    ) -> Counter[str]:
        data = await segments.read_users(self._redis, self._keys, user_ids)
        return await asyncio.to_thread(tally_users, segment, campaign_id, data, behaviour)

    async def behaviour_of(self, segment: Segment) -> Behaviour:
        """Behaviour inputs for a segment; a category predicate needs the model's catalog."""
        loaded = self._models.loaded
        if loaded is None:
            if segment.purchased_in_category is not None:
                raise self._no_model()
            return behaviour_of(self._clock(), self._purchase_type(), None)
        await self._catalogs.refresh(self._store)
        return behaviour_of(self._clock(), self._purchase_type(), self._catalogs.catalog(loaded.engine))

    # --- shared set-up ----------------------------------------------------------------------------

    def _loaded(self) -> LoadedModel:
        loaded = self._models.loaded
        if loaded is None:
            raise self._no_model()
        return loaded

    def _no_model(self) -> ModelNotLoaded:
        return ModelNotLoaded(
            "no recommendation model is loaded: train and promote one (`recsvc models promote`)"
        )

    def _purchase_type(self) -> str:
        return self._settings.notifier.tracking.conversion_event_type

    async def _context(
        self,
        campaign: Campaign,
        run_id: str,
        loaded: LoadedModel,
        trigger_events: Mapping[str, RecentEvent],
    ) -> Context:
        await self._catalogs.refresh(self._store)
        content = campaign.content
        trending = await self._store.trending(content.items + TRENDING_MARGIN, content.category)
        return Context(
            campaign=campaign,
            run_id=run_id,
            rules=campaign.effective_rules(self._settings.notifier.rules),
            now=self._clock(),
            purchase_type=self._purchase_type(),
            default_zone=self._settings.notifier.default_timezone,
            loaded=loaded,
            catalog=self._catalogs.catalog(loaded.engine),
            trending=trending,
            content=self._templates.compile(content),
            trigger_events=trigger_events,
        )

    async def _windows(self, campaign: Campaign) -> Windows:
        """How long push records and pushed items are kept, for every campaign's rules."""
        defaults = self._settings.notifier.rules
        stored = await self._campaigns.list()
        effective = [
            campaign.effective_rules(defaults),
            *(other.effective_rules(defaults) for other in stored),
        ]
        return Windows(
            pushes=rules.record_window_seconds(effective),
            items=rules.item_window_seconds(effective, self._settings.notifier.tracking),
        )


def _message(outcome: Outcome, ctx: Context, identifier: str) -> Message:
    rendered, timing = outcome.rendered, outcome.timing
    assert rendered is not None and timing is not None  # only rendered outcomes become messages
    user_id = outcome.user.user_id
    return Message(
        message_id=identifier,
        campaign_id=ctx.campaign.id,
        run_id=ctx.run_id,
        user_id=user_id,
        title=rendered.title,
        body=rendered.body,
        deep_link=rendered.deep_link,
        items=tuple(item.item_id for item in outcome.items),
        due=timing.due.timestamp(),
        control=outcome.group == "control",
    )


def _preview(outcome: Outcome, ctx: Context) -> Preview:
    timing, rendered = outcome.timing, outcome.rendered
    zone = rules.user_zone((outcome.user.profile or {}).get("timezone"), ctx.default_zone)
    return Preview(
        campaign_id=ctx.campaign.id,
        user_id=outcome.user.user_id,
        group=outcome.group,
        checks=outcome.checks,
        reason=outcome.reason,
        scheduled=timing.scheduled.isoformat() if timing else None,
        due=timing.due.astimezone(UTC).isoformat() if timing else None,
        due_local=timing.due.astimezone(zone).isoformat() if timing else None,
        deferred=bool(timing and timing.deferred),
        title=rendered.title if rendered else None,
        body=rendered.body if rendered else None,
        deep_link=rendered.deep_link if rendered else None,
        items=outcome.items,
        strategy=outcome.strategy,
        model_version=ctx.loaded.version,
    )


def _events_from_json(document: str) -> dict[str, RecentEvent]:
    return {user: RecentEvent(**fields) for user, fields in json.loads(document).items()}


async def _stop(task: asyncio.Task[Any] | None) -> None:
    """Cancel a batch's decision or write still under way when a run stops early. A decision
    writes nothing; the write script is atomic, so the batch was applied whole or not at all,
    and a resume starts after the last batch applied."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait([task])  # raises only if this task itself is cancelled
    if not task.cancelled():
        task.exception()  # the run stopped for another reason, which is the news
