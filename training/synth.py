"""Synthetic shop data: a catalog, user profiles and a month of behaviour, written as a dataset folder.

The quickstart, the demos and the benchmarks need data that looks like a real shop's without
shipping anyone's real data. The structure is planted on purpose so that results are predictable:
each user's interest is concentrated on a few categories (so a personalised model must beat a
popularity baseline), item popularity is heavy-tailed (so that baseline is not trivial), sessions
follow the user's local clock (so send-time logic has something to find), and profiles carry the
fields segments and campaigns filter on.

Events are generated chunk by chunk with vectorised numpy and each chunk is written before the next
is drawn, so tens of millions of events fit in a few GiB. Files are written by `training.io`, aside
and then moved into place, so a crash never leaves a half file under a final name.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from tqdm import tqdm

from recsvc.errors import InputError
from recsvc.schema import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA, UTC_MICROS
from training import io

DEFAULT_CHUNK_ROWS = 4_000_000
# Order of the event slots that one view can spawn; also the order they are emitted in, so
# cutting a chunk at any row keeps every purchase's cart and every cart's view.
EVENT_TYPES = ("view", "favorite", "add_to_cart", "purchase")

CART_RATE = 0.10  # add_to_cart per view, for a user of average propensity
PURCHASE_RATE = 0.30  # purchase per add_to_cart
FAVORITE_RATE = 0.03  # favorite per view
EXPLORE_RATE = 0.08  # views outside the user's taste, drawn by category popularity
MEAN_VIEWS_PER_SESSION = 5.0
MAX_VIEWS_PER_SESSION = 60
ITEM_POPULARITY_EXPONENT = 0.9  # item weight = rank ** -exponent
CATEGORY_SIZE_EXPONENT = 0.6  # category share of items and of demand = rank ** -exponent
ACTIVITY_PARETO_SHAPE = 2.0  # users' activity tail; capped so no single user is a bot
ACTIVITY_CAP = 200.0

# Category name, median price, product nouns. Categories beyond the list are "category-<n>".
CATEGORIES: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    ("apparel", 40.0, ("T-Shirt", "Hoodie", "Jacket", "Jeans", "Dress")),
    ("shoes", 80.0, ("Runner Shoe", "Sneaker", "Boot", "Sandal", "Loafer")),
    ("electronics", 250.0, ("Headphones", "Speaker", "Charger", "Smartwatch", "Tablet")),
    ("beauty", 25.0, ("Serum", "Lipstick", "Moisturizer", "Palette", "Cleanser")),
    ("home", 60.0, ("Lamp", "Throw Blanket", "Vase", "Cushion", "Rug")),
    ("kitchen", 45.0, ("Skillet", "Knife Set", "Blender", "Kettle", "Mixing Bowl")),
    ("sports", 55.0, ("Yoga Mat", "Dumbbell", "Jump Rope", "Water Bottle", "Tennis Racket")),
    ("books", 15.0, ("Novel", "Cookbook", "Travel Guide", "Journal", "Atlas")),
    ("toys", 30.0, ("Puzzle", "Building Set", "Plush Bear", "Race Car", "Board Game")),
    ("bags", 70.0, ("Backpack", "Tote", "Duffel", "Crossbody Bag", "Wallet")),
    ("jewelry", 120.0, ("Necklace", "Ring", "Bracelet", "Earrings", "Pendant")),
    ("grocery", 8.0, ("Coffee Beans", "Olive Oil", "Granola", "Tea Sampler", "Dark Chocolate")),
    ("health", 20.0, ("Vitamins", "Protein Powder", "Thermometer", "Massage Gun", "First Aid Kit")),
    ("garden", 35.0, ("Planter", "Hose", "Pruner", "Seed Kit", "Watering Can")),
    ("pet-supplies", 20.0, ("Dog Bed", "Cat Tree", "Leash", "Chew Toy", "Pet Bowl")),
    ("baby", 30.0, ("Stroller", "Onesie", "Baby Monitor", "Teether", "Diaper Bag")),
    ("gaming", 60.0, ("Controller", "Gaming Mouse", "Keyboard", "Headset", "Game")),
    ("outdoor", 90.0, ("Tent", "Sleeping Bag", "Headlamp", "Camping Stove", "Hiking Pole")),
    ("watches", 180.0, ("Chronograph", "Dive Watch", "Field Watch", "Dress Watch", "Smart Band")),
    ("furniture", 300.0, ("Armchair", "Bookshelf", "Desk", "Sofa", "Side Table")),
)
EXTRA_CATEGORY = (40.0, ("Product", "Item", "Set", "Kit", "Bundle"))
ADJECTIVES = (
    "Classic", "Trail", "Urban", "Pro", "Everyday", "Premium", "Compact", "Vintage",
    "Eco", "Smart", "Ultra", "Essential", "Deluxe", "Sport", "Nordic", "Studio",
)  # fmt: skip

# IANA zone, UTC offset in minutes (standard time: DST is ignored), locale, share of users.
TIMEZONES: tuple[tuple[str, int, str, float], ...] = (
    ("America/New_York", -300, "en-US", 14.0),
    ("America/Chicago", -360, "en-US", 7.0),
    ("America/Denver", -420, "en-US", 3.0),
    ("America/Los_Angeles", -480, "en-US", 9.0),
    ("Pacific/Honolulu", -600, "en-US", 1.0),
    ("America/Toronto", -300, "en-CA", 3.0),
    ("America/Mexico_City", -360, "es-MX", 4.0),
    ("America/Sao_Paulo", -180, "pt-BR", 5.0),
    ("Europe/London", 0, "en-GB", 8.0),
    ("Europe/Berlin", 60, "de-DE", 8.0),
    ("Europe/Paris", 60, "fr-FR", 6.0),
    ("Europe/Madrid", 60, "es-ES", 4.0),
    ("Europe/Warsaw", 60, "pl-PL", 2.0),
    ("Africa/Lagos", 60, "en-NG", 2.0),
    ("Asia/Kolkata", 330, "en-IN", 6.0),
    ("Asia/Kathmandu", 345, "ne-NP", 0.5),
    ("Asia/Singapore", 480, "en-SG", 2.0),
    ("Asia/Tokyo", 540, "ja-JP", 6.0),
    ("Asia/Seoul", 540, "ko-KR", 2.0),
    ("Australia/Sydney", 600, "en-AU", 3.0),
    ("Pacific/Auckland", 720, "en-NZ", 2.0),
    ("Pacific/Kiritimati", 840, "en-KI", 0.5),
)
ENGLISH_LOCALE_RATE = 0.08  # users whose app runs in en-US whatever their zone
TIERS = ("bronze", "silver", "gold", "platinum")
TIER_SHARES = (0.55, 0.27, 0.13, 0.05)
TIER_POINTS = (200.0, 1_500.0, 5_000.0, 15_000.0)
PUSH_CONSENT_RATE = 0.80
AVAILABLE_RATE = 0.97
# Relative session starts by local hour 0..23 and by local weekday Monday..Sunday.
HOUR_WEIGHTS = (
    0.6, 0.35, 0.2, 0.15, 0.15, 0.25, 0.5, 0.9, 1.2, 1.3, 1.4, 1.5,
    1.8, 1.7, 1.5, 1.5, 1.6, 1.8, 2.2, 2.6, 2.8, 2.5, 1.8, 1.1,
)  # fmt: skip
WEEKDAY_WEIGHTS = (1.0, 0.97, 0.97, 1.0, 1.05, 1.2, 1.25)

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class SynthSummary:
    """What one `synthesize` run wrote; `files` counts the event part files."""

    users: int
    items: int
    events: int
    categories: int
    files: int
    seconds: float


@dataclass(frozen=True)
class _Catalog:
    """Items as the event sampler needs them: by category, with cumulative popularity."""

    ids: pa.Array
    price: Floats
    order: Ints  # item indices grouped by category
    cum: Floats  # over `order`: category + cumulative share of its popularity, in (c, c + 1]
    last: Ints  # position in `order` of each category's last item
    category_cdf: Floats  # demand per category, for tastes and exploring views


@dataclass(frozen=True)
class _Population:
    """Users as the event sampler needs them: activity, taste, local clock, buying propensity."""

    ids: pa.Array
    activity_cdf: Floats
    taste: Ints  # (users, 3) categories
    taste_cdf: Floats  # (users, 2) cumulative weight of the first two taste slots
    phase: Ints  # seconds from the user's local midnight to the window start
    weekday: Ints  # the user's local weekday (Monday 0) at the window start
    propensity: Floats  # multiplies CART_RATE


def synthesize(
    out: Path,
    *,
    users: int,
    items: int,
    events: int,
    categories: int = 20,
    days: int = 28,
    seed: int = 7,
    end: datetime | None = None,
    progress: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> SynthSummary:
    """Write `out/items.parquet`, `out/users.parquet` and `out/events/part-*.parquet`.

    Events span the `days` before `end` (default: now, UTC, truncated to the hour) and number
    exactly `events`. The output depends only on the arguments (`chunk_rows` included), never on
    the machine. Stale part files from an earlier, larger run in the same folder are removed.
    """
    _validate(
        users=users, items=items, events=events, categories=categories, days=days, chunk_rows=chunk_rows
    )
    if end is None:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    elif end.tzinfo is None:
        raise InputError("end must be timezone-aware", field="end")
    started = time.perf_counter()
    start = end.astimezone(UTC) - timedelta(days=days)
    start_us = (start - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    catalog_seed, users_seed, events_seed = np.random.SeedSequence(seed).spawn(3)

    catalog, items_table = _make_catalog(np.random.default_rng(catalog_seed), items, categories)
    population, users_table = _make_population(
        np.random.default_rng(users_seed), users, catalog.category_cdf, start_us // 1_000_000
    )
    out.mkdir(parents=True, exist_ok=True)
    io.write_items(items_table, out / "items.parquet")
    io.write_users(users_table, out / "users.parquet")

    events_dir = out / "events"
    events_dir.mkdir(exist_ok=True)
    n_chunks = max(1, math.ceil(events / chunk_rows))
    written: set[str] = set()
    chunk_seeds = events_seed.spawn(n_chunks)
    for index in tqdm(range(n_chunks), desc="events", unit="chunk", disable=not progress):
        rows = min(chunk_rows, events - index * chunk_rows)
        rng = np.random.default_rng(chunk_seeds[index])
        table = _event_table(rng, rows, catalog, population, days * 86_400, start_us)
        name = f"part-{index:05d}.parquet"
        io.write_events(table, events_dir / name)
        written.add(name)
    for stale in [*events_dir.glob("part-*.parquet"), *events_dir.glob(".part-*.tmp")]:
        if stale.name not in written:
            stale.unlink()
    return SynthSummary(users, items, events, categories, n_chunks, time.perf_counter() - started)


def _validate(**sizes: int) -> None:
    minimum = {"events": 0}
    for name, value in sizes.items():
        if value < minimum.get(name, 1):
            raise InputError(f"{name} must be at least {minimum.get(name, 1)}, got {value}", field=name)
    if sizes["categories"] > sizes["items"]:
        raise InputError("categories must not exceed items: every category needs an item", field="categories")


def _ids(prefix: str, count: int) -> list[str]:
    """Zero-padded ids as wide as `count` needs, so they sort like their numbers."""
    width = len(str(count))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def _cdf(weights: Floats) -> Floats:
    cdf = np.cumsum(weights)
    return np.asarray(cdf / cdf[-1], dtype=np.float64)


def _draw(rng: np.random.Generator, cdf: Floats, size: int | tuple[int, ...]) -> Ints:
    """Indices drawn from a normalised cumulative distribution."""
    picked = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(picked, len(cdf) - 1).astype(np.int64)


def _make_catalog(rng: np.random.Generator, items: int, categories: int) -> tuple[_Catalog, pa.Table]:
    share = np.arange(1, categories + 1, dtype=np.float64) ** -CATEGORY_SIZE_EXPONENT
    share /= share.sum()
    # Every category gets one item, the rest by share with largest remainders.
    quota = (items - categories) * share
    counts = np.floor(quota).astype(np.int64)
    counts[np.argsort(counts - quota, kind="stable")[: items - categories - counts.sum()]] += 1
    counts += 1
    category = rng.permutation(np.repeat(np.arange(categories), counts))
    weight = (rng.permutation(items) + 1.0) ** -ITEM_POPULARITY_EXPONENT

    order = np.argsort(category, kind="stable").astype(np.int64)
    last = np.cumsum(counts) - 1
    running = np.cumsum(weight[order])
    before = np.concatenate([[0.0], running[last[:-1]]])
    totals = running[last] - before
    cum = np.repeat(np.arange(categories), counts) + (running - np.repeat(before, counts)) / np.repeat(
        totals, counts
    )
    cum[last] = np.arange(1, categories + 1)  # exact upper bounds, whatever the rounding

    specs = [
        CATEGORIES[c] if c < len(CATEGORIES) else (f"category-{c + 1}", *EXTRA_CATEGORY)
        for c in range(categories)
    ]
    median = np.array([spec[1] for spec in specs])[category]
    price = np.maximum(np.round(median * rng.lognormal(0.0, 0.45, items)) - 0.01, 0.99)
    adjective = rng.integers(0, len(ADJECTIVES), items)
    noun = rng.integers(0, 5, items)
    number = rng.integers(1000, 10_000, items)
    ids = _ids("i", items)
    titles = [
        f"{ADJECTIVES[a]} {specs[c][2][n % len(specs[c][2])]} {k}"
        for a, c, n, k in zip(
            adjective.tolist(), category.tolist(), noun.tolist(), number.tolist(), strict=True
        )
    ]
    id_array = pa.array(ids, pa.string())
    table = pa.Table.from_arrays(
        [
            id_array,
            pa.array(titles, pa.string()),
            pa.array([spec[0] for spec in specs], pa.string()).take(category),
            pa.array(price, pa.float64()),
            pa.array(rng.random(items) < AVAILABLE_RATE),
            pa.array([f"https://shop.example.com/p/{i}" for i in ids], pa.string()),
            pa.array([f"https://img.shop.example.com/p/{i}.jpg" for i in ids], pa.string()),
        ],
        schema=ITEM_SCHEMA,
    )
    return _Catalog(id_array, price, order, cum, last, _cdf(share)), table


def _make_population(
    rng: np.random.Generator, users: int, category_cdf: Floats, start_s: int
) -> tuple[_Population, pa.Table]:
    activity = np.minimum(rng.pareto(ACTIVITY_PARETO_SHAPE, users) + 1.0, ACTIVITY_CAP)
    taste = _draw(rng, category_cdf, (users, 3))
    taste_cdf = np.cumsum(rng.dirichlet((0.6, 0.6, 0.6), users)[:, :2], axis=1)
    zone = _draw(rng, _cdf(np.array([tz[3] for tz in TIMEZONES])), users)
    local = start_s + np.array([tz[1] * 60 for tz in TIMEZONES], dtype=np.int64)[zone]
    sigma = 0.5
    propensity = rng.lognormal(-sigma * sigma / 2, sigma, users)

    # Loyalty follows activity, loosely: tier by quantile of a noisy activity score.
    score = np.log(activity) + rng.normal(0.0, 0.3, users)
    cuts = np.quantile(score, np.cumsum(TIER_SHARES)[:-1])
    tier = np.searchsorted(cuts, score)
    points = np.array(TIER_POINTS)[tier] * rng.lognormal(0.0, 0.5, users) * activity**0.5
    locales = sorted({tz[2] for tz in TIMEZONES})
    locale = np.array([locales.index(tz[2]) for tz in TIMEZONES])[zone]
    locale[rng.random(users) < ENGLISH_LOCALE_RATE] = locales.index("en-US")

    ids = pa.array(_ids("u", users), pa.string())
    table = pa.Table.from_arrays(
        [
            ids,
            pa.array([tz[0] for tz in TIMEZONES], pa.string()).take(zone),
            pa.array(TIERS, pa.string()).take(tier),
            pa.array(np.round(points).astype(np.int64)),
            pa.array(locales, pa.string()).take(locale),
            pa.array(rng.random(users) < PUSH_CONSENT_RATE),
        ],
        schema=USER_SCHEMA,
    )
    population = _Population(
        ids=ids,
        activity_cdf=_cdf(activity),
        taste=taste,
        taste_cdf=taste_cdf,
        phase=local % 86_400,
        weekday=(local // 86_400 + 3) % 7,  # 1970-01-01 was a Thursday
        propensity=propensity,
    )
    return population, table


def _event_table(
    rng: np.random.Generator,
    rows: int,
    catalog: _Catalog,
    population: _Population,
    span_s: int,
    start_us: int,
) -> pa.Table:
    """Exactly `rows` events, sorted by time: whole sessions, the last one possibly cut short."""
    rows_per_session = MEAN_VIEWS_PER_SESSION * (1 + FAVORITE_RATE + CART_RATE * (1 + PURCHASE_RATE))
    parts: list[tuple[Ints, Ints, Ints, Floats]] = []
    have = 0
    while have < rows or not parts:
        part = _simulate(rng, int((rows - have) / rows_per_session * 1.05) + 8, catalog, population, span_s)
        parts.append(part)
        have += len(part[0])
    user, item, kind, seconds = (np.concatenate(column)[:rows] for column in zip(*parts, strict=True))
    ts = start_us + np.clip(np.rint(seconds * 1e6).astype(np.int64), 0, span_s * 1_000_000)
    by_time = np.argsort(ts, kind="stable")
    user, item, kind, ts = user[by_time], item[by_time], kind[by_time], ts[by_time]
    purchase = kind == EVENT_TYPES.index("purchase")
    return pa.Table.from_arrays(
        [
            population.ids.take(user),
            catalog.ids.take(item),
            pa.array(EVENT_TYPES, pa.string()).take(kind),
            pa.array(ts, UTC_MICROS),
            pa.array(catalog.price[item], pa.float64(), mask=~purchase),
        ],
        schema=EVENT_SCHEMA,
    )


def _simulate(
    rng: np.random.Generator, sessions: int, catalog: _Catalog, population: _Population, span_s: int
) -> tuple[Ints, Ints, Ints, Floats]:
    """Events of `sessions` sessions in emission order: (user, item, type index, seconds into window)."""
    user = _draw(rng, population.activity_cdf, sessions)
    # A start in the user's local time: weekday and hour by rhythm, any week of the window.
    weekday = _draw(rng, _cdf(np.array(WEEKDAY_WEIGHTS)), sessions)
    day = (
        rng.integers(0, math.ceil(span_s / 86_400 / 7), sessions) * 7
        + (weekday - population.weekday[user]) % 7
    )
    hour = _draw(rng, _cdf(np.array(HOUR_WEIGHTS)), sessions) + rng.random(sessions)
    start = np.mod(day * 86_400.0 + hour * 3600.0 - population.phase[user], span_s)

    views = np.minimum(rng.geometric(1 / MEAN_VIEWS_PER_SESSION, sessions), MAX_VIEWS_PER_SESSION)
    session = np.repeat(np.arange(sessions), views)
    first = np.cumsum(views) - views
    gap = rng.exponential(40.0, len(session)) + 3.0
    gap[first] = 0.0
    elapsed = np.cumsum(gap)
    view_time = start[session] + elapsed - elapsed[first][session]
    view_user = user[session]
    view_item = _pick_items(rng, view_user, catalog, population)

    count = len(session)
    times = np.empty((count, 4))
    times[:, 0] = view_time
    times[:, 1] = view_time + rng.exponential(20.0, count) + 1.0
    times[:, 2] = view_time + rng.exponential(30.0, count) + 2.0
    times[:, 3] = times[:, 2] + rng.exponential(90.0, count) + 5.0
    # Sessions that would run past the window's end are moved back whole, to end in its last minutes.
    session_end = np.maximum.reduceat(times[:, [1, 3]].max(axis=1), first)
    overrun = np.where(session_end > span_s, session_end - span_s + rng.uniform(1.0, 600.0, sessions), 0.0)
    times -= overrun[session][:, None]

    emitted = np.empty((count, 4), dtype=bool)
    emitted[:, 0] = True
    emitted[:, 1] = rng.random(count) < FAVORITE_RATE
    emitted[:, 2] = rng.random(count) < np.minimum(CART_RATE * population.propensity[view_user], 0.9)
    emitted[:, 3] = emitted[:, 2] & (rng.random(count) < PURCHASE_RATE)
    slot = np.flatnonzero(emitted)
    view = slot // 4
    return view_user[view], view_item[view], slot % 4, times.ravel()[slot]


def _pick_items(rng: np.random.Generator, user: Ints, catalog: _Catalog, population: _Population) -> Ints:
    """One item per view: a category from the user's taste (or, exploring, from all demand), then
    an item of it by popularity."""
    draw = rng.random(len(user))
    cdf = population.taste_cdf[user]
    taste_slot = (draw > cdf[:, 0]).astype(np.int64) + (draw > cdf[:, 1])
    category = population.taste[user, taste_slot]
    explore = rng.random(len(user)) < EXPLORE_RATE
    category[explore] = _draw(rng, catalog.category_cdf, int(explore.sum()))
    position = np.searchsorted(catalog.cum, category + rng.random(len(user)), side="right")
    return catalog.order[np.minimum(position, catalog.last[category])]
