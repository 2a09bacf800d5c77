"""Real-time state in Redis, for the API and the notifier: recent history, dismissals, profiles,
trending items, catalog overrides, and the stream of accepted events the archive moves to disk.

Trending uses forward decay (Cormode et al., "Forward Decay", ICDE 2009): an event at time t adds
weight x 2^((t - t0) / half-life) to its item, with t0 a fixed epoch kept in Redis, so a score is
never rewritten as time passes; reading divides by 2^((now - t0) / half-life). Raw scores grow
by 2x per half-life, so once now - t0 exceeds `TRENDING_RESCALE_AFTER_HALF_LIVES` half-lives the
epoch moves forward by a whole number of half-lives and every trending set is multiplied by the
matching power of two (exact in floating point), in one transaction. 64 half-lives keeps raw
scores below 2^64 x total weight, far from the 2^1024 overflow of a double, and rescales rarely
(every 64 days with the default 24-hour half-life).

Redis connection failures and timeouts surface as `RedisUnavailable`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from recsvc.config import Settings
from recsvc.engine import RecentEvent
from recsvc.errors import InputError
from recsvc.keys import Keys, history_ttl_seconds
from recsvc.redis_conn import text, unavailable_as_error

TRENDING_RESCALE_AFTER_HALF_LIVES = 64
# A rescale drops items whose decayed weight fell below this (one view, 20 half-lives ago).
TRENDING_PRUNE_BELOW = 2.0**-20

PROFILE_FIELDS = frozenset({"attributes", "timezone", "push_consent", "devices"})
# Written with every profile update: a Redis hash with no field does not exist, so without it a
# profile stored empty (`PUT {}`), or emptied by clearing its fields, was answered 200 and then
# not found, though it counted in the campaign population.
_STORED = "stored"
_DEVICE = "device:"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)

# KEYS: epoch, global trending set, category trending sets. ARGV: half-life (s), epoch to set
# when none is stored, then per event: item id, weight, time (unix s), index of its category's
# key in KEYS (0: none). Reading the epoch in the script keeps writes exact during a rescale.
_TRENDING_ADD = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[2]
  redis.call('SET', KEYS[1], epoch)
end
local t0 = tonumber(epoch)
local half_life = tonumber(ARGV[1])
for i = 3, #ARGV, 4 do
  local amount = tonumber(ARGV[i + 1]) * 2 ^ ((tonumber(ARGV[i + 2]) - t0) / half_life)
  amount = string.format('%.17g', amount)
  redis.call('ZINCRBY', KEYS[2], amount, ARGV[i])
  local category = tonumber(ARGV[i + 3])
  if category > 0 then
    redis.call('ZINCRBY', KEYS[category], amount, ARGV[i])
  end
end
return epoch
"""

# KEYS: the user's history, their dismissed set, the forgotten set and, when asked for, the
# catalog overrides' version. ARGV: the user id. One script rather than a MULTI/EXEC of the same
# reads: this runs on every recommendation request, and redis-py's client-side work for the
# transaction (six commands packed, six replies parsed) cost about 60 µs more (measured).
_USER_STATE = """
local version = false
if KEYS[4] then
  version = redis.call('GET', KEYS[4])
end
return {redis.call('LRANGE', KEYS[1], 0, -1), redis.call('SMEMBERS', KEYS[2]),
        redis.call('SISMEMBER', KEYS[3], ARGV[1]), version}
"""


@dataclass(frozen=True)
class Event:
    """One accepted event; `ts` is timezone-aware."""

    user_id: str
    item_id: str
    type: str
    ts: datetime
    value: float | None = None


@dataclass(frozen=True)
class UserState:
    """What serving needs about a user per request; `recent` is newest first."""

    recent: list[RecentEvent]
    dismissed: set[str]
    forgotten: bool


def utc_now() -> datetime:
    return datetime.now(UTC)


def unix_micros(ts: datetime) -> int:
    """Exact microseconds since the Unix epoch of an aware datetime."""
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InputError(f"timestamp {ts.isoformat()} has no timezone", field="ts")
    return (ts - _EPOCH) // _ONE_MICROSECOND


def _compact(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False)


def _history_entry(event: Event, ts_us: int) -> str:
    entry: dict[str, Any] = {"i": event.item_id, "t": event.type, "ts": ts_us}
    if event.value is not None:
        entry["v"] = event.value
    return _compact(entry)


def device_field(device_id: str) -> str:
    """The field of a device in a profile hash (see `Keys.profile`)."""
    return _DEVICE + device_id


def profile_from_hash(user_id: str, stored: Mapping[str, str]) -> dict[str, Any] | None:
    """A profile hash (see `Keys.profile`) as a profile with every field present, or None if empty."""
    if not stored:
        return None
    devices = {
        name.removeprefix(_DEVICE): json.loads(value)
        for name, value in stored.items()
        if name.startswith(_DEVICE)
    }
    return {
        "user_id": user_id,
        "attributes": json.loads(stored.get("attributes", "{}")),
        "timezone": stored.get("timezone"),
        "push_consent": stored.get("push_consent") == "1",
        "devices": devices,
    }


def recent_event(entry: str) -> RecentEvent:
    """One entry of a user's history list (see `Keys.history`) as a `RecentEvent`."""
    fields = json.loads(entry)
    value = fields.get("v")
    return RecentEvent(fields["i"], fields["t"], int(fields["ts"]), None if value is None else float(value))


def stream_fields(event: Event, ts_us: int) -> dict[str, str]:
    """An event as fields of the event stream: ts in unix microseconds, value "" when absent."""
    value = "" if event.value is None else repr(float(event.value))
    return {
        "user_id": event.user_id,
        "item_id": event.item_id,
        "type": event.type,
        "ts": str(ts_us),
        "value": value,
    }


class Store:
    """Async access to the real-time state of one deployment (one key prefix)."""

    def __init__(
        self, redis: aioredis.Redis, settings: Settings, *, clock: Callable[[], datetime] = utc_now
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.redis.prefix)
        self._clock = clock
        self._half_life = settings.serving.trending_half_life_hours * 3600.0
        self._epoch: float | None = None  # last trending epoch seen; Redis holds the true one
        self._read_user_state = redis.register_script(_USER_STATE)

    # --- events ---------------------------------------------------------------------------------

    async def record_events(self, events: Sequence[Event], categories: Sequence[str | None]) -> list[str]:
        """Store events in one MULTI/EXEC: stream, each user's history, trending; the stream ids.

        The item of an event of a type excluded from recommendations also joins the user's
        dismissed set, so it stays excluded after the history is trimmed to `history_max`.
        `categories[i]` is the category of `events[i]`'s item (None: unknown). Trending counts an
        event at most at the current time, so a client clock running ahead cannot inflate it.
        """
        if len(events) != len(categories):
            raise InputError(f"{len(events)} events but {len(categories)} categories")
        if not events:
            return []
        weights = [self._weight(event) for event in events]
        stamps = [unix_micros(event.ts) for event in events]
        now = self._clock().timestamp()
        keys = self._keys
        histories: dict[str, list[str]] = {}
        excluded: dict[str, list[str]] = {}
        types = self._settings.events.types
        category_index: dict[str, int] = {}  # category -> its key's position in KEYS (from 3)
        increments: list[str] = []
        with unavailable_as_error("record_events"):
            await self._keep_epoch_fresh(now)
            async with self._redis.pipeline(transaction=True) as pipe:
                for event, category, weight, ts_us in zip(events, categories, weights, stamps, strict=True):
                    pipe.xadd(keys.events(), stream_fields(event, ts_us))  # type: ignore[arg-type]
                    histories.setdefault(event.user_id, []).append(_history_entry(event, ts_us))
                    if types[event.type].exclude_from_recommendations:
                        excluded.setdefault(event.user_id, []).append(event.item_id)
                    if weight > 0:
                        index = (
                            category_index.setdefault(category, len(category_index) + 3) if category else 0
                        )
                        when = min(ts_us / 1e6, now)
                        increments += [event.item_id, repr(weight), repr(when), str(index)]
                ttl = history_ttl_seconds(self._settings.serving)
                for user_id, entries in histories.items():
                    pipe.lpush(keys.history(user_id), *entries)
                    pipe.ltrim(keys.history(user_id), 0, self._settings.serving.history_max - 1)
                    pipe.expire(keys.history(user_id), ttl)
                for user_id, items in excluded.items():
                    pipe.sadd(keys.dismissed(user_id), *items)
                if category_index:
                    pipe.sadd(keys.trending_categories(), *category_index)
                if increments:
                    trending_keys = [
                        keys.trending_epoch(),
                        keys.trending(),
                        *map(keys.trending, category_index),
                    ]
                    default_epoch = repr(float(math.floor(now)))
                    pipe.eval(
                        _TRENDING_ADD,
                        len(trending_keys),
                        *trending_keys,
                        repr(self._half_life),
                        default_epoch,
                        *increments,
                    )
                results = await pipe.execute()
        if increments:
            self._epoch = float(results[-1])
        return [text(stream_id) for stream_id in results[: len(events)]]

    def _weight(self, event: Event) -> float:
        kind = self._settings.events.types.get(event.type)
        if kind is None:
            known = ", ".join(sorted(self._settings.events.types))
            raise InputError(f"unknown event type '{event.type}' (known: {known})", field="type")
        if event.value is not None and not math.isfinite(event.value):
            raise InputError(f"event value {event.value} is not a finite number", field="value")
        return kind.weight

    # --- per user -------------------------------------------------------------------------------

    async def user_state(self, user_id: str) -> UserState:
        """Recent history (newest first), dismissed items and the forgotten flag, in one round trip."""
        state, _ = await self._user_state(user_id, with_catalog_version=False)
        return state

    async def request_state(self, user_id: str) -> tuple[UserState, int]:
        """`user_state` and the catalog overrides' version (see `catalog_overrides`), in one round trip.

        A recommendation request needs both; asking for them together saves a round trip and
        the client-side work of a second command.
        """
        state, version = await self._user_state(user_id, with_catalog_version=True)
        return state, int(version or 0)

    async def _user_state(self, user_id: str, *, with_catalog_version: bool) -> tuple[UserState, Any]:
        keys = self._keys
        names = [keys.history(user_id), keys.dismissed(user_id), keys.forgotten()]
        if with_catalog_version:
            names.append(keys.catalog_version())
        with unavailable_as_error("user_state"):
            recent, dismissed, forgotten, version = await self._read_user_state(keys=names, args=[user_id])
        state = UserState([recent_event(entry) for entry in recent], set(dismissed), bool(forgotten))
        return state, version

    async def dismiss(self, user_id: str, item_id: str) -> None:
        """The item is never recommended to the user again."""
        with unavailable_as_error("dismiss"):
            await self._redis.sadd(self._keys.dismissed(user_id), item_id)

    async def put_profile(self, user_id: str, profile: Mapping[str, Any]) -> None:
        """Merge the given fields into the user's profile; absent fields are left as they are.

        Fields: `attributes` (a JSON object, replaced whole), `timezone` (IANA name; None clears),
        `push_consent` (bool), `devices` (device id -> {"token", "platform"}, merged per device;
        None removes a device).
        """
        unknown = sorted(set(profile) - PROFILE_FIELDS)
        if unknown:
            raise InputError(f"unknown profile fields: {', '.join(unknown)}", fields=unknown)
        write, remove = profile_changes(profile)
        key = self._keys.profile(user_id)
        with unavailable_as_error("put_profile"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=write)  # type: ignore[arg-type]
                if remove:
                    pipe.hdel(key, *remove)
                pipe.sadd(self._keys.profiles(), user_id)
                await pipe.execute()

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """The user's profile with every field present (defaults filled in), or None if there is none."""
        with unavailable_as_error("get_profile"):
            stored: dict[str, str] = await self._redis.hgetall(self._keys.profile(user_id))  # type: ignore[assignment]
        return profile_from_hash(user_id, stored)

    async def forget_user(self, user_id: str) -> None:
        """Delete the user's profile, tokens, history and dismissals; mark them forgotten for good."""
        keys = self._keys
        with unavailable_as_error("forget_user"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(*keys.user_keys(user_id))
                pipe.srem(keys.profiles(), user_id)
                pipe.sadd(keys.forgotten(), user_id)
                await pipe.execute()

    # --- catalog --------------------------------------------------------------------------------

    async def upsert_items(self, items: Sequence[Mapping[str, Any]]) -> int:
        """Merge partial item updates (field by field) into the overrides; the new catalog version."""
        updates: dict[str, dict[str, Any]] = {}
        for position, item in enumerate(items):
            item_id = item.get("item_id")
            if not isinstance(item_id, str) or not item_id:
                raise InputError(f"item {position} has no item_id", field=f"{position}.item_id")
            updates.setdefault(item_id, {}).update((k, v) for k, v in item.items() if k != "item_id")
        keys = self._keys
        with unavailable_as_error("upsert_items"):
            if not updates:
                return int(await self._redis.get(keys.catalog_version()) or 0)
            ids = list(updates)
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(keys.catalog_overrides())
                        stored = await pipe.hmget(keys.catalog_overrides(), ids)
                        merged = {
                            item_id: _item_json({**json.loads(old or "{}"), **updates[item_id]}, item_id)
                            for item_id, old in zip(ids, stored, strict=True)
                        }
                        pipe.multi()  # type: ignore[no-untyped-call]
                        pipe.hset(keys.catalog_overrides(), mapping=merged)  # type: ignore[arg-type]
                        pipe.incr(keys.catalog_version())
                        version = (await pipe.execute())[-1]
                        return int(version)
                    except WatchError:
                        continue

    async def catalog_overrides(
        self, known_version: int | None
    ) -> tuple[int, dict[str, dict[str, Any]] | None]:
        """The catalog version and every override, or None for them when `known_version` is current."""
        keys = self._keys
        with unavailable_as_error("catalog_overrides"):
            version = int(await self._redis.get(keys.catalog_version()) or 0)
            if known_version is not None and version == known_version:
                return version, None
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(keys.catalog_version())
                pipe.hgetall(keys.catalog_overrides())
                raw_version, overrides = await pipe.execute()
        return int(raw_version or 0), {item_id: json.loads(value) for item_id, value in overrides.items()}

    # --- trending -------------------------------------------------------------------------------

    async def trending(self, k: int, category: str | None = None) -> list[tuple[str, float]]:
        """The k items with the highest decayed weight now, globally or in one category."""
        if k <= 0:
            return []
        now = self._clock().timestamp()
        keys = self._keys
        with unavailable_as_error("trending"):
            await self._keep_epoch_fresh(now)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(keys.trending_epoch())
                pipe.zrevrange(keys.trending(category), 0, k - 1, withscores=True)
                epoch, top = await pipe.execute()
        if epoch is None:
            return []
        scale = 2.0 ** (-(now - float(epoch)) / self._half_life)
        return [(item_id, score * scale) for item_id, score in top]

    async def _keep_epoch_fresh(self, now: float) -> None:
        if self._epoch is None or (now - self._epoch) / self._half_life > TRENDING_RESCALE_AFTER_HALF_LIVES:
            self._epoch = await self._rescale(now)

    async def _rescale(self, now: float) -> float | None:
        """Move the epoch forward if it is too old, rescaling every trending set; the epoch in force."""
        keys = self._keys
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(keys.trending_epoch(), keys.trending_categories())
                    raw = await pipe.get(keys.trending_epoch())
                    if raw is None:
                        return None
                    epoch = float(text(raw))
                    if (now - epoch) / self._half_life <= TRENDING_RESCALE_AFTER_HALF_LIVES:
                        return epoch
                    shift = math.floor((now - epoch) / self._half_life)
                    categories = await pipe.smembers(keys.trending_categories())
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for key in [keys.trending(), *(keys.trending(text(name)) for name in categories)]:
                        pipe.zunionstore(key, {key: 2.0**-shift})
                        pipe.zremrangebyscore(key, "-inf", f"({TRENDING_PRUNE_BELOW!r}")
                    epoch += shift * self._half_life
                    pipe.set(keys.trending_epoch(), repr(epoch))
                    await pipe.execute()
                    return epoch
                except WatchError:
                    continue

    # --- health ---------------------------------------------------------------------------------

    async def ping(self) -> bool:
        """Whether Redis answers within the configured timeout."""
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False


def profile_changes(profile: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Hash fields to write and to delete for a partial profile update."""
    write: dict[str, str] = {_STORED: "1"}
    remove: list[str] = []
    if "attributes" in profile:
        attributes = profile["attributes"]
        if attributes is None:
            remove.append("attributes")
        elif isinstance(attributes, Mapping):
            write["attributes"] = _json_field(dict(attributes), "attributes")
        else:
            raise InputError("profile attributes must be an object or null", field="attributes")
    if "timezone" in profile:
        timezone = profile["timezone"]
        if timezone is None:
            remove.append("timezone")
        elif isinstance(timezone, str):
            write["timezone"] = timezone
        else:
            raise InputError("profile timezone must be a string or null", field="timezone")
    if "push_consent" in profile:
        if not isinstance(profile["push_consent"], bool):
            raise InputError("profile push_consent must be true or false", field="push_consent")
        write["push_consent"] = "1" if profile["push_consent"] else "0"
    devices = profile.get("devices") or {}
    if not isinstance(devices, Mapping):
        raise InputError("profile devices must be an object of device id -> token", field="devices")
    for device_id, device in devices.items():
        if device is None:
            remove.append(device_field(device_id))
        elif isinstance(device, Mapping) and isinstance(device.get("token"), str):
            token = {"token": device["token"], "platform": device.get("platform")}
            write[device_field(device_id)] = _json_field(token, f"devices.{device_id}")
        else:
            raise InputError(f"device {device_id} needs a token", field=f"devices.{device_id}")
    return write, remove


def _json_field(value: Any, field: str) -> str:
    try:
        return _compact(value)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{field} is not JSON: {exc}", field=field) from exc


def _item_json(fields: dict[str, Any], item_id: str) -> str:
    return _json_field(fields, f"items.{item_id}")
