"""Splits on hand-made event lists with known answers, and the no-leak guarantee on random data."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy.sparse import csr_matrix

from recsvc.errors import InputError
from training import split
from training.split import leave_last_split, time_cut_split

# `split.test_matrix` is called through the module: imported by name, pytest would collect it.


def events(
    rows: list[tuple[int, int, int]],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """(user, item, ts) rows as the three event arrays."""
    users, items, ts = zip(*rows, strict=True)
    return np.array(users, np.int32), np.array(items, np.int32), np.array(ts, np.int64)


def reference_leave_last(
    users: npt.NDArray[np.int32],
    items: npt.NDArray[np.int32],
    ts: npt.NDArray[np.int64],
    holdout: int,
    seed: int = 0,
) -> npt.NDArray[np.bool_]:
    """The rule as the docstring words it, one user at a time: sort, walk back, cut, check; and
    when the cut is the user's first timestamp, the same walk with ties broken by rank and item."""
    test = np.zeros(len(users), dtype=bool)
    ranks = split.tie_ranks(users, items, seed=seed)
    for user in np.unique(users):
        own = np.flatnonzero(users == user)
        if len(np.unique(items[own])) <= holdout:
            continue
        by_time = own[np.argsort(ts[own], kind="stable")]
        cut = walk_back(by_time, items, holdout)
        if ts[cut] > ts[own].min():
            test[own] = ts[own] >= ts[cut]
            continue
        tie_broken = own[np.lexsort((items[own], ranks[own], ts[own]))]
        cut = walk_back(tie_broken, items, holdout)
        key = list(zip(ts.tolist(), ranks.tolist(), items.tolist(), strict=True))
        test[own] = [key[position] >= key[cut] for position in own]
    return test


def walk_back(ordered: npt.NDArray[np.intp], items: npt.NDArray[np.int32], holdout: int) -> int:
    """The position where a walk back over `ordered` events meets its `holdout`-th new item."""
    seen: set[int] = set()
    for position in ordered[::-1]:
        seen.add(int(items[position]))
        if len(seen) == holdout:
            return int(position)
    raise AssertionError("fewer distinct items than the holdout")


def test_leave_last_holds_out_the_last_item_and_its_ties() -> None:
    users, items, ts = events(
        [
            (0, 10, 100),
            (1, 10, 100),  # user 1 has one item, seen twice: stays in train
            (0, 11, 200),
            (2, 10, 100),
            (0, 12, 300),  # user 0: cut at 300, the last item alone
            (1, 10, 200),
            (2, 12, 200),  # user 2: last event at 200 ...
            (2, 11, 200),  # ... ties with this one, which goes to test with it
            (3, 10, 50),
            (3, 11, 50),  # user 3: everything at one time: the tie is broken, one item is test
        ]
    )
    result = leave_last_split(users, items, ts, holdout=1)
    assert result.test[:8].tolist() == [False, False, False, False, True, False, True, True]
    assert sorted(result.test[8:].tolist()) == [False, True]
    assert result.train.tolist() == (~result.test).tolist()
    assert "3 of 4 users" in result.cut_description
    assert "1 of them, whose last items all share their first timestamp" in result.cut_description


def test_leave_last_holdout_two_walks_back_to_the_last_occurrence_of_each_item() -> None:
    users, items, ts = events(
        [
            (5, 1, 10),
            (5, 2, 20),
            (5, 2, 30),  # walk from the end: item 3 at 40, item 2 at 30 -> cut at 30, not 20
            (5, 3, 40),
            (6, 1, 10),
            (6, 2, 20),  # user 6 has only 2 distinct items, no more than the holdout: all train
            (7, 0, 5),
            (7, 1, 10),
            (7, 2, 20),
            (7, 1, 30),  # user 7: item 1 at 30, item 2 at 20 -> cut at 20; item 1 at 10 trains
        ]
    )
    result = leave_last_split(users, items, ts, holdout=2)
    assert result.test.tolist() == [False, False, True, True, False, False, False, False, True, True]


def test_leave_last_matches_the_literal_rule_and_never_leaks_the_future() -> None:
    rng = np.random.default_rng(7)
    n = 20_000
    users = rng.integers(0, 500, n).astype(np.int32)
    items = rng.integers(0, 60, n).astype(np.int32)
    ts = rng.integers(0, 40, n).astype(np.int64) * 1_000_000  # few distinct times: many ties
    for holdout in (1, 2, 3):
        result = leave_last_split(users, items, ts, holdout=holdout)
        np.testing.assert_array_equal(result.test, reference_leave_last(users, items, ts, holdout))
        latest_train = np.full(500, np.iinfo(np.int64).min)
        np.maximum.at(latest_train, users[result.train], ts[result.train])
        earliest_test = np.full(500, np.iinfo(np.int64).max)
        np.minimum.at(earliest_test, users[result.test], ts[result.test])
        assert np.all(latest_train < earliest_test)
        tested = np.unique(users[result.test])
        assert np.isin(tested, users[result.train]).all()  # every tested user keeps a history


def test_leave_last_breaks_ties_seeded_when_every_event_shares_one_timestamp() -> None:
    """Last.fm stamps every event 2011-01-01: each user must still hold out `holdout` items."""
    rng = np.random.default_rng(11)
    n_users, n_items = 300, 50
    users = np.repeat(np.arange(n_users, dtype=np.int32), 12)
    items = np.concatenate([rng.choice(n_items, 12, replace=False) for _ in range(n_users)]).astype(np.int32)
    items = np.r_[items, items[:24]]  # users 0 and 1 saw each of their items twice
    users = np.r_[users, users[:24]]
    ts = np.full(len(users), 1_293_840_000_000_000, dtype=np.int64)
    for holdout in (1, 3):
        result = leave_last_split(users, items, ts, holdout=holdout, seed=42)
        np.testing.assert_array_equal(result.test, reference_leave_last(users, items, ts, holdout, 42))
        for user in range(n_users):
            own = users == user
            assert len(np.unique(items[own & result.test])) == holdout
            assert not np.isin(items[own & result.test], items[own & result.train]).any()
        assert f"{n_users} of {n_users} users" in result.cut_description
        again = leave_last_split(users, items, ts, holdout=holdout, seed=42)
        np.testing.assert_array_equal(again.test, result.test)
    seeded = [leave_last_split(users, items, ts, holdout=1, seed=seed).test for seed in (42, 43)]
    assert np.count_nonzero(seeded[0] != seeded[1]) > 0


def test_leave_last_breaks_ties_only_for_users_whose_cut_is_their_first_timestamp() -> None:
    users, items, ts = events(
        [
            (0, 1, 10),
            (0, 2, 10),
            (0, 3, 10),
            (0, 4, 20),  # user 0, holdout 2: item 4, then one of 1, 2, 3 drawn
            (1, 1, 10),
            (1, 2, 20),
            (1, 3, 20),  # user 1, holdout 1: 2 and 3 tie after item 1, both are test as before
        ]
    )
    for seed in range(5):
        result = leave_last_split(users, items, ts, holdout=2, seed=seed)
        np.testing.assert_array_equal(result.test, reference_leave_last(users, items, ts, 2, seed))
        assert result.test[3] and np.count_nonzero(result.test[:3]) == 1
        assert leave_last_split(users, items, ts, holdout=1, seed=seed).test[4:].tolist() == [
            False,
            True,
            True,
        ]


def test_leave_last_handles_timestamps_too_far_apart_to_pack() -> None:
    users, items, ts = events([(0, 0, 0), (0, 1, 2**62), (1, 0, 5), (1, 1, 2**62 + 1), (1, 2, 2**62 + 1)])
    result = leave_last_split(users, items, ts, holdout=1)
    np.testing.assert_array_equal(result.test, reference_leave_last(users, items, ts, 1))
    assert result.test.tolist() == [False, True, False, True, True]


def test_leave_last_rejects_bad_input() -> None:
    users, items, ts = events([(0, 0, 0), (0, 1, 1)])
    with pytest.raises(InputError, match="holdout"):
        leave_last_split(users, items, ts, holdout=0)
    with pytest.raises(InputError, match="length"):
        leave_last_split(users, items[:1], ts, holdout=1)
    empty = leave_last_split(users[:0], items[:0], ts[:0], holdout=1)
    assert empty.train.size == empty.test.size == 0


def test_time_cut_holds_out_from_the_quantile_on() -> None:
    ts = np.array([5, 1, 3, 2, 4], dtype=np.int64)
    # sorted 1..5; the 0.6 quantile lies at position 0.6 * 4 = 2.4, between 3 and 4: the cut is 4
    result = time_cut_split(ts, quantile=0.6)
    assert result.test.tolist() == [True, False, False, False, True]
    assert "1970-01-01T00:00:00.000004+00:00" in result.cut_description
    with pytest.raises(InputError, match="quantile"):
        time_cut_split(ts, quantile=1.0)


def test_time_cut_with_nothing_before_the_cut_is_refused() -> None:
    ts = np.full(100, 1_293_840_000_000_000, dtype=np.int64)  # 2011-01-01, as Last.fm's import
    with pytest.raises(InputError, match=r"nothing to train on: all 100 events .* 2011-01-01T00:00:00"):
        time_cut_split(ts, quantile=0.9)
    mostly_tied = np.r_[ts, ts[:5] + 1]  # 100 of 105 events at the earliest instant: the cut is there
    with pytest.raises(InputError, match="leave_last"):
        time_cut_split(mostly_tied, quantile=0.5)


def test_time_cut_never_leaks_the_future() -> None:
    ts = np.random.default_rng(3).integers(0, 50, 20_000).astype(np.int64)
    result = time_cut_split(ts, quantile=0.8)
    assert ts[result.train].max() < ts[result.test].min()
    assert 0.15 < result.test.mean() < 0.25


def test_test_matrix_is_binary_and_drops_items_already_in_train() -> None:
    users, items, _ = events([(0, 1, 0), (0, 1, 1), (0, 2, 2), (0, 2, 3), (1, 0, 4), (1, 3, 5)])
    test_mask = np.array([False, True, True, True, True, False])
    train = csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]], dtype=np.float32))
    held_out = split.test_matrix(users, items, test_mask, train)
    # user 0: item 1 is in train, item 2 twice -> {2: 1}; user 1: {0: 1}; user 2: nothing held out
    assert held_out.shape == train.shape
    assert held_out.toarray().tolist() == [[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_both_ways_of_sorting_the_event_keys_agree() -> None:
    """Keys too wide to pack with positions (many users x many items) take the argsort path."""
    keys = np.random.default_rng(5).integers(0, 1_000, 5_000).astype(np.int64)
    packed_order, packed_keys = split._sorted_keys(keys, 1_000)
    argsort_order, argsort_keys = split._sorted_keys(keys, 2**62)
    for order, sorted_keys in ((packed_order, packed_keys), (argsort_order, argsort_keys)):
        np.testing.assert_array_equal(sorted_keys, np.sort(keys))
        np.testing.assert_array_equal(keys[order], sorted_keys)
        np.testing.assert_array_equal(np.sort(order), np.arange(len(keys)))
