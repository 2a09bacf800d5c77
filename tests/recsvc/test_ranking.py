"""Filtered top-k over FAISS indexes against brute force: growth, exact fallback, ties."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from recsvc import ann
from recsvc.config import IndexConfig
from recsvc.ranking import Blocked, Scorer, item_norms, ranked_list, top_k


def brute_force(
    vectors: np.ndarray, query: np.ndarray, k: int, allowed: np.ndarray, blocked: set[int]
) -> list[int]:
    scores = vectors @ query
    order = np.lexsort((np.arange(len(vectors)), -scores))
    return [int(i) for i in order if allowed[i] and int(i) not in blocked][:k]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_top_k_equals_brute_force_under_filters(vectors: np.ndarray, kind: str) -> None:
    config = IndexConfig(exact_max_items=1000 if kind == "flat" else 10, hnsw_ef_search=400)
    index = ann.build_index(vectors, metric="ip", config=config)
    assert ann.index_kind(index) == kind
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((6, 8)).astype(np.float32)
    allowed = rng.random(len(vectors)) > 0.2
    blocked_sets = [
        set(rng.choice(len(vectors), size=n, replace=False).tolist()) for n in (0, 3, 30, 0, 90, 5)
    ]
    blocked = Blocked.build(
        len(queries),
        len(vectors),
        [
            (np.full(len(items), q), np.array(sorted(items), dtype=np.int64))
            for q, items in enumerate(blocked_sets)
        ],
    )

    found = top_k(
        Scorer(index, vectors, "ip"), queries, np.arange(len(queries)), 10, allowed=allowed, blocked=blocked
    )

    for query, items, (got, scores) in zip(queries, blocked_sets, found, strict=True):
        assert got.tolist() == brute_force(vectors, query, 10, allowed, items)
        np.testing.assert_allclose(scores, vectors[got] @ query, rtol=1e-5)


def test_search_grows_k_when_the_best_items_are_filtered_out(vectors: np.ndarray) -> None:
    index = ann.build_index(vectors, metric="ip", config=IndexConfig())
    query = vectors[:1] * 3
    best = np.argsort(-(vectors @ query[0]))
    allowed = np.ones(len(vectors), dtype=bool)
    allowed[best[:150]] = False  # the 150 best of 400 are unavailable: the first k' finds none
    nobody = Blocked.build(1, len(vectors), ())
    searched: list[int] = []

    class Counting(faiss.IndexFlatIP):  # type: ignore[misc]
        def search(self, x: np.ndarray, k: int, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
            searched.append(k)
            return index.search(x, k)

    counting = Counting(vectors.shape[1])
    [(got, _)] = top_k(
        Scorer(counting, vectors, "ip"),
        query,
        np.zeros(1, dtype=np.int64),
        5,
        allowed=allowed,
        blocked=nobody,
    )

    assert got.tolist() == best[150:155].tolist()
    assert len(searched) >= 2 and searched == sorted(searched)


def test_filters_that_leave_fewer_than_k_return_all_that_is_left(vectors: np.ndarray) -> None:
    index = ann.build_index(vectors, metric="ip", config=IndexConfig(exact_max_items=10))
    allowed = np.zeros(len(vectors), dtype=bool)
    allowed[[3, 50, 399]] = True
    blocked = Blocked.build(1, len(vectors), [(np.zeros(1, dtype=np.int64), np.array([50]))])

    [(got, _)] = top_k(
        Scorer(index, vectors, "ip"),
        vectors[:1],
        np.zeros(1, dtype=np.int64),
        10,
        allowed=allowed,
        blocked=blocked,
    )

    assert sorted(got.tolist()) == [3, 399]


def test_candidates_are_scored_exactly_and_ties_go_to_the_smaller_index() -> None:
    vectors = np.array([[1.0, 0.0], [0.5, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    index = ann.build_index(vectors, metric="ip", config=IndexConfig())
    blocked = Blocked.build(1, 5, [(np.zeros(1, dtype=np.int64), np.array([0]))])
    candidates = np.array([0, 1, 2, 3], dtype=np.int64)

    [(got, scores)] = top_k(
        Scorer(index, vectors, "ip"),
        np.array([[1.0, 0.0]], dtype=np.float32),
        np.zeros(1, dtype=np.int64),
        2,
        allowed=np.ones(5, dtype=bool),
        blocked=blocked,
        candidates=candidates,
    )

    assert got.tolist() == [2, 3] and scores.tolist() == [1.0, 1.0]


def test_cosine_scores_are_cosines(vectors: np.ndarray) -> None:
    index = ann.build_index(vectors, metric="cosine", config=IndexConfig())
    scorer = Scorer(index, vectors, "cosine", item_norms(vectors))
    allowed = np.ones(len(vectors), dtype=bool)
    allowed[7] = False

    [(got, scores)] = top_k(
        scorer,
        vectors[7:8] * 5,
        np.zeros(1, dtype=np.int64),
        5,
        allowed=allowed,
        blocked=Blocked.build(1, 400, ()),
    )

    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = unit @ unit[7]
    cosines[7] = -np.inf
    assert got.tolist() == np.argsort(-cosines)[:5].tolist()
    np.testing.assert_allclose(scores, cosines[got], rtol=1e-5)


def test_blocked_sets_answer_membership_per_query() -> None:
    blocked = Blocked.build(
        3, 10, [(np.array([0, 2, 2]), np.array([4, 9, 9])), (np.array([0]), np.array([1]))]
    )

    assert blocked.counts.tolist() == [2, 0, 1]
    assert blocked.items_of(0).tolist() == [1, 4] and blocked.items_of(1).tolist() == []
    hits = blocked.contains(np.array([0, 1, 2]), np.array([[4, 9], [4, 9], [4, 9]]))
    assert hits.tolist() == [[True, False], [False, False], [False, True]]
    rows, items = blocked.pairs(np.array([2, 0]))
    assert rows.tolist() == [0, 1, 1] and items.tolist() == [9, 1, 4]


def test_ranked_list_puts_first_items_first_once_and_skips_disallowed() -> None:
    order = np.array([5, 4, 3, 2, 1, 0], dtype=np.int64)
    scores = np.arange(6, dtype=np.float32)
    allowed = np.array([True, True, False, True, True, True])

    items, values = ranked_list(
        order, scores, allowed, np.array([2, 1, 1, 3]), np.array([9, 8, 7, 6], dtype=np.float32), 4
    )

    assert items.tolist() == [1, 3, 5, 4] and values.tolist() == [8.0, 6.0, 5.0, 4.0]


def test_a_short_answer_from_the_index_does_not_end_the_search(vectors: np.ndarray) -> None:
    """FAISS's HNSW returns fewer ids than asked (-1 for the rest) when k' is large."""
    index = ann.build_index(vectors, metric="ip", config=IndexConfig())

    class Short(faiss.IndexFlatIP):  # type: ignore[misc]
        def search(self, x: np.ndarray, k: int, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
            scores, ids = index.search(x, k)
            ids[:, 12:] = -1
            scores[:, 12:] = -np.inf
            return scores, ids

    query = vectors[:1]
    blocked_items = np.argsort(-(vectors @ query[0]))[:20]  # the 20 best are blocked: 12 ids are not enough
    blocked = Blocked.build(1, len(vectors), [(np.zeros(20, dtype=np.int64), blocked_items)])
    allowed = np.ones(len(vectors), dtype=bool)

    [(got, _)] = top_k(
        Scorer(Short(vectors.shape[1]), vectors, "ip"),
        query,
        np.zeros(1, dtype=np.int64),
        5,
        allowed=allowed,
        blocked=blocked,
    )

    assert got.tolist() == brute_force(vectors, query[0], 5, allowed, set(blocked_items.tolist()))
