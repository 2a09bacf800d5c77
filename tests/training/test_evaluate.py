"""Evaluation on data whose right answer is known by construction, and the baseline by hand."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from implicit.als import AlternatingLeastSquares
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from training import split
from training.evaluate import evaluate, recommend_model, recommend_popular, sample_users
from training.metrics import METRIC_NAMES

BLOCK = 10  # items per taste block; item 2 * BLOCK is the one everybody has
SHARED = 2 * BLOCK


def planted_matrices(seed: int = 0) -> tuple[csr_matrix, csr_matrix]:
    """Train and test matrices of two taste groups, split by `leave_last_split(holdout=2)`.

    36 users like 8 of items 0-9, 24 users 8 of items 10-19, and everyone first has item 20.
    The bigger group makes its block the more popular, so popularity serves the small group the
    wrong block; a model that finds the groups serves each its own block's remaining items.
    """
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(60):
        block = 0 if user < 36 else 1
        liked = rng.choice(BLOCK, size=8, replace=False) + block * BLOCK
        users += [user] * 9
        items += [SHARED, *liked]
    user_array = np.array(users, dtype=np.int32)
    item_array = np.array(items, dtype=np.int32)
    ts = np.tile(np.arange(9, dtype=np.int64) * 3_600_000_000, 60)  # one event an hour
    cut = split.leave_last_split(user_array, item_array, ts, holdout=2)
    train = csr_matrix(
        (np.ones(cut.train.sum(), np.float32), (user_array[cut.train], item_array[cut.train])),
        shape=(60, SHARED + 1),
    )
    return train, split.test_matrix(user_array, item_array, cut.test, train)


def fitted_als(train: csr_matrix) -> AlternatingLeastSquares:
    # BLAS held to one thread, as training.models.fit does: implicit then has nothing to warn about.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=8, iterations=15, random_state=0)
        model.fit(train, show_progress=False)
    return model


def is_in_train(train: csr_matrix, recommended: npt.NDArray[np.int64], users: npt.NDArray[np.int64]) -> bool:
    rows = np.broadcast_to(users[:, None], recommended.shape)
    filled = recommended >= 0
    return bool(np.asarray(train[rows[filled], recommended[filled]]).any())


def test_the_model_finds_the_planted_groups_and_beats_popularity() -> None:
    train, test = planted_matrices()
    assert test.sum(axis=1).min() == 2  # every user holds out two items of their own block
    result = evaluate(fitted_als(train), train, test, k=5, max_users=1000, seed=0)
    assert result.users_evaluated == 60
    assert result.model["ndcg@5"] > result.popularity["ndcg@5"] + 0.1
    assert result.model["hit_rate@5"] > 0.9
    # popularity serves the small group the big group's block: no hit for any of its 24 users
    assert result.popularity["hit_rate@5"] == pytest.approx(36 / 60, abs=0.1)


def test_table_shows_every_metric_for_both_and_the_lift() -> None:
    train, test = planted_matrices()
    table = evaluate(fitted_als(train), train, test, k=5, max_users=1000, seed=0).table()
    header, *rows = table.splitlines()
    assert header.split() == ["metric", "model", "popularity", "lift"]
    assert [row.split()[0] for row in rows] == [f"{name}@5" for name in METRIC_NAMES]
    assert all(row.split()[-1].endswith("%") or row.split()[-1] == "-" for row in rows)


def test_recommend_popular_ranks_by_users_and_skips_their_own_items() -> None:
    train = csr_matrix(np.array([[1, 1, 0, 0], [2, 0, 1, 0], [1, 0, 0, 0]], dtype=np.float32))
    # users per item: 3, 1, 1, 0 -> ranking 0, 1, 2 (ties by index; item 3 has no one)
    recommended = recommend_popular(train, np.array([0, 1, 2]), k=3)
    assert recommended.tolist() == [[2, -1, -1], [1, -1, -1], [1, 2, -1]]


def test_recommend_popular_never_returns_a_train_item() -> None:
    train, _ = planted_matrices()
    users = np.arange(60)
    assert not is_in_train(train, recommend_popular(train, users, k=8), users)


def test_recommend_model_pads_with_minus_one_and_skips_train_items() -> None:
    train = csr_matrix(np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1], [1, 0, 1, 0]], dtype=np.float32))
    model = fitted_als(train)
    users = np.array([0, 2, 3])
    recommended = recommend_model(model, train, users, k=6)
    assert recommended.shape == (3, 6)
    # users 0 and 2 have one item left, user 3 two: the rest is padding
    assert recommended[:2].tolist() == [[3, -1, -1, -1, -1, -1], [0, -1, -1, -1, -1, -1]]
    assert sorted(recommended[2, :2]) == [1, 3] and (recommended[2, 2:] == -1).all()
    assert not is_in_train(train, recommended, users)
    np.testing.assert_array_equal(recommend_model(model, train, users, k=6, batch=1), recommended)


def test_sample_users_draws_sorted_users_with_test_items() -> None:
    test = csr_matrix(np.array([[1, 0], [0, 0], [0, 1], [1, 1], [0, 0], [1, 0]], dtype=np.float32))
    assert sample_users(test, max_users=10, seed=0).tolist() == [0, 2, 3, 5]
    drawn = sample_users(test, max_users=2, seed=4)
    assert len(drawn) == 2 and set(drawn) <= {0, 2, 3, 5} and drawn[0] < drawn[1]
    np.testing.assert_array_equal(sample_users(test, max_users=2, seed=4), drawn)
