"""Deciding a batch of a campaign run: pure functions, run in a worker thread.

For each user: segment predicates, sample and control group, timing (local-time schedule, quiet
hours), consent, device and caps, then one `recommend_many` for the whole batch (or the content's
other item source), then the templates. `run`, `preview` and `audience` in `notifier.runner` all
decide through these functions, so a preview shows exactly what a run would do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from notifier import rules, segments, stats
from notifier.campaign import Campaign, LocalTimeSchedule, Segment
from notifier.segments import Behaviour, Check, UserData
from notifier.templates import CompiledContent, Rendered, RenderError, context
from recsvc.catalog import Catalog
from recsvc.config import PushRules
from recsvc.current_model import LoadedModel
from recsvc.engine import Engine, RecentEvent, Recommendation
from recsvc.errors import NotFoundError
from recsvc.state import unix_micros

Group = Literal["treatment", "control", "not_sampled", "not_in_segment", "not_due"]
# A local-time campaign is prepared once a day: each preparation writes the pushes falling due
# within a day of it, and leaves a user whose next allowed day is later to the preparation before it.
PREPARATION_WINDOW = timedelta(days=1)


@dataclass(frozen=True)
class Context:
    """Everything deciding a batch needs besides the users; immutable, shared with the thread."""

    campaign: Campaign
    run_id: str
    rules: PushRules
    now: datetime
    purchase_type: str
    default_zone: str
    loaded: LoadedModel
    catalog: Catalog
    trending: list[tuple[str, float]]
    content: CompiledContent
    trigger_events: Mapping[str, RecentEvent]

    @property
    def engine(self) -> Engine:
        return self.loaded.engine

    def behaviour(self) -> Behaviour:
        return behaviour_of(self.now, self.purchase_type, self.catalog)


@dataclass
class Outcome:
    """The decision for one user: group, checks, why not (if not), when, what."""

    user: UserData
    group: Group
    checks: list[Check]
    reason: str | None = None
    timing: rules.Timing | None = None
    items: list[Recommendation] = field(default_factory=list)
    strategy: str | None = None
    rendered: Rendered | None = None


def behaviour_of(now: datetime, purchase_type: str, catalog: Catalog | None) -> Behaviour:
    """Behaviour inputs with item categories from `catalog` (None: no category is known)."""

    def category_of(item_id: str) -> str | None:
        info = catalog.info(item_id) if catalog is not None else None
        return info.category if info is not None else None

    return Behaviour(now, purchase_type, category_of)


def decide(users: Sequence[UserData], ctx: Context, *, explain: bool = True) -> list[Outcome]:
    """The decision for each user, in order: the one implementation behind run and preview.

    Without `explain`, outcomes carry no segment checks (only a preview shows them).
    """
    behaviour = ctx.behaviour()
    outcomes = [_plan(user, ctx, behaviour, explain) for user in users]
    wanted = [
        outcome for outcome in outcomes if outcome.group in ("treatment", "control") and not outcome.reason
    ]
    _recommend(wanted, ctx)
    for outcome in wanted:
        if not outcome.items:
            outcome.reason = outcome.reason or stats.NO_ITEMS
            continue
        values = context(
            outcome.user.user_id, outcome.user.profile, outcome.items, ctx.campaign.id, ctx.campaign.name
        )
        try:
            outcome.rendered = ctx.content.render(values)
        except RenderError:
            outcome.reason = stats.TEMPLATE_ERROR
    return outcomes


def _plan(user: UserData, ctx: Context, behaviour: Behaviour, explain: bool) -> Outcome:
    """Group, timing and any reason to stop, before recommendations."""
    campaign, segment = ctx.campaign, ctx.campaign.segment
    if explain:
        checks = segments.explain(segment, user, behaviour)
        passed = all(check.passed for check in checks)
    else:
        checks, passed = [], segments.matches(segment, user, behaviour)
    if not passed:
        reason = stats.FORGOTTEN if user.forgotten else None
        return Outcome(user, "not_in_segment", checks, reason=reason)
    if not segments.sampled(segment, campaign.id, ctx.run_id, user.user_id):
        return Outcome(user, "not_sampled", checks)
    profile = user.profile or {}
    zone = rules.user_zone(profile.get("timezone"), ctx.default_zone)
    timing = rules.timing(_scheduled(ctx, zone), ctx.rules, zone)
    if isinstance(campaign.schedule, LocalTimeSchedule) and timing.scheduled - ctx.now >= PREPARATION_WINDOW:
        return Outcome(user, "not_due", checks, timing=timing)  # `weekdays` skip until after tomorrow
    if segments.in_control(segment, campaign.id, user.user_id):
        return Outcome(user, "control", checks, timing=timing)
    outcome = Outcome(user, "treatment", checks, timing=timing)
    if not profile.get("push_consent"):
        outcome.reason = stats.NO_CONSENT
    elif not profile.get("devices"):
        outcome.reason = stats.NO_DEVICE
    else:
        outcome.reason = rules.cap_reason(ctx.rules, zone, timing.due, user.pushes, campaign.id, ctx.run_id)
    return outcome


def _scheduled(ctx: Context, zone: ZoneInfo) -> datetime:
    """Now, or for a local-time campaign the user's next local send time."""
    schedule = ctx.campaign.schedule
    if isinstance(schedule, LocalTimeSchedule):
        return rules.next_local_time(ctx.now, rules.clock_time(schedule.at), zone, schedule.weekdays)
    return ctx.now


def _excluded(outcome: Outcome, ctx: Context) -> set[str]:
    """Dismissed items and items pushed within the no-repeat window of the push's due time."""
    due = outcome.timing.due if outcome.timing is not None else ctx.now
    recent = rules.recently_pushed(outcome.user.pushed_items, due, ctx.rules.item_repeat_days)
    return set(outcome.user.dismissed) | recent


def _recommend(outcomes: Sequence[Outcome], ctx: Context) -> None:
    """Fill in items and strategy by the content's source; one `recommend_many` for the rest."""
    engine, content = ctx.engine, ctx.campaign.content
    k, category = content.items, content.category
    excluded = {outcome.user.user_id: _excluded(outcome, ctx) for outcome in outcomes}
    personal: list[Outcome] = []
    if content.source == "trending":
        most = max((len(items) for items in excluded.values()), default=0)
        ranked = engine.popular(k=k + most, category=category, catalog=ctx.catalog, trending=ctx.trending)
        for outcome in outcomes:
            _fill(outcome, ranked, excluded[outcome.user.user_id], k, "trending")
    else:
        for outcome in outcomes:
            first = _anchor(outcome, ctx)
            found = _around(first, excluded[outcome.user.user_id], ctx) if first is not None else None
            if found is None:
                personal.append(outcome)
            else:
                _fill(outcome, found, excluded[outcome.user.user_id], k, content.source)
                _require_trigger_item(outcome, first)
    if not personal:
        return
    users = [outcome.user.user_id for outcome in personal]
    results = engine.recommend_many(
        users,
        k=k,
        recent={outcome.user.user_id: outcome.user.recent for outcome in personal},
        excluded={user: excluded[user] for user in users},
        category=category,
        catalog=ctx.catalog,
        trending=ctx.trending,
        now_us=unix_micros(ctx.now),
    )
    for outcome, result in zip(personal, results, strict=True):
        outcome.items, outcome.strategy = result.items, result.strategy


def _anchor(outcome: Outcome, ctx: Context) -> tuple[str, bool] | None:
    """The item a non-personalized source starts from, and whether it leads the list itself."""
    source = ctx.campaign.content.source
    if source == "trigger_item":
        event = ctx.trigger_events.get(outcome.user.user_id)
        return (event.item_id, True) if event is not None else None
    if source == "similar_to_last_viewed":
        viewed = next((event.item_id for event in outcome.user.recent if event.type == "view"), None)
        return (viewed, False) if viewed is not None else None
    return None


def _around(anchor: tuple[str, bool], excluded: set[str], ctx: Context) -> list[Recommendation] | None:
    """The anchor item (when it leads) and items similar to it; None when the model lacks it."""
    item_id, leads = anchor
    content = ctx.campaign.content
    head: list[Recommendation] = []
    info = ctx.catalog.info(item_id)
    if leads and info is not None and info.available and content.category in (None, info.category):
        head = [Recommendation(item_id, 1.0, info.title, info.category, info.price, info.url, info.image_url)]
    wanted = min(content.items + len(excluded) + 1, len(ctx.engine.artifact.item_ids))
    try:
        similar = ctx.engine.similar(item_id, k=wanted, category=content.category, catalog=ctx.catalog)
    except NotFoundError:
        return head or None
    return head + similar


def _require_trigger_item(outcome: Outcome, anchor: tuple[str, bool] | None) -> None:
    """A push about the item that triggered it ("... is in your cart") must lead with that item;
    when the item is unavailable, dismissed or was pushed within the no-repeat window, no push."""
    if anchor is not None and anchor[1] and (not outcome.items or outcome.items[0].item_id != anchor[0]):
        outcome.items = []
        outcome.reason = stats.TRIGGER_ITEM_EXCLUDED


def _fill(
    outcome: Outcome, ranked: Sequence[Recommendation], excluded: set[str], k: int, strategy: str
) -> None:
    outcome.items = [item for item in ranked if item.item_id not in excluded][:k]
    outcome.strategy = strategy


def count(outcomes: Sequence[Outcome]) -> Counter[str]:
    """The counters a batch adds (see `notifier.stats` for their meaning)."""
    counts: Counter[str] = Counter()
    for outcome in outcomes:
        if outcome.group == "treatment":
            counts[stats.TARGETED] += 1
            if outcome.reason is not None:
                counts[stats.suppressed(outcome.reason)] += 1
                continue
            counts[stats.SENT] += 1
            if outcome.timing is not None and outcome.timing.deferred:
                counts[stats.DEFERRED] += 1
        elif outcome.group == "control":
            counts[stats.control(stats.TARGETED)] += 1
            if outcome.reason is not None:
                counts[stats.control(stats.suppressed(outcome.reason))] += 1
        elif outcome.reason is not None:  # a forgotten user named by a triggered run
            counts[stats.suppressed(outcome.reason)] += 1
    return counts


def tally_users(
    segment: Segment, campaign_id: str, users: Sequence[UserData], behaviour: Behaviour
) -> Counter[str]:
    """Audience counters of one batch: matching, with consent, with a device, both, control."""
    tally: Counter[str] = Counter(examined=len(users))
    for user in users:
        if user.profile is None or not segments.matches(segment, user, behaviour):
            continue
        consent, device = bool(user.profile["push_consent"]), bool(user.profile["devices"])
        tally.update(
            matching=1,
            with_consent=int(consent),
            with_device=int(device),
            reachable=int(consent and device),
            control=int(segments.in_control(segment, campaign_id, user.user_id)),
        )
    return tally
