"""Scoring a fitted model on held-out items, beside the popularity baseline it has to beat.

A model's numbers mean little alone: a ranking by popularity is free, so every evaluation
scores both on the same users and reports the lift. Both rankers leave out what the user
already has in train, exactly as serving does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from recsvc.errors import InputError
from recsvc.report import metrics_table
from training.metrics import contains, ranking_metrics

# implicit's CPU top-k gives an already-liked item this score when it has to fill a slot with one.
_FILTERED_SCORE = -np.finfo(np.float32).max


class Recommender(Protocol):
    """What evaluation needs of a model: implicit's batch `recommend` (ALS, BPR, ...)."""

    def recommend(
        self,
        userid: npt.NDArray[np.integer],
        user_items: csr_matrix,
        N: int = ...,
        filter_already_liked_items: bool = ...,
    ) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.floating]]: ...


@dataclass(frozen=True)
class Evaluation:
    """Metrics of the model and of the popularity baseline on the same sampled users."""

    model: dict[str, float]
    popularity: dict[str, float]
    users_evaluated: int

    def table(self) -> str:
        """One row per metric: model, popularity and the model's lift over it."""
        return metrics_table(self.model, self.popularity)


def sample_users(test: csr_matrix, max_users: int, seed: int) -> npt.NDArray[np.int64]:
    """Up to `max_users` users with at least one test item, drawn with `seed`, in ascending order."""
    if max_users < 1:
        raise InputError(f"max_users must be at least 1, got {max_users}")
    candidates = np.flatnonzero(np.diff(test.indptr) > 0)
    if len(candidates) > max_users:
        candidates = np.random.default_rng(seed).choice(candidates, size=max_users, replace=False)
    return np.sort(candidates)


def recommend_model(
    model: Recommender,
    train: csr_matrix,
    users: npt.NDArray[np.integer],
    k: int,
    batch: int = 4096,
) -> npt.NDArray[np.int64]:
    """The model's top `k` items per user, train items excluded, -1 where it has fewer than k.

    implicit fills slots it cannot fill with already-liked items at the lowest float32 score
    (or, past the number of items, with item 0): those become -1 here.
    """
    if k < 1 or batch < 1:
        raise InputError(f"k and batch must be at least 1, got k={k}, batch={batch}")
    asked = min(k, train.shape[1])
    result = np.full((len(users), k), -1, dtype=np.int64)
    for start in range(0, len(users), batch):
        chunk = users[start : start + batch]
        ids, scores = model.recommend(chunk, train[chunk], N=asked, filter_already_liked_items=True)
        ids = np.where(scores > _FILTERED_SCORE, ids, -1)
        result[start : start + len(chunk), : ids.shape[1]] = ids
    return result


def recommend_popular(train: csr_matrix, users: npt.NDArray[np.integer], k: int) -> npt.NDArray[np.int64]:
    """Items by the number of train users who have them (ties: lower index), less each user's own.

    Only items someone has are ranked; a user who has nearly all of them gets -1 slots. A user
    with n train items finds their k best among the top k + n, so the work is linear in the
    users' train items.
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    cells = train.copy()
    cells.sum_duplicates()
    cells.eliminate_zeros()
    popularity = np.bincount(cells.indices, minlength=train.shape[1])
    ranked = np.argsort(-popularity, kind="stable")[: np.count_nonzero(popularity)]

    window = np.minimum(k + np.diff(cells.indptr)[users], len(ranked))
    window_start = np.cumsum(window) - window
    owner = np.repeat(np.arange(len(users)), window)
    candidate = ranked[np.arange(owner.size) - window_start[owner]]
    free = ~contains(cells, users[owner], candidate)
    free_before = np.r_[0, np.cumsum(free)]
    slot = free_before[:-1] - free_before[window_start][owner]
    keep = free & (slot < k)
    result = np.full((len(users), k), -1, dtype=np.int64)
    result[owner[keep], slot[keep]] = candidate[keep]
    return result


def evaluate(
    model: Recommender, train: csr_matrix, test: csr_matrix, *, k: int, max_users: int, seed: int
) -> Evaluation:
    """Model and popularity metrics@k on up to `max_users` sampled users with test items.

    `test` is the binary hold-out from `training.split.test_matrix`, aligned with `train`.
    """
    if train.shape != test.shape:
        raise InputError(f"train {train.shape} and test {test.shape} must have the same shape")
    users = sample_users(test, max_users, seed)
    relevant = test[users]
    n_items = train.shape[1]
    return Evaluation(
        model=ranking_metrics(recommend_model(model, train, users, k), relevant, n_items, k),
        popularity=ranking_metrics(recommend_popular(train, users, k), relevant, n_items, k),
        users_evaluated=len(users),
    )
