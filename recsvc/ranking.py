"""Top-k items for many query vectors at once, under filters: the search half of the engine.

Two kinds of filter reach every search:
- `allowed`, one mask over all items shared by the whole batch (available in the catalog, not
  excluded by the request, in the asked category);
- `Blocked`, each query's own items (seen, bought, dismissed), kept as one sorted array of
  keys `query * n_items + item`, so membership for a whole result matrix is one searchsorted.

`top_k` scores a small candidate set (a category) exactly, and otherwise asks the FAISS index
for k' = (k + blocked) / share-allowed + margin results, filters them, and asks again with a
four times larger k' only for the queries that still have fewer than k. Once k' would reach
the whole catalog (flat index) or a sixteenth of it (HNSW), it scores every item exactly
instead, so it stops even when the filters leave fewer than k items. HNSW needs that bound:
for a large k' FAISS's HNSW search returns fewer than k' ids (-1 for the rest; measured: 1,076
of 6,250 asked on 100k items), so a short answer never means the catalog is exhausted.
Final rankings are by exact score, ties broken by the smaller item index.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np
import numpy.typing as npt

from recsvc import ann

Ranked = tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]  # item indices, scores; best first

_MARGIN = 16
_GROWTH = 4
_HNSW_EXACT_SHARE = 16  # past n_items / 16, HNSW answers fall short of k': score everything
_EXACT_CELLS = 1 << 23  # scores held at once by exact scoring (32 MiB of float32)
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Blocked:
    """Each query's blocked items, as sorted unique keys `query * n_items + item`."""

    keys: npt.NDArray[np.int64]
    counts: npt.NDArray[np.int64]  # blocked items per query
    n_items: int

    @classmethod
    def build(
        cls,
        queries: int,
        n_items: int,
        pairs: Iterable[tuple[npt.NDArray[np.integer], npt.NDArray[np.integer]]],
    ) -> Blocked:
        """From (query positions, item indices) pairs of arrays; duplicates are fine."""
        parts = [q.astype(np.int64) * n_items + i for q, i in pairs if len(q)]
        keys = np.unique(np.concatenate(parts)) if parts else _EMPTY
        counts = np.bincount(keys // max(n_items, 1), minlength=queries).astype(np.int64)
        return cls(keys, counts, n_items)

    def contains(self, queries: npt.NDArray[np.int64], items: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Per (row, column): is items[row, column] blocked for queries[row]."""
        if not len(self.keys):
            return np.zeros(items.shape, dtype=bool)
        wanted = queries[:, None] * self.n_items + items
        found = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        hit: npt.NDArray[np.bool_] = self.keys[found] == wanted
        return hit

    def items_of(self, query: int) -> npt.NDArray[np.int64]:
        """The blocked items of one query, ascending."""
        lo, hi = np.searchsorted(self.keys, [query * self.n_items, (query + 1) * self.n_items])
        return self.keys[lo:hi] - query * self.n_items

    def pairs(self, queries: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(row in `queries`, item) of every blocked item of those queries."""
        starts = np.searchsorted(self.keys, queries * self.n_items)
        ends = np.searchsorted(self.keys, (queries + 1) * self.n_items)
        lengths = ends - starts
        rows = np.repeat(np.arange(len(queries)), lengths)
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        items = self.keys[np.repeat(starts, lengths) + offsets] - queries[rows] * self.n_items
        return rows, items


@dataclass(frozen=True)
class Scorer:
    """What to rank items with: an index over `vectors`, and its metric."""

    index: faiss.Index
    vectors: npt.NDArray[np.float32]
    metric: ann.Metric
    norms: npt.NDArray[np.float32] | None = None  # of `vectors`, 1 where zero; for cosine

    def scores(
        self, queries: npt.NDArray[np.float32], items: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        """Exact scores of items[row, :] for queries[row], the same on every path; -1 items: -inf."""
        safe = np.maximum(items, 0)
        dots: npt.NDArray[np.float32] = np.einsum("mkd,md->mk", self.vectors[safe], queries)
        if self.norms is not None:
            dots = dots / (self.norms[safe] * _norms(queries)[:, None])
        dots[items < 0] = -np.inf
        return dots.astype(np.float32, copy=False)


def top_k(
    scorer: Scorer,
    queries: npt.NDArray[np.float32],
    query_ids: npt.NDArray[np.int64],
    k: int,
    *,
    allowed: npt.NDArray[np.bool_],
    blocked: Blocked,
    candidates: npt.NDArray[np.int64] | None = None,
) -> list[Ranked]:
    """The best `k` allowed, unblocked items for each query row; `query_ids` index `blocked`.

    With `candidates` (ascending, all allowed) only those are scored, exactly; without, the index
    is searched. Fewer than `k` come back only when fewer exist.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if candidates is not None:
        found = _exact(scorer, queries, query_ids, k, candidates, None, blocked)
    else:
        found = _searched(scorer, queries, query_ids, k, allowed, blocked)
    scores = scorer.scores(queries, found)
    order = np.lexsort((found, -scores), axis=1)  # by score, then item; missing (-inf) last
    found, scores = np.take_along_axis(found, order, axis=1), np.take_along_axis(scores, order, axis=1)
    counts = np.count_nonzero(found >= 0, axis=1).tolist()
    return [(found[row, :count], scores[row, :count]) for row, count in enumerate(counts)]


def _searched(
    scorer: Scorer,
    queries: npt.NDArray[np.float32],
    query_ids: npt.NDArray[np.int64],
    k: int,
    allowed: npt.NDArray[np.bool_],
    blocked: Blocked,
) -> npt.NDArray[np.int64]:
    """(queries x k) items from the index, unranked; -1 where fewer exist."""
    n_items = len(allowed)
    share = max(int(np.count_nonzero(allowed)), 1) / max(n_items, 1)
    wanted = np.ceil((k + blocked.counts[query_ids]) / share).astype(np.int64) + _MARGIN
    exact_from = n_items // _HNSW_EXACT_SHARE if isinstance(scorer.index, faiss.IndexHNSW) else n_items
    found = np.full((len(queries), k), -1, dtype=np.int64)
    pending = np.arange(len(queries))
    while len(pending):
        asked = int(wanted[pending].max())
        if asked >= max(exact_from, 1):
            found[pending] = _exact(scorer, queries[pending], query_ids[pending], k, None, allowed, blocked)
            break
        _, ids = ann.search(scorer.index, queries[pending], asked, metric=scorer.metric)
        safe = np.maximum(ids, 0)
        valid = (ids >= 0) & allowed[safe] & ~blocked.contains(query_ids[pending], safe)
        done = valid.sum(axis=1) >= k
        found[pending[done]] = _first_k(ids[done], valid[done], k)
        pending = pending[~done]
        wanted[pending] = asked * _GROWTH
    return found


def _first_k(ids: npt.NDArray[np.int64], keep: npt.NDArray[np.bool_], k: int) -> npt.NDArray[np.int64]:
    """Per row, the first k ids where `keep`, moved to the front; -1 after them."""
    keep = keep & (np.cumsum(keep, axis=1) <= k)
    front = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    taken = np.where(np.take_along_axis(keep, front, axis=1), np.take_along_axis(ids, front, axis=1), -1)
    if taken.shape[1] < k:
        taken = np.pad(taken, ((0, 0), (0, k - taken.shape[1])), constant_values=-1)
    return taken


def _exact(
    scorer: Scorer,
    queries: npt.NDArray[np.float32],
    query_ids: npt.NDArray[np.int64],
    k: int,
    candidates: npt.NDArray[np.int64] | None,
    allowed: npt.NDArray[np.bool_] | None,
    blocked: Blocked,
) -> npt.NDArray[np.int64]:
    """Score `candidates` (or every item, masked by `allowed`) per query: (queries x k) best, -1 pad."""
    vectors = scorer.vectors if candidates is None else scorer.vectors[candidates]
    width = len(vectors)
    found = np.full((len(queries), k), -1, dtype=np.int64)
    if width == 0:
        return found
    norms = scorer.norms if candidates is None or scorer.norms is None else scorer.norms[candidates]
    chunk = max(1, _EXACT_CELLS // width)
    for start in range(0, len(queries), chunk):
        scores = queries[start : start + chunk] @ vectors.T
        if norms is not None:
            scores /= norms[None, :]  # the query's norm changes no ranking
        if allowed is not None:
            scores[:, ~allowed] = -np.inf
        rows, items = blocked.pairs(query_ids[start : start + chunk])
        if candidates is None:
            scores[rows, items] = -np.inf
        else:
            columns = np.searchsorted(candidates, items)
            hit = columns < width
            hit[hit] = candidates[columns[hit]] == items[hit]
            scores[rows[hit], columns[hit]] = -np.inf
        columns = _best_columns(scores, k)
        finite = np.isfinite(np.take_along_axis(scores, columns, axis=1))
        picked = columns if candidates is None else candidates[columns]
        found[start : start + chunk, : columns.shape[1]] = np.where(finite, picked, -1)
    return found


def _best_columns(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Per row, the columns of the k highest scores (all columns when there are fewer)."""
    width = scores.shape[1]
    if k < width:
        return np.argpartition(-scores, k - 1, axis=1)[:, :k].astype(np.int64)
    return np.broadcast_to(np.arange(width, dtype=np.int64), scores.shape)


def _norms(queries: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms: npt.NDArray[np.float32] = np.linalg.norm(queries, axis=1).astype(np.float32)
    norms[~(norms > 0) | ~np.isfinite(norms)] = 1.0
    return norms


def item_norms(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """L2 norm of each row, 1 for zero rows (they then score 0 under cosine)."""
    norms: npt.NDArray[np.float32] = np.linalg.norm(vectors, axis=1).astype(np.float32)
    norms[norms == 0] = 1.0
    return norms


def ranked_list(
    order: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    allowed: npt.NDArray[np.bool_],
    first: npt.NDArray[np.int64],
    first_scores: npt.NDArray[np.float32],
    count: int,
) -> Ranked:
    """Up to `count` allowed items: `first` in its order, then `order`, each item once.

    Walks `order` in growing slices, so a long catalogue costs only as much as it takes.
    """
    keep_first = allowed[first] if len(first) else np.zeros(0, dtype=bool)
    _, unique_at = np.unique(first, return_index=True)
    once = np.zeros(len(first), dtype=bool)
    once[unique_at] = True
    head, head_scores = first[keep_first & once][:count], first_scores[keep_first & once][:count]
    taken = [head]
    taken_scores = [head_scores]
    have = len(head)
    start, size = 0, max(2 * count, 64)
    while have < count and start < len(order):
        block = order[start : start + size]
        block = block[allowed[block] & ~np.isin(block, head)]
        block = block[: count - have]
        taken.append(block)
        taken_scores.append(scores[block])
        have += len(block)
        start, size = start + size, size * 2
    return np.concatenate(taken).astype(np.int64), np.concatenate(taken_scores).astype(np.float32)
