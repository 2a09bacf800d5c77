"""Ranking metrics against values computed by hand, and against implicit where definitions agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
from implicit.als import AlternatingLeastSquares
from implicit.evaluation import ranking_metrics_at_k
from scipy.sparse import csr_matrix
from threadpoolctl import threadpool_limits

from recsvc.errors import InputError
from training.metrics import ranking_metrics

RECOMMENDED = np.array(
    [
        [1, 5, 3],  # user 0: relevant {1, 3}, hits at ranks 1 and 3
        [0, 2, -1],  # user 1: relevant {2, 4, 6, 8}, hit at rank 2, one empty slot
        [7, 8, 9],  # user 2: nothing relevant, so not averaged (but counts for coverage)
        [0, 1, 2],  # user 3: relevant {9}, no hit
    ]
)
RELEVANT = [np.array([1, 3]), np.array([2, 4, 6, 8]), np.array([], dtype=np.int64), np.array([9])]


def test_hand_computed_values() -> None:
    metrics = ranking_metrics(RECOMMENDED, RELEVANT, n_items=10, k=3)
    ndcg_0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))  # ideal: 2 hits at ranks 1, 2
    ndcg_1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))  # ideal: 3 hits
    map_0 = (1 / 1 + 2 / 3) / 2  # precision@1 and @3, over min(3, 2)
    map_1 = (1 / 2) / 3  # precision@2, over min(3, 4)
    assert metrics == pytest.approx(
        {
            "precision@3": (2 / 3 + 1 / 3 + 0) / 3,
            "recall@3": (2 / 2 + 1 / 4 + 0) / 3,
            "ndcg@3": (ndcg_0 + ndcg_1 + 0) / 3,
            "map@3": (map_0 + map_1 + 0) / 3,
            "hit_rate@3": 2 / 3,
            "coverage@3": 8 / 10,  # {0, 1, 2, 3, 5, 7, 8, 9}
        }
    )
    assert list(metrics) == ["precision@3", "recall@3", "ndcg@3", "map@3", "hit_rate@3", "coverage@3"]


def test_csr_relevance_gives_the_same_values_as_lists() -> None:
    dense = np.zeros((4, 10), dtype=np.float32)
    for user, items in enumerate(RELEVANT):
        dense[user, items] = 1
    from_lists = ranking_metrics(RECOMMENDED, RELEVANT, 10, 3)
    assert ranking_metrics(RECOMMENDED, csr_matrix(dense), 10, 3) == from_lists


def test_a_perfect_ranking_scores_one() -> None:
    metrics = ranking_metrics(np.array([[4, 2], [1, -1]]), [np.array([2, 4, 0]), np.array([1])], 5, 2)
    # user 1 has one relevant item: found at rank 1, so ndcg and map are 1 despite the empty slot
    assert metrics["ndcg@2"] == metrics["map@2"] == metrics["hit_rate@2"] == 1.0
    assert metrics["precision@2"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert metrics["recall@2"] == pytest.approx((2 / 3 + 1) / 2)


def test_rejects_what_has_no_meaning() -> None:
    with pytest.raises(InputError, match="shape"):
        ranking_metrics(RECOMMENDED[:, :2], RELEVANT, 10, 3)
    with pytest.raises(InputError, match="twice"):
        ranking_metrics(np.array([[1, 1, -1]]), [np.array([1])], 10, 3)
    with pytest.raises(InputError, match="no user"):
        ranking_metrics(RECOMMENDED, [np.array([], dtype=np.int64)] * 4, 10, 3)
    with pytest.raises(InputError, match=r"\[0, 5\)"):
        ranking_metrics(RECOMMENDED, RELEVANT, 5, 3)


def test_agrees_with_implicit_where_the_definitions_do() -> None:
    """ndcg and map are defined alike; implicit's precision is total hits / total min(k, |rel|),
    which equals ours only when every user has at least k relevant items, as here."""
    rng = np.random.default_rng(11)
    n_users, n_items, k = 60, 40, 5
    scores = rng.random((n_users, n_items))
    train = csr_matrix((scores < 0.2).astype(np.float32))
    held_out = (scores >= 0.2) & (scores < 0.45)  # ~10 items a user, never in train
    assert held_out.sum(axis=1).min() >= k
    test = csr_matrix(held_out.astype(np.float32))
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=4, iterations=5, random_state=0)
        model.fit(train, show_progress=False)
    ids, _ = model.recommend(np.arange(n_users), train, N=k, filter_already_liked_items=True)

    ours = ranking_metrics(ids, test, n_items, k)
    theirs = ranking_metrics_at_k(model, train, test, K=k, show_progress=False)
    assert ours["ndcg@5"] == pytest.approx(theirs["ndcg"])
    assert ours["map@5"] == pytest.approx(theirs["map"])
    assert ours["precision@5"] == pytest.approx(theirs["precision"])
