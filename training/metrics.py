"""Top-k ranking metrics with binary relevance, as pure functions over whole arrays.

Every row of `recommended` holds one user's top-k item indices, best first; -1 marks an empty
slot (fewer than k candidates), which is never a hit. `relevant` lists the user's held-out
items. With `hits` the number of relevant items among the top k, `rel` the number of relevant
items and rank counted from 1:

- precision@k = hits / k (empty slots count as misses);
- recall@k = hits / rel;
- ndcg@k = DCG / IDCG with gain 1 / log2(rank + 1) at each hit, where IDCG is the DCG of
  min(k, rel) hits at ranks 1..min(k, rel);
- map@k = sum over hit ranks r of precision@r, divided by min(k, rel);
- hit_rate@k = 1 if hits > 0 else 0;
- coverage@k = distinct items recommended to any user (every row, empty slots aside) / n_items.

All but coverage are averaged over the users with at least one relevant item: a user with
nothing held out says nothing about the ranking. ndcg and map agree with
`implicit.evaluation.ranking_metrics_at_k`; implicit's precision differs, dividing the total
hits by the total of min(k, rel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix

from recsvc.errors import InputError

METRIC_NAMES = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")


def ranking_metrics(
    recommended: npt.NDArray[np.integer],
    relevant: Sequence[npt.NDArray[np.integer]] | csr_matrix,
    n_items: int,
    k: int,
) -> dict[str, float]:
    """Metrics `{name}@{k}` for every name in METRIC_NAMES (see the module docstring)."""
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if recommended.ndim != 2 or recommended.shape[1] != k:
        raise InputError(f"recommended must have shape (n_users, {k}), got {recommended.shape}")
    if recommended.size and (recommended.min() < -1 or recommended.max() >= n_items):
        raise InputError(f"recommended items must lie in [0, {n_items}) or be -1")
    n_users = recommended.shape[0]
    relevance = _relevance_matrix(relevant, n_users, n_items)
    _check_no_repeats(recommended)

    filled = recommended >= 0
    rows = np.broadcast_to(np.arange(n_users)[:, None], recommended.shape)
    is_hit = np.zeros(recommended.shape, dtype=bool)
    is_hit[filled] = contains(relevance, rows[filled], recommended[filled])

    n_relevant = np.diff(relevance.indptr)
    scored = n_relevant > 0
    if not scored.any():
        raise InputError("no user has a relevant item; the metrics are undefined")
    is_hit = is_hit[scored]
    n_relevant = n_relevant[scored]
    ranks = np.arange(1, k + 1)
    gains = 1.0 / np.log2(ranks + 1.0)
    ideal_hits = np.minimum(n_relevant, k)

    hits = is_hit.sum(axis=1)
    dcg = is_hit @ gains
    idcg = np.cumsum(gains)[ideal_hits - 1]
    precision_at_rank = np.cumsum(is_hit, axis=1) / ranks
    average_precision = (precision_at_rank * is_hit).sum(axis=1) / ideal_hits
    distinct_items = np.unique(recommended[filled]).size

    values = {
        "precision": float(np.mean(hits / k)),
        "recall": float(np.mean(hits / n_relevant)),
        "ndcg": float(np.mean(dcg / idcg)),
        "map": float(np.mean(average_precision)),
        "hit_rate": float(np.mean(hits > 0)),
        "coverage": distinct_items / n_items,
    }
    return {f"{name}@{k}": values[name] for name in METRIC_NAMES}


def contains(
    matrix: csr_matrix, rows: npt.NDArray[np.integer], cols: npt.NDArray[np.integer]
) -> npt.NDArray[np.bool_]:
    """Whether `matrix` holds a nonzero at each (rows[i], cols[i]); binary search per pair."""
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(matrix[rows, cols], dtype=bool).reshape(-1)


def _relevance_matrix(
    relevant: Sequence[npt.NDArray[np.integer]] | csr_matrix, n_users: int, n_items: int
) -> csr_matrix:
    """A canonical CSR copy (sorted, no duplicates, no stored zeros) of the relevant sets."""
    if isinstance(relevant, csr_matrix):
        matrix = relevant.copy()
    else:
        lengths = [len(row) for row in relevant]
        indices = np.concatenate(
            [np.zeros(0, dtype=np.int64), *(np.asarray(row, np.int64) for row in relevant)]
        )
        if indices.size and (indices.min() < 0 or indices.max() >= n_items):
            raise InputError(f"relevant items must lie in [0, {n_items})")
        matrix = csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, np.r_[0, np.cumsum(lengths)]),
            shape=(len(lengths), n_items),
        )
    if matrix.shape != (n_users, n_items):
        raise InputError(f"relevant must have shape ({n_users}, {n_items}), got {matrix.shape}")
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


def _check_no_repeats(recommended: npt.NDArray[np.integer]) -> None:
    ordered = np.sort(recommended, axis=1)
    if np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)):
        raise InputError("a row of recommended lists the same item twice")
