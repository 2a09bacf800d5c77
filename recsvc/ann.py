"""Nearest-neighbour search over item vectors with FAISS; the one place recsvc touches FAISS.

Small catalogues get an exact `IndexFlatIP`; above `IndexConfig.exact_max_items` an
`IndexHNSWFlat` over inner product. Cosine similarity is inner product over L2-normalised
vectors, so every index here is an inner-product index and callers say which metric they mean.

Reading with `mmap=True` uses FAISS's `IO_FLAG_MMAP_IFC`, which maps the vectors of flat indexes
and both the vectors and the graph of HNSW indexes straight from the file (checked with FAISS
1.15), so replicas share the page cache. The older `IO_FLAG_MMAP` only maps IVF inverted lists
and copies flat and HNSW indexes into memory. A mapped index is read-only: FAISS aborts the
whole process (an assertion, not an exception) if vectors are added to it.

FAISS's own errors are turned into `ArtifactError` here, at this one boundary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import faiss
import numpy as np
import numpy.typing as npt

from recsvc.config import IndexConfig
from recsvc.errors import ArtifactError

Metric = Literal["ip", "cosine"]
IndexKind = Literal["flat", "hnsw"]

# How much float32 rounding may separate two computations of the same inner product.
_SCORE_TOLERANCE = 1e-5


def build_index(vectors: npt.NDArray[np.float32], *, metric: Metric, config: IndexConfig) -> faiss.Index:
    """An inner-product index over `vectors` (rows = dense item indices)."""
    data = _prepare(vectors, metric, "vectors")
    n, dim = data.shape
    index: faiss.Index
    if n <= config.exact_max_items:
        index = faiss.IndexFlatIP(dim)
    else:
        hnsw = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = config.hnsw_ef_construction
        hnsw.hnsw.efSearch = config.hnsw_ef_search
        index = hnsw
    index.add(data)
    return index


def index_kind(index: faiss.Index) -> IndexKind:
    """What kind of index this is, as recorded in manifests."""
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    raise ValueError(f"not an index recsvc builds: {type(index).__name__}")


def search(
    index: faiss.Index, queries: npt.NDArray[np.float32], k: int, *, metric: Metric
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The top `k` (scores, ids) per query row, best first.

    Where fewer than `k` results exist the id is -1 and the score -inf.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    data = _prepare(queries, metric, "queries")
    if data.shape[1] != index.d:
        raise ValueError(f"queries have {data.shape[1]} dimensions, the index {index.d}")
    scores, ids = index.search(data, k)
    found_scores: npt.NDArray[np.float32] = scores
    found_ids: npt.NDArray[np.int64] = ids
    found_scores[found_ids < 0] = -np.inf
    return found_scores, found_ids


def search_on_one_core() -> None:
    """Make this thread's index searches use one core. OpenMP's thread count is per thread, so
    other threads (and their searches) keep whatever they had."""
    faiss.omp_set_num_threads(1)


def measure_recall(
    index: faiss.Index,
    vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    *,
    k: int,
    metric: Metric,
) -> float:
    """Recall@k of `index` against exact search over `vectors` (the index's own vectors).

    A returned item counts as a hit when its exact score reaches the k-th best exact score, so
    ties at the cut-off (equal or duplicate vectors) do not count as misses.
    """
    _, found = search(index, queries, k, metric=metric)
    data = _prepare(vectors, metric, "vectors")
    asked = _prepare(queries, metric, "queries")
    exact_scores, _ = faiss.knn(asked, data, min(k, len(data)), metric=faiss.METRIC_INNER_PRODUCT)
    if exact_scores.size == 0:
        return 1.0
    cutoff = exact_scores[:, -1:]
    valid = found >= 0
    found_scores = np.einsum("qkd,qd->qk", data[np.where(valid, found, 0)], asked)
    hits = valid & (found_scores >= cutoff - _SCORE_TOLERANCE * np.maximum(1.0, np.abs(cutoff)))
    per_query = np.minimum(hits.sum(axis=1), exact_scores.shape[1])  # never more hits than exist
    return float(per_query.sum() / exact_scores.size)


def write_index(index: faiss.Index, path: Path) -> None:
    """Write an index with `faiss.write_index`."""
    try:
        faiss.write_index(index, str(path))
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: cannot write FAISS index: {exc}", path=str(path)) from exc


def read_index(path: Path, *, mmap: bool = True) -> faiss.Index:
    """Read an index; with `mmap` it is mapped from the file where FAISS can, and then read-only."""
    if mmap:
        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        except RuntimeError:
            pass  # an index type the mapped reader cannot take: read it into memory instead
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: cannot read FAISS index: {exc}", path=str(path)) from exc


def _prepare(matrix: npt.NDArray[np.float32], metric: Metric, name: str) -> npt.NDArray[np.float32]:
    """A C-contiguous float32 (n, d) matrix, L2-normalised row by row for cosine."""
    data = np.ascontiguousarray(matrix, dtype=np.float32)
    if data.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (n, d) matrix, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    if metric == "cosine":
        norms = np.linalg.norm(data, axis=1, keepdims=True)
        norms[norms == 0] = 1.0  # zero vectors stay zero
        data = (data / norms).astype(np.float32, copy=False)
    elif metric != "ip":
        raise ValueError(f"unknown metric {metric!r}; use 'ip' or 'cosine'")
    return data
