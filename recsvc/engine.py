"""Recommendations for users and items from one model version, shared by the API and the notifier.

Synchronous CPU work over a loaded artifact and nothing else: callers fetch what lives in Redis
(a user's recent events and dismissed items, trending counts, catalog overrides) and pass it in,
so the engine is easy to test and the async server can call it directly.

A user's vector comes from one of three places, which the answer's `strategy` names:
- `realtime`: the user has recent events the model has not seen (on model items, of a weight
  above zero; for a user the model knows, newer than its last training event, since older ones
  are already in the artifact's `user_items`). The vector is folded in (`recsvc.foldin`) from
  their `user_items` row plus those events, each weighted by its type and decayed with
  `serving.recent_half_life_days` from `now_us`.
- `personalized`: a known user without such events keeps the stored user factors (or, where
  training left them zero, e.g. a user whose events were all held out, their `user_items` row
  folded in).
- `popular`: anyone else gets trending items first (passed in), then the artifact's popularity.

Every answer obeys the same filters: never an unavailable item, nothing the caller marks
`excluded` (dismissed) or `exclude` (the request's own list), nothing the user bought or
dismissed (artifact `user_excluded` and recent events of excluded types), and unless
`include_seen` nothing the user had any event for. A `category` is scored exactly over that
category's items; otherwise the FAISS index is searched (see `recsvc.ranking`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from recsvc.artifact import ModelArtifact
from recsvc.catalog import Catalog
from recsvc.config import Settings
from recsvc.errors import InputError, NotFoundError
from recsvc.foldin import BprFoldIn, FoldIn
from recsvc.ranking import Blocked, Ranked, Scorer, item_norms, ranked_list, top_k
from recsvc.weighting import decay_factors, type_weights

T = TypeVar("T")

log = logging.getLogger(__name__)

Strategy = Literal["personalized", "realtime", "popular"]
_INTS = np.zeros(0, dtype=np.int64)
_NO_SCORES = np.zeros(0, dtype=np.float32)
_CHUNK_USERS = 16_384
_NORM_SAMPLE = 100_000


@dataclass(frozen=True)
class RecentEvent:
    """One of a user's recent events, as kept in Redis."""

    item_id: str
    type: str
    ts_us: int
    value: float | None = None


@dataclass(frozen=True)
class Recommendation:
    """One recommended item with what a client shows; `score` orders a list, nothing more."""

    item_id: str
    score: float
    title: str | None
    category: str | None
    price: float | None
    url: str | None
    image_url: str | None


@dataclass(frozen=True)
class Recommendations:
    """One user's recommendations, best first, and how they were made."""

    items: list[Recommendation]
    strategy: Strategy
    model_version: str
    known_user: bool


@dataclass(frozen=True)
class _Events:
    """A batch's recent events on model items of configured types, as parallel arrays."""

    users: npt.NDArray[np.int64]  # position of the user in the batch
    items: npt.NDArray[np.int64]
    ts_us: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]  # type weight x recency decay
    excluded: npt.NDArray[np.bool_]  # of a type excluded from recommendations


@dataclass(frozen=True)
class _Rows:
    """Some rows of an artifact CSR matrix, as (batch position, item, value) triples."""

    users: npt.NDArray[np.int64]
    items: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]


@dataclass(frozen=True)
class _Users:
    """A batch of users resolved against the model: vectors, strategies and blocked items."""

    known: npt.NDArray[np.bool_]
    vectors: npt.NDArray[np.float32]  # zero rows where has_vector is False
    has_vector: npt.NDArray[np.bool_]
    realtime: npt.NDArray[np.bool_]
    blocked: Blocked

    def strategies(self) -> list[Strategy]:
        """Each user's strategy, in order."""
        return [
            "realtime" if realtime else "personalized" if has_vector else "popular"
            for realtime, has_vector in zip(self.realtime.tolist(), self.has_vector.tolist(), strict=True)
        ]


class Engine:
    """Recommendations from one loaded model version; immutable and safe to share across threads."""

    def __init__(self, artifact: ModelArtifact, version: str, settings: Settings) -> None:
        self.artifact = artifact
        self.version = version
        self.catalog = Catalog(artifact.item_ids, artifact.items)
        self._events = settings.events
        self._half_life_days = settings.serving.recent_half_life_days
        self._type_names = list(settings.events.types)
        self._type_code = {name: code for code, name in enumerate(self._type_names)}
        self._type_excluded = np.array(
            [settings.events.types[name].exclude_from_recommendations for name in self._type_names],
            dtype=bool,
        )
        self._n_items = len(artifact.item_ids)
        # Plain ndarray views of the (usually memory-mapped) factors: np.memmap's indexing
        # goes through Python and costs microseconds a request.
        self._items = artifact.item_factors.view(np.ndarray)
        self._users = artifact.user_factors.view(np.ndarray)
        self._foldin = _fold_in(artifact, self._items, settings)
        self._cutoff_us = (
            _last_training_event_us(artifact.manifest) if artifact.user_items is not None else None
        )
        self._scorer = Scorer(artifact.index, self._items, "ip")
        self._similar = Scorer(artifact.similar_index, self._items, "cosine", item_norms(self._items))
        self._popular_order = np.argsort(-artifact.popularity, kind="stable").astype(np.int64)

    # --- public API ------------------------------------------------------------------------

    def recommend(
        self,
        user_id: str,
        *,
        k: int,
        recent: Sequence[RecentEvent] = (),
        excluded: Collection[str] = (),
        exclude: Collection[str] = (),
        category: str | None = None,
        include_seen: bool = False,
        catalog: Catalog | None = None,
        trending: Sequence[tuple[str, float]] = (),
        now_us: int,
    ) -> Recommendations:
        """The top `k` items for one user; see the module docstring for strategies and filters.

        `excluded` are the user's dismissed items (from Redis), `exclude` the request's own list.
        """
        return self.recommend_many(
            [user_id],
            k=k,
            recent={user_id: recent},
            excluded={user_id: excluded},
            exclude=exclude,
            category=category,
            include_seen=include_seen,
            catalog=catalog,
            trending=trending,
            now_us=now_us,
        )[0]

    def recommend_many(
        self,
        user_ids: Sequence[str],
        *,
        k: int,
        recent: Mapping[str, Sequence[RecentEvent]] | None = None,
        excluded: Mapping[str, Collection[str]] | None = None,
        exclude: Collection[str] = (),
        category: str | None = None,
        include_seen: bool = False,
        catalog: Catalog | None = None,
        trending: Sequence[tuple[str, float]] = (),
        now_us: int,
    ) -> list[Recommendations]:
        """`recommend` for many users at once, in order: one fold-in and one index search per
        chunk of up to 16,384 users, which bounds memory however many users are asked for.

        `recent` and `excluded` are per user; the other filters apply to every user.
        """
        _check_k(k)
        catalog = self._own(catalog)
        allowed = self._allowed(catalog, exclude, category)
        candidates = None
        if category is not None:
            members = catalog.category_items(category)
            candidates = members[allowed[members]]
        results: list[Recommendations] = []
        for start in range(0, len(user_ids), _CHUNK_USERS):
            users = self._resolve(
                user_ids[start : start + _CHUNK_USERS],
                recent or {},
                excluded or {},
                include_seen=include_seen,
                now_us=now_us,
            )
            ranked = self._rank(users, k, allowed, candidates, trending)
            results.extend(
                Recommendations(items=items, strategy=strategy, model_version=self.version, known_user=known)
                for items, strategy, known in zip(
                    self._describe_many(catalog, ranked),
                    users.strategies(),
                    users.known.tolist(),
                    strict=True,
                )
            )
        return results

    def similar(
        self, item_id: str, *, k: int, category: str | None = None, catalog: Catalog | None = None
    ) -> list[Recommendation]:
        """Available items whose vectors are closest (cosine) to `item_id`'s, itself excluded."""
        _check_k(k)
        index = self.artifact.item_ids.index_of(item_id)
        if index is None:
            raise NotFoundError(f"item {item_id!r} is not in model {self.version}", item_id=item_id)
        catalog = self._own(catalog)
        allowed = self._allowed(catalog, (), category)
        allowed[index] = False
        candidates = None
        if category is not None:
            members = catalog.category_items(category)
            candidates = members[allowed[members]]
        query = np.asarray(self._items[index : index + 1], dtype=np.float32)
        nobody = Blocked.build(1, self._n_items, ())
        [(items, scores)] = top_k(
            self._similar,
            query,
            np.zeros(1, dtype=np.int64),
            k,
            allowed=allowed,
            blocked=nobody,
            candidates=candidates,
        )
        return self._describe(catalog, items, scores)

    def popular(
        self,
        *,
        k: int,
        category: str | None = None,
        catalog: Catalog | None = None,
        trending: Sequence[tuple[str, float]] = (),
        exclude: Collection[str] = (),
    ) -> list[Recommendation]:
        """Trending items (by their score, from Redis) first, then the artifact's popularity.

        Scores are the trending score for trending items and the popularity for the rest.
        """
        _check_k(k)
        catalog = self._own(catalog)
        return self._describe(catalog, *self._popular(self._allowed(catalog, exclude, category), trending, k))

    def user_vector(
        self, user_id: str, recent: Sequence[RecentEvent], now_us: int
    ) -> tuple[npt.NDArray[np.float32] | None, Strategy]:
        """The vector `recommend` would rank with, and its strategy (None for `popular`)."""
        users = self._resolve([user_id], {user_id: recent}, {}, include_seen=True, now_us=now_us)
        vector = users.vectors[0] if users.has_vector[0] else None
        return vector, users.strategies()[0]

    # --- users -----------------------------------------------------------------------------

    def _resolve(
        self,
        user_ids: Sequence[str],
        recent: Mapping[str, Sequence[RecentEvent]],
        excluded: Mapping[str, Collection[str]],
        *,
        include_seen: bool,
        now_us: int,
    ) -> _Users:
        rows = self.artifact.user_ids.indices_of(list(user_ids))
        known_at = np.flatnonzero(rows >= 0)
        events = self._recent(user_ids, recent, now_us)
        history = _csr_rows(self.artifact.user_items, rows, known_at)
        bought = _csr_rows(self.artifact.user_excluded, rows, known_at)
        pairs = [
            (bought.users, bought.items),
            (events.users[events.excluded], events.items[events.excluded]),
            self._dismissed(user_ids, excluded),
        ]
        if not include_seen:
            pairs += [(history.users, history.items), (events.users, events.items)]
        vectors, realtime = self._vectors(rows, known_at, events, history)
        has_vector: npt.NDArray[np.bool_] = np.any(vectors, axis=1)
        return _Users(
            known=rows >= 0,
            vectors=vectors,
            has_vector=has_vector,
            realtime=realtime & has_vector,
            blocked=Blocked.build(len(user_ids), self._n_items, pairs),
        )

    def _recent(
        self, user_ids: Sequence[str], recent: Mapping[str, Sequence[RecentEvent]], now_us: int
    ) -> _Events:
        """The batch's recent events as arrays; events on unknown items or of unknown types drop out."""
        flat, users = _flatten(user_ids, recent)
        items = self.artifact.item_ids.indices_of([event.item_id for event in flat])
        codes = np.fromiter(
            (self._type_code.get(event.type, -1) for event in flat), dtype=np.int64, count=len(flat)
        )
        ts_us = np.fromiter((event.ts_us for event in flat), dtype=np.int64, count=len(flat))
        keep = (items >= 0) & (codes >= 0)
        values = None
        if any(event.value is not None for event in flat):
            raw = [np.nan if event.value is None else event.value for event in flat]
            values = np.asarray(raw, dtype=np.float64)[keep]
        weights = type_weights(codes[keep], self._type_names, values, self._events) * decay_factors(
            ts_us[keep], reference_us=now_us, half_life_days=self._half_life_days
        )
        return _Events(users[keep], items[keep], ts_us[keep], weights, self._type_excluded[codes[keep]])

    def _dismissed(
        self, user_ids: Sequence[str], excluded: Mapping[str, Collection[str]]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        names, users = _flatten(user_ids, excluded)
        items = self.artifact.item_ids.indices_of(names)
        return users[items >= 0], items[items >= 0]

    def _vectors(
        self, rows: npt.NDArray[np.int64], known_at: npt.NDArray[np.int64], events: _Events, history: _Rows
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """Each user's vector (zeros for none) and whether it was folded in from fresh events."""
        n_users = len(rows)
        vectors = np.zeros((n_users, self._items.shape[1]), dtype=np.float32)
        vectors[known_at] = self._users[rows[known_at]]
        known = rows >= 0
        fresh = events.weights > 0
        if self._cutoff_us is not None:  # older events of known users are in `user_items` already
            fresh &= ~known[events.users] | (events.ts_us > self._cutoff_us)
        realtime = np.zeros(n_users, dtype=bool)
        realtime[events.users[fresh]] = True
        has_history = np.zeros(n_users, dtype=bool)
        has_history[history.users] = True
        fold = realtime | (known & has_history & ~vectors.any(axis=1))
        if fold.any():
            from_history = fold[history.users]
            vectors[fold] = self._fold(
                n_users,
                np.concatenate([history.users[from_history], events.users[fresh]]),
                np.concatenate([history.items[from_history], events.items[fresh]]),
                np.concatenate([history.values[from_history], events.weights[fresh]]),
            )[fold]
        return vectors, realtime

    def _fold(
        self,
        n_users: int,
        users: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        weights: npt.NDArray[np.float32],
    ) -> npt.NDArray[np.float32]:
        """Sum weights per (user, item) and fold each user in; users without items get zeros."""
        keys, inverse = np.unique(users * self._n_items + items, return_inverse=True)
        summed = np.bincount(inverse, weights=weights, minlength=len(keys)).astype(np.float64)
        positive = summed > 0
        keys, summed = keys[positive], summed[positive]
        indptr = np.searchsorted(keys, np.arange(n_users + 1, dtype=np.int64) * self._n_items)
        return self._foldin.solve(indptr, keys % self._n_items, summed)

    # --- filters and output ----------------------------------------------------------------

    def _rank(
        self,
        users: _Users,
        k: int,
        allowed: npt.NDArray[np.bool_],
        candidates: npt.NDArray[np.int64] | None,
        trending: Sequence[tuple[str, float]],
    ) -> list[Ranked]:
        """Each user's best k: by their vector where they have one, else trending and popular."""
        ranked: list[Ranked] = [(_INTS, _NO_SCORES)] * len(users.known)
        with_vector = np.flatnonzero(users.has_vector)
        if len(with_vector):
            found = top_k(
                self._scorer,
                users.vectors[with_vector],
                with_vector,
                k,
                allowed=allowed,
                blocked=users.blocked,
                candidates=candidates,
            )
            for position, best in zip(with_vector.tolist(), found, strict=True):
                ranked[position] = best
        without = np.flatnonzero(~users.has_vector)
        if len(without):
            items, scores = self._popular(allowed, trending, k + int(users.blocked.counts[without].max()))
            for position in without.tolist():
                keep = ~np.isin(items, users.blocked.items_of(position))
                ranked[position] = items[keep][:k], scores[keep][:k]
        return ranked

    def _own(self, catalog: Catalog | None) -> Catalog:
        if catalog is None:
            return self.catalog
        if catalog.item_ids is not self.artifact.item_ids:
            raise ValueError("the catalog belongs to another model version; build it from this engine's")
        return catalog

    def _allowed(
        self, catalog: Catalog, exclude: Collection[str], category: str | None
    ) -> npt.NDArray[np.bool_]:
        """Items every user of the request may get: available, not excluded, in the category."""
        allowed = catalog.available.copy()
        if exclude:
            indices = self.artifact.item_ids.indices_of(list(exclude))
            allowed[indices[indices >= 0]] = False
        if category is not None:
            members = catalog.category_items(category)
            in_category = np.zeros(self._n_items, dtype=bool)
            in_category[members] = allowed[members]
            allowed = in_category
        return allowed

    def _popular(
        self, allowed: npt.NDArray[np.bool_], trending: Sequence[tuple[str, float]], count: int
    ) -> Ranked:
        items = self.artifact.item_ids.indices_of([item_id for item_id, _ in trending])
        scores = np.fromiter((score for _, score in trending), dtype=np.float32, count=len(trending))
        items, scores = items[items >= 0], scores[items >= 0]
        order = np.argsort(-scores, kind="stable")
        return ranked_list(
            self._popular_order, self.artifact.popularity, allowed, items[order], scores[order], count
        )

    def _describe_many(self, catalog: Catalog, ranked: Sequence[Ranked]) -> list[list[Recommendation]]:
        """`_describe` of each user's ranked items, converted for the whole batch at once: per
        user, the numpy calls cost more than the items they describe."""
        if not ranked:
            return []
        counts = [len(items) for items, _ in ranked]
        described = self._describe(
            catalog,
            np.concatenate([items for items, _ in ranked]).astype(np.int64, copy=False),
            np.concatenate([scores for _, scores in ranked]),
        )
        ends = np.cumsum(counts).tolist()
        return [described[end - count : end] for end, count in zip(ends, counts, strict=True)]

    def _describe(
        self, catalog: Catalog, items: npt.NDArray[np.int64], scores: npt.NDArray[np.float32]
    ) -> list[Recommendation]:
        indices = items.tolist()
        item_ids = self.artifact.item_ids.ids[items].tolist()
        return [
            Recommendation(
                item_id, score, shown.title, shown.category, shown.price, shown.url, shown.image_url
            )
            for item_id, score, shown in zip(item_ids, scores.tolist(), catalog.display(indices), strict=True)
        ]


def _check_k(k: int) -> None:
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}", k=k)


def _csr_rows(matrix: Any, rows: npt.NDArray[np.int64], known_at: npt.NDArray[np.int64]) -> _Rows:
    """The entries of `matrix` rows `rows[known_at]`, tagged with their batch position."""
    if matrix is None or not len(known_at):
        return _Rows(_INTS, _INTS, np.zeros(0, dtype=np.float32))
    wanted = rows[known_at]
    starts = np.asarray(matrix.indptr[wanted], dtype=np.int64)
    lengths = np.asarray(matrix.indptr[wanted + 1], dtype=np.int64) - starts
    users = np.repeat(known_at, lengths)
    offsets = np.arange(len(users)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    at = np.repeat(starts, lengths) + offsets
    return _Rows(users, np.asarray(matrix.indices[at], dtype=np.int64), np.asarray(matrix.data[at]))


def _fold_in(
    artifact: ModelArtifact, items: npt.NDArray[np.float32], settings: Settings
) -> FoldIn | BprFoldIn:
    """The fold-in of this model's family: ALS with the regularization and alpha it was fitted
    with; BPR at the typical length of its own user vectors."""
    parameters = artifact.manifest.get("parameters", {})
    family = parameters.get("model", "als")
    if family == "bpr":
        return BprFoldIn(items, user_norm=_typical_norm(artifact.user_factors))
    configured = settings.training.als
    if "regularization" not in parameters:
        log.warning(
            "model manifest has no regularization; using the configured %s", configured.regularization
        )
    regularization = float(parameters.get("regularization", configured.regularization))
    alpha = float(parameters.get("alpha", configured.alpha))
    return FoldIn(items, regularization=regularization, alpha=alpha)


def _typical_norm(user_factors: npt.NDArray[np.float32]) -> float:
    """The median length of the model's non-zero user vectors without the bias column, from at
    most `_NORM_SAMPLE` evenly spaced users (a million rows need not all be read); 1 for none."""
    step = max(1, len(user_factors) // _NORM_SAMPLE)
    norms = np.linalg.norm(np.asarray(user_factors[::step, :-1], dtype=np.float64), axis=1)
    norms = norms[norms > 0]
    return float(np.median(norms)) if len(norms) else 1.0


def _last_training_event_us(manifest: dict[str, Any]) -> int | None:
    """The newest event the model was trained on (manifest `data.last_event`), in microseconds."""
    value = manifest.get("data", {}).get("last_event")
    if not isinstance(value, str):
        return None
    try:
        return int(np.datetime64(value.removesuffix("Z"), "us").astype(np.int64))
    except ValueError:
        log.warning("model manifest has an unreadable data.last_event %r", value)
        return None


def _flatten(
    user_ids: Sequence[str], per_user: Mapping[str, Collection[T]]
) -> tuple[list[T], npt.NDArray[np.int64]]:
    """Every user's entries in one list, with the batch position of the user each came from."""
    flat: list[T] = []
    counts: list[int] = []
    for user_id in user_ids:
        entries = per_user.get(user_id, ())
        flat.extend(entries)
        counts.append(len(entries))
    return flat, np.repeat(np.arange(len(user_ids), dtype=np.int64), counts)
