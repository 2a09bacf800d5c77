"""FAISS indexes: exact below the configured size, HNSW above it, on vectors with known answers."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from recsvc import ann
from recsvc.config import IndexConfig
from recsvc.errors import ArtifactError


def random_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_small_catalogues_get_an_exact_index_and_large_ones_hnsw() -> None:
    config = IndexConfig(exact_max_items=100, hnsw_m=8, hnsw_ef_construction=40, hnsw_ef_search=24)
    flat = ann.build_index(random_vectors(100, 8), metric="ip", config=config)
    hnsw = ann.build_index(random_vectors(101, 8), metric="ip", config=config)

    assert ann.index_kind(flat) == "flat" and isinstance(flat, faiss.IndexFlatIP)
    assert ann.index_kind(hnsw) == "hnsw" and isinstance(hnsw, faiss.IndexHNSWFlat)
    assert hnsw.metric_type == faiss.METRIC_INNER_PRODUCT
    assert (hnsw.hnsw.efConstruction, hnsw.hnsw.efSearch) == (40, 24)
    assert flat.ntotal == 100 and hnsw.ntotal == 101


def test_index_kind_rejects_indexes_recsvc_does_not_build() -> None:
    with pytest.raises(ValueError, match="IndexLSH"):
        ann.index_kind(faiss.IndexLSH(8, 16))


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_exact_index_has_recall_one_even_with_tied_vectors(metric: ann.Metric) -> None:
    vectors = random_vectors(500, 16)
    vectors[250:] = vectors[:250]  # every vector twice: ties at every rank
    index = ann.build_index(vectors, metric=metric, config=IndexConfig())

    assert ann.index_kind(index) == "flat"
    assert ann.measure_recall(index, vectors, random_vectors(50, 16, seed=1), k=10, metric=metric) == 1.0


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_hnsw_finds_most_true_neighbours_of_20k_random_vectors(metric: ann.Metric) -> None:
    config = IndexConfig(exact_max_items=1_000)  # the default HNSW parameters, forced on
    vectors = random_vectors(20_000, 32)
    index = ann.build_index(vectors, metric=metric, config=config)

    assert ann.index_kind(index) == "hnsw"
    assert ann.measure_recall(index, vectors, random_vectors(200, 32, seed=1), k=10, metric=metric) > 0.9


def test_a_missed_neighbour_lowers_recall() -> None:
    vectors = random_vectors(50, 4)
    index = ann.build_index(vectors[:25], metric="ip", config=IndexConfig())  # half the items unseen

    assert ann.measure_recall(index, vectors, random_vectors(20, 4, seed=1), k=10, metric="ip") < 0.9


@pytest.mark.parametrize("exact_max_items", [50_000, 100])
def test_cosine_nearest_neighbour_is_the_item_itself_or_its_planted_duplicate(exact_max_items: int) -> None:
    vectors = random_vectors(2_000, 16)
    vectors[1] = 5.0 * vectors[0]  # same direction, other length: cosine 1, inner product not
    vectors[2] = vectors[0] + 0.01 * random_vectors(1, 16, seed=3)[0]  # a near duplicate
    vectors[3] = 0.0  # an item with no signal
    config = IndexConfig(exact_max_items=exact_max_items)
    index = ann.build_index(vectors, metric="cosine", config=config)

    scores, ids = ann.search(index, vectors[[0, 2, 10]], 3, metric="cosine")

    assert set(ids[0]) == {0, 1, 2} and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    assert set(ids[1][:1]) <= {0, 1, 2}
    assert ids[2][0] == 10 and scores[2, 0] == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(scores).all()


def test_cosine_normalises_a_copy_and_keeps_zero_vectors_zero() -> None:
    vectors = random_vectors(10, 4)
    vectors[3] = 0.0
    original = vectors.copy()
    index = ann.build_index(vectors, metric="cosine", config=IndexConfig())

    np.testing.assert_array_equal(vectors, original)
    np.testing.assert_allclose(
        np.linalg.norm(index.reconstruct_n(0, 10), axis=1), [1] * 3 + [0] + [1] * 6, atol=1e-6
    )
    scores, _ = ann.search(index, vectors[3:4], 10, metric="cosine")
    np.testing.assert_array_equal(scores, np.zeros((1, 10), dtype=np.float32))


def test_inner_product_ranks_by_dot_product() -> None:
    vectors = np.array([[1, 0], [0, 1], [3, 0]], dtype=np.float32)
    scores, ids = ann.search(
        ann.build_index(vectors, metric="ip", config=IndexConfig()), vectors[:1], 3, metric="ip"
    )

    np.testing.assert_array_equal(ids, [[2, 0, 1]])
    np.testing.assert_array_equal(scores, [[3.0, 1.0, 0.0]])


@pytest.mark.parametrize("exact_max_items", [50_000, 10])
def test_search_pads_missing_results_with_minus_one(exact_max_items: int) -> None:
    vectors = random_vectors(20, 4)
    index = ann.build_index(vectors, metric="ip", config=IndexConfig(exact_max_items=exact_max_items))

    scores, ids = ann.search(index, vectors[:2], 25, metric="ip")

    assert ids.shape == scores.shape == (2, 25) and ids.dtype == np.int64
    assert (ids[:, 20:] == -1).all() and np.isneginf(scores[:, 20:]).all()
    assert sorted(ids[0, :20]) == list(range(20))


def test_search_and_build_reject_bad_input() -> None:
    index = ann.build_index(random_vectors(5, 4), metric="ip", config=IndexConfig())
    with pytest.raises(ValueError, match="k must be"):
        ann.search(index, random_vectors(1, 4), 0, metric="ip")
    with pytest.raises(ValueError, match="dimensions"):
        ann.search(index, random_vectors(1, 3), 1, metric="ip")
    with pytest.raises(ValueError, match="2-d"):
        ann.build_index(random_vectors(1, 4)[0], metric="ip", config=IndexConfig())
    with pytest.raises(ValueError, match="NaN"):
        ann.build_index(np.full((2, 4), np.nan, dtype=np.float32), metric="ip", config=IndexConfig())


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("exact_max_items", [50_000, 100])
def test_indexes_read_back_give_identical_results(tmp_path: Path, mmap: bool, exact_max_items: int) -> None:
    vectors = random_vectors(300, 8)
    config = IndexConfig(exact_max_items=exact_max_items, hnsw_ef_search=33)
    index = ann.build_index(vectors, metric="ip", config=config)
    ann.write_index(index, tmp_path / "index.faiss")

    loaded = ann.read_index(tmp_path / "index.faiss", mmap=mmap)

    assert ann.index_kind(loaded) == ann.index_kind(index)
    if isinstance(loaded, faiss.IndexHNSWFlat):
        assert loaded.hnsw.efSearch == 33
    for got, want in zip(
        ann.search(loaded, vectors, 10, metric="ip"), ann.search(index, vectors, 10, metric="ip"), strict=True
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("content", [None, b"", b"not an index", b"IxFI" + b"\0" * 40])
def test_unreadable_index_files_raise_artifact_error_naming_the_file(
    tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "index.faiss"
    if content is not None:
        path.write_bytes(content)

    for mmap in (True, False):
        with pytest.raises(ArtifactError, match=r"index\.faiss") as caught:
            ann.read_index(path, mmap=mmap)
        assert caught.value.fields["path"] == str(path)
