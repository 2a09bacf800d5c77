"""Train/test splits of raw events that never let the future leak into training.

A split returns boolean masks over the event arrays (one entry per event, not yet aggregated);
whoever builds the interaction matrix applies the train mask. Both protocols cut by time, so a
model is always scored on what a user did *after* everything it was trained on:

- `leave_last_split` holds out, per user, the events from the time they started their last
  `holdout` distinct items; a user whose items all tie in time (Last.fm has one date for every
  event) holds out `holdout` items drawn by a seeded pseudo-random order instead;
- `time_cut_split` holds out every event after one global instant, and refuses data with nothing
  before it.

`test_matrix` turns the held-out events into the binary relevance matrix the metrics read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from recsvc.errors import InputError
from training.metrics import contains

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Split:
    """Masks over the events: `train` and `test` are disjoint; `cut_description` is for logs."""

    train: npt.NDArray[np.bool_]
    test: npt.NDArray[np.bool_]
    cut_description: str


def leave_last_split(
    users: npt.NDArray[np.integer],
    items: npt.NDArray[np.integer],
    ts: npt.NDArray[np.int64],
    *,
    holdout: int,
    seed: int = 0,
) -> Split:
    """Hold out each user's events from the start of their last `holdout` distinct items.

    Per user, events are ordered by (ts, original position); walking back from the newest event
    and collecting distinct items, the walk stops at the `holdout`-th new item. That event's
    timestamp is the user's cut: every event of the user at or after it is test, everything
    before it is train, so equal timestamps are never split across the cut. A user with at most
    `holdout` distinct items keeps all events in train.

    A user whose cut is their first timestamp (everything would be test: their last items all
    tie with their first) has no time order to go by, so their ties are broken: the same walk
    over events ordered by (ts, `tie_ranks(seed)` of the item, item) holds out exactly `holdout`
    items, pseudo-randomly chosen and the same for the same data and seed, and keeps the rest.

    The walk stops at the `holdout`-th most recent *last occurrence* of an item, so the cut is
    the `holdout`-th largest of the user's per-item latest timestamps: one sort of the events by
    (user, item), one of the (user, item) pairs by (user, latest ts), and linear passes.
    """
    _check_events(users, items, ts)
    if holdout < 1:
        raise InputError(f"holdout must be at least 1, got {holdout}")
    n_events = len(users)
    if n_events == 0:
        return _empty_split(f"leave last {holdout} distinct item(s) per user: no events")

    n_users = int(users.max()) + 1
    n_items = int(items.max()) + 1
    order, pair_keys = _sorted_keys(users.astype(np.int64) * n_items + items, n_users * n_items)
    ts_grouped = ts[order]
    pair_starts = np.flatnonzero(np.r_[True, pair_keys[1:] != pair_keys[:-1]])
    pair_latest = np.maximum.reduceat(ts_grouped, pair_starts)
    pair_user = pair_keys[pair_starts] // n_items

    # Pairs are sorted by user, so each user's distinct items form one run of pairs.
    user_start = np.flatnonzero(np.r_[True, pair_user[1:] != pair_user[:-1]])
    present = pair_user[user_start]
    distinct = np.diff(np.r_[user_start, len(pair_user)])
    first_ts = np.minimum.reduceat(ts_grouped, pair_starts[user_start])
    latest_ascending = _sort_within_runs(pair_user, pair_latest)
    cut = latest_ascending[np.maximum(user_start + distinct - holdout, user_start)]
    eligible = (distinct > holdout) & (cut > first_ts)
    tied = (distinct > holdout) & (cut == first_ts)

    user_cut = np.full(n_users, np.iinfo(np.int64).max, dtype=np.int64)
    user_cut[present[eligible]] = cut[eligible]
    test = ts >= user_cut[users]
    if tied.any():
        is_tied = np.zeros(n_users, dtype=bool)
        is_tied[present[tied]] = True
        test |= _leave_last_tie_broken(users, items, ts, is_tied[users], holdout=holdout, seed=seed)
    n_test_users = int(eligible.sum() + tied.sum())
    ties = (
        f"{int(tied.sum())} of them, whose last items all share their first timestamp, by a "
        f"pseudo-random order of their items (seed {seed}); "
        if tied.any()
        else ""
    )
    description = (
        f"leave last {holdout} distinct item(s) per user: {n_test_users} of {len(present)} users "
        f"hold out {int(test.sum())} of {n_events} events at or after their own cut; {ties}users "
        f"with at most {holdout} distinct items stay in train"
    )
    return Split(train=~test, test=test, cut_description=description)


def tie_ranks(
    users: npt.NDArray[np.integer], items: npt.NDArray[np.integer], *, seed: int
) -> npt.NDArray[np.uint64]:
    """A pseudo-random rank for each (user, item): the order in which a user's tied items count.

    A hash (splitmix64's finaliser) of the pair and the seed alone, so it needs no generator
    state and the rank of a pair is the same wherever and however often it occurs.
    """
    seed_key = _mix(np.array([seed % 2**64], dtype=np.uint64))
    keys = (users.astype(np.uint64) << np.uint64(32)) | items.astype(np.uint64)
    return _mix(keys ^ seed_key)


def _mix(keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: a bijection of uint64 that scatters neighbouring keys."""
    mixed = keys + np.uint64(0x9E3779B97F4A7C15)  # array arithmetic wraps modulo 2**64
    mixed = (mixed ^ (mixed >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    mixed = (mixed ^ (mixed >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return mixed ^ (mixed >> np.uint64(31))


def _leave_last_tie_broken(
    users: npt.NDArray[np.integer],
    items: npt.NDArray[np.integer],
    ts: npt.NDArray[np.int64],
    selected: npt.NDArray[np.bool_],
    *,
    holdout: int,
    seed: int,
) -> npt.NDArray[np.bool_]:
    """The test mask of the walk back over events ordered by (ts, tie rank, item), for the
    `selected` events (whole users, each with more than `holdout` distinct items).

    In that order the walk meets each item first at its last occurrence, so the cut is the
    user's `holdout`-th last "last occurrence"; the events sharing its key (the same item at the
    same ts) lie just before it, and the user's test events run from the first of them on.
    """
    positions = np.flatnonzero(selected)
    own_users, own_items, own_ts = users[positions], items[positions], ts[positions]
    ranks = tie_ranks(own_users, own_items, seed=seed)
    order = np.lexsort((own_items, ranks, own_ts, own_users))
    by_user, by_item, by_ts = own_users[order], own_items[order], own_ts[order]

    pairs = by_user.astype(np.int64) * (int(items.max()) + 1) + by_item
    _, first_from_end = np.unique(pairs[::-1], return_index=True)
    last_occurrences = np.sort(len(pairs) - 1 - first_from_end)
    owners = by_user[last_occurrences]
    run_start = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
    run_length = np.diff(np.r_[run_start, len(owners)])
    cut_position = last_occurrences[run_start + run_length - holdout]

    new_key = np.r_[True, (pairs[1:] != pairs[:-1]) | (by_ts[1:] != by_ts[:-1])]
    key_start = np.maximum.accumulate(np.where(new_key, np.arange(len(pairs)), 0))
    user_test_from = np.zeros(int(users.max()) + 1, dtype=np.int64)
    user_test_from[owners[run_start]] = key_start[cut_position]
    test = np.zeros(len(users), dtype=bool)
    test[positions[order]] = np.arange(len(pairs)) >= user_test_from[by_user]
    return test


def time_cut_split(ts: npt.NDArray[np.int64], *, quantile: float) -> Split:
    """Hold out every event at or after the `quantile` of all timestamps (an observed ts).

    When that is the earliest timestamp (all events at one instant, as in Last.fm), every event
    would be test and the model fitted on nothing: that is refused.
    """
    if not 0.0 < quantile < 1.0:
        raise InputError(f"quantile must be strictly between 0 and 1, got {quantile}")
    if len(ts) == 0:
        return _empty_split(f"time cut at quantile {quantile}: no events")
    cut = int(np.quantile(ts, quantile, method="higher"))
    test = ts >= cut
    when = iso_time(cut)
    if test.all():
        raise InputError(
            f"time cut at quantile {quantile} leaves nothing to train on: all {len(ts):,} events "
            f"are at or after {when}, the earliest of their {len(np.unique(ts)):,} distinct "
            'timestamp(s); use split = "leave_last", which holds out items per user and breaks '
            "ties in time pseudo-randomly",
            field="evaluation.split",
        )
    description = (
        f"time cut at quantile {quantile}: {int(test.sum())} of {len(ts)} events at or after "
        f"{when} (ts={cut} us) are test"
    )
    return Split(train=~test, test=test, cut_description=description)


def iso_time(ts_us: int) -> str:
    """A timestamp in microseconds since the epoch as ISO 8601 in UTC, for messages."""
    return (_EPOCH + timedelta(microseconds=ts_us)).isoformat()


def test_matrix(
    users: npt.NDArray[np.integer],
    items: npt.NDArray[np.integer],
    test_mask: npt.NDArray[np.bool_],
    train_matrix: csr_matrix,
) -> csr_matrix:
    """Binary user x item matrix of held-out items, less those the user already has in train.

    A model never recommends what a user already has, so such an item can only count against
    it; it is dropped from the relevant set. The shape is `train_matrix.shape`.
    """
    if not len(users) == len(items) == len(test_mask):
        raise InputError("users, items and test_mask must have one entry per event")
    n_users, n_items = train_matrix.shape
    test_users = users[test_mask]
    test_items = items[test_mask]
    if len(test_users) and (test_users.max() >= n_users or test_items.max() >= n_items):
        raise InputError(f"a test event lies outside the train matrix of shape {train_matrix.shape}")
    held_out = csr_matrix(
        (np.ones(len(test_users), dtype=np.float32), (test_users, test_items)),
        shape=train_matrix.shape,
    )
    held_out.sum_duplicates()
    rows = np.repeat(np.arange(n_users), np.diff(held_out.indptr))
    known = contains(train_matrix, rows, held_out.indices)
    held_out.data = (~known).astype(np.float32)
    held_out.eliminate_zeros()
    return held_out


def _check_events(
    users: npt.NDArray[np.integer], items: npt.NDArray[np.integer], ts: npt.NDArray[np.int64]
) -> None:
    if not len(users) == len(items) == len(ts):
        raise InputError(f"users, items, ts differ in length: {len(users)}, {len(items)}, {len(ts)}")
    if len(users) and (users.min() < 0 or items.min() < 0):
        raise InputError("user and item indices must be non-negative")


def _sorted_keys(
    keys: npt.NDArray[np.int64], n_keys: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """A permutation that sorts `keys` (all below `n_keys`), and the sorted keys.

    When a key and an event position fit in one int64 together, a value sort of the packed pair
    replaces argsort: numpy sorts int64 values several times faster than it argsorts them.
    """
    position_bits = max(len(keys) - 1, 1).bit_length()
    if (n_keys - 1).bit_length() + position_bits > 63:
        order = np.argsort(keys)
        return order, keys[order]
    packed = np.sort((keys << position_bits) | np.arange(len(keys), dtype=np.int64))
    return packed & ((1 << position_bits) - 1), packed >> position_bits


def _sort_within_runs(runs: npt.NDArray[np.int64], values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """`values` sorted ascending within each run of equal, ascending, non-negative `runs`.

    A value sort of run and offset packed into one int64 when they fit, else a lexsort.
    """
    low, high = int(values.min()), int(values.max())
    span = high - low + 1
    if (int(runs[-1]) + 1) * span > np.iinfo(np.int64).max:
        return values[np.lexsort((values, runs))]
    packed = np.sort(runs * span + (values - low))
    return packed % span + low


def _empty_split(description: str) -> Split:
    return Split(train=np.zeros(0, dtype=bool), test=np.zeros(0, dtype=bool), cut_description=description)
