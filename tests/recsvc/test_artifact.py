"""Model artifacts on disk, and the id maps inside them: round trips, corruption, no pickle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from recsvc import ann
from recsvc.artifact import (
    ITEM_FACTORS,
    MANIFEST,
    REQUIRED_FILES,
    SCHEMA_VERSION,
    ModelArtifact,
    load_artifact,
    read_manifest,
    sparse_files,
    write_artifact,
)
from recsvc.config import IndexConfig
from recsvc.errors import ArtifactError
from recsvc.idmap import IdMap
from recsvc.schema import ITEM_SCHEMA


def make_artifact(
    *,
    users: int = 30,
    items: int = 20,
    factors: int = 8,
    seed: int = 0,
    catalog: bool = True,
    histories: bool = True,
) -> ModelArtifact:
    """A small random artifact; the catalog also lists one item the model has never seen."""
    rng = np.random.default_rng(seed)
    item_factors = rng.standard_normal((items, factors)).astype(np.float32)
    item_ids = [f"item-{i}" for i in range(items)]
    table = pa.Table.from_pylist(
        [
            {
                "item_id": item_id,
                "title": f"Title {n}",
                "category": "c",
                "price": 1.5 * n,
                "available": n % 2 == 0,
            }
            for n, item_id in enumerate([*item_ids, "item-new"])
        ],
        schema=ITEM_SCHEMA,
    )
    return ModelArtifact(
        user_ids=IdMap([f"user-{u}" for u in range(users)]),
        item_ids=IdMap(item_ids),
        user_factors=rng.standard_normal((users, factors)).astype(np.float32),
        item_factors=item_factors,
        popularity=rng.random(items).astype(np.float32),
        items=table if catalog else None,
        index=ann.build_index(item_factors, metric="ip", config=IndexConfig(exact_max_items=items // 2)),
        similar_index=ann.build_index(item_factors, metric="cosine", config=IndexConfig()),
        manifest={
            "parameters": {"model": "als", "factors": factors},
            "metrics": {"ndcg@10": np.float32(0.25)},
        },
        user_items=random_csr(rng, users, items) if histories else None,
        user_excluded=random_csr(rng, users, items, ones=True) if histories else None,
    )


def random_csr(rng: np.random.Generator, users: int, items: int, *, ones: bool = False) -> sp.csr_matrix:
    matrix = sp.random(users, items, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    if ones:
        matrix.data[:] = 1.0
    return matrix


def written(tmp_path: Path, artifact: ModelArtifact | None = None) -> Path:
    directory = tmp_path / "artifact"
    directory.mkdir()
    write_artifact(artifact or make_artifact(), directory)
    return directory


# --- IdMap ------------------------------------------------------------------------------------


def test_id_map_maps_both_ways_and_marks_unknown_ids() -> None:
    ids = IdMap(["b", "a", "c"])

    assert len(ids) == 3 and ids.ids.dtype.kind == "U"
    assert ids.index_of("a") == 1 and ids.index_of("zz") is None
    assert ids.id_at(2) == "c" and "c" in ids and "zz" not in ids
    np.testing.assert_array_equal(ids.indices_of(["c", "zz", "b"]), np.array([2, -1, 0], dtype=np.int64))
    np.testing.assert_array_equal(ids.indices_of(np.array(["a"])), [1])
    assert ids.indices_of([]).dtype == np.int64


def test_id_map_rejects_duplicates_non_strings_and_negative_indices() -> None:
    with pytest.raises(ValueError, match="'a'"):
        IdMap(["a", "b", "a"])
    with pytest.raises(TypeError):
        IdMap(["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        IdMap("abc")
    with pytest.raises(IndexError):
        IdMap(["a"]).id_at(-1)


def test_id_map_keeps_a_read_only_view_of_a_numpy_array() -> None:
    source = np.array(["x", "y"])
    ids = IdMap(source)

    assert np.shares_memory(ids.ids, source) and not ids.ids.flags.writeable
    source[0] = "z"  # the caller's array stays writable
    assert len(IdMap([])) == 0 and IdMap(np.array(["a"], dtype=object)).index_of("a") == 0


# --- artifacts --------------------------------------------------------------------------------


@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_preserves_everything_bit_for_bit(tmp_path: Path, mmap: bool) -> None:
    artifact = make_artifact()
    directory = tmp_path / "artifact"
    directory.mkdir()
    manifest = write_artifact(artifact, directory)

    loaded = load_artifact(directory, verify=True, mmap=mmap)

    for name in ("user_factors", "item_factors", "popularity"):
        want, got = getattr(artifact, name), getattr(loaded, name)
        assert got.dtype == want.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    for name in ("user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(loaded, name).ids, getattr(artifact, name).ids)
    assert loaded.item_ids.index_of("item-7") == 7 and loaded.user_ids.id_at(3) == "user-3"
    assert loaded.items is not None and loaded.items.equals(artifact.items)
    assert loaded.items.schema.equals(ITEM_SCHEMA)
    for name, metric in (("index", "ip"), ("similar_index", "cosine")):
        queries = artifact.user_factors if metric == "ip" else artifact.item_factors
        want_result = ann.search(getattr(artifact, name), queries, 5, metric=metric)  # type: ignore[arg-type]
        got_result = ann.search(getattr(loaded, name), queries, 5, metric=metric)  # type: ignore[arg-type]
        for got, want in zip(got_result, want_result, strict=True):
            np.testing.assert_array_equal(got, want)
    assert ann.index_kind(loaded.index) == "hnsw" and ann.index_kind(loaded.similar_index) == "flat"
    assert loaded.manifest == manifest == read_manifest(directory)
    for name in ("user_items", "user_excluded"):
        want, got = getattr(artifact, name), getattr(loaded, name)
        assert isinstance(got, sp.csr_matrix) and got.dtype == np.float32 and got.shape == (30, 20)
        assert got.has_canonical_format and (got != want).nnz == 0
        np.testing.assert_array_equal(got.toarray(), want.toarray())


def test_histories_are_mapped_read_only_without_a_copy(tmp_path: Path) -> None:
    directory = written(tmp_path)

    loaded = load_artifact(directory, mmap=True)

    assert loaded.user_items is not None
    for part in ("indptr", "indices", "data"):
        array = getattr(loaded.user_items, part)
        assert not array.flags.writeable
        while not isinstance(array, np.memmap):  # scipy keeps views of the mapped arrays
            assert array.base is not None, f"{part} was copied"
            array = array.base
    assert loaded.user_items.indices.dtype == np.int32  # what scipy keeps without converting
    row = loaded.user_items[3]  # reading rows works on the mapped, read-only arrays
    assert row.nnz == loaded.user_items.indptr[4] - loaded.user_items.indptr[3]


def test_histories_are_written_canonical(tmp_path: Path) -> None:
    artifact = make_artifact()
    messy = sp.csr_matrix(
        (np.array([1.0, 2.0, 3.0], dtype=np.float32), np.array([5, 2, 5]), np.array([0, 3, *[3] * 29])),
        shape=(30, 20),
    )
    assert not messy.has_canonical_format
    directory = written(tmp_path, ModelArtifact(**{**vars(artifact), "user_items": messy}))

    loaded = load_artifact(directory, verify=True).user_items
    assert loaded is not None and loaded.has_canonical_format
    assert loaded[0].indices.tolist() == [2, 5] and loaded[0].data.tolist() == [2.0, 4.0]


def test_an_artifact_without_histories_loads_with_none(tmp_path: Path) -> None:
    directory = written(tmp_path, make_artifact(histories=False))

    loaded = load_artifact(directory, verify=True)

    assert loaded.user_items is None and loaded.user_excluded is None
    assert not list(directory.glob("user_items.*"))


def test_a_history_listed_in_part_is_rejected(tmp_path: Path) -> None:
    directory = written(tmp_path)
    manifest = json.loads((directory / MANIFEST).read_text())
    del manifest["files"][sparse_files("user_excluded")[1]]
    (directory / MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(ArtifactError, match=r"only part of user_excluded"):
        load_artifact(directory)


def test_a_corrupt_history_is_caught(tmp_path: Path) -> None:
    directory = written(tmp_path)
    indices_file = directory / sparse_files("user_items")[1]
    indices = np.load(indices_file)
    indices[0] = 99  # out of range; same size, so only a full check sees it
    np.save(indices_file, indices, allow_pickle=False)

    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["files"][indices_file.name]["sha256"] = hashlib.sha256(indices_file.read_bytes()).hexdigest()
    (directory / MANIFEST).write_text(json.dumps(manifest))  # as a buggy writer would leave it

    load_artifact(directory)  # mapping does not read every entry
    with pytest.raises(ArtifactError, match="user_items is not a valid CSR matrix: a column index"):
        load_artifact(directory, verify=True)


def test_write_refuses_a_history_of_the_wrong_shape(tmp_path: Path) -> None:
    artifact = make_artifact()
    wrong = ModelArtifact(**{**vars(artifact), "user_excluded": sp.csr_matrix((30, 21), dtype=np.float32)})

    with pytest.raises(ArtifactError, match=r"user_excluded is csr_matrix float32 \(30, 21\)"):
        write_artifact(wrong, tmp_path)


def test_manifest_records_sections_shape_schema_and_checksums(tmp_path: Path) -> None:
    directory = written(tmp_path)
    manifest = json.loads((directory / MANIFEST).read_text())

    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["created_at"].endswith("+00:00")
    assert manifest["shape"] == {"users": 30, "items": 20, "factors": 8}
    assert manifest["parameters"] == {"model": "als", "factors": 8}
    assert manifest["metrics"]["ndcg@10"] == pytest.approx(0.25)
    histories = {*sparse_files("user_items"), *sparse_files("user_excluded")}
    assert set(manifest["files"]) == {*REQUIRED_FILES, "items.parquet", *histories}
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (directory / name).stat().st_size and len(entry["sha256"]) == 64
    assert sorted(p.name for p in directory.iterdir()) == sorted([*manifest["files"], MANIFEST])


def test_an_artifact_without_catalog_loads_without_one(tmp_path: Path) -> None:
    directory = written(tmp_path, make_artifact(catalog=False))

    assert not (directory / "items.parquet").exists()
    assert load_artifact(directory).items is None


def test_files_hold_no_pickle(tmp_path: Path) -> None:
    directory = written(tmp_path)

    for path in directory.glob("*.npy"):
        array = np.load(path, allow_pickle=False)  # raises for object arrays
        assert array.dtype.kind in "fUi"
    assert not list(directory.glob("*.pkl")) and not list(directory.glob("*.npz"))


def test_verify_catches_one_corrupted_byte(tmp_path: Path) -> None:
    directory = written(tmp_path)
    path = directory / ITEM_FACTORS
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))

    load_artifact(directory)  # same size: only the checksum can tell
    with pytest.raises(ArtifactError, match=f"{ITEM_FACTORS}: checksum mismatch") as caught:
        load_artifact(directory, verify=True)
    assert caught.value.fields["path"] == str(path)


def test_a_truncated_file_is_caught_without_verify(tmp_path: Path) -> None:
    directory = written(tmp_path)
    path = directory / "index.faiss"
    path.write_bytes(path.read_bytes()[:-10])

    with pytest.raises(ArtifactError, match=r"index\.faiss: .* bytes"):
        load_artifact(directory)


@pytest.mark.parametrize("name", [*REQUIRED_FILES, "items.parquet", MANIFEST])
def test_a_missing_file_raises_artifact_error_naming_it(tmp_path: Path, name: str) -> None:
    directory = written(tmp_path)
    (directory / name).unlink()

    with pytest.raises(ArtifactError, match=f"{name}: missing file") as caught:
        load_artifact(directory)
    assert caught.value.fields["path"] == str(directory / name)


@pytest.mark.parametrize("version", [2, 0, "1", True, None])
def test_an_unknown_schema_version_raises_artifact_error_naming_the_manifest(
    tmp_path: Path, version: Any
) -> None:
    directory = written(tmp_path)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["schema_version"] = version
    (directory / MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(ArtifactError, match=f"{MANIFEST}: unknown schema_version"):
        load_artifact(directory)


def test_duplicate_ids_in_a_file_raise_artifact_error_naming_it(tmp_path: Path) -> None:
    directory = written(tmp_path)
    ids = np.load(directory / "user_ids.npy")
    ids[1] = ids[0]
    np.save(directory / "user_ids.npy", ids, allow_pickle=False)  # same size: only verify sees it

    with pytest.raises(ArtifactError, match=r"user_ids\.npy: duplicate ids"):
        load_artifact(directory)


def test_a_manifest_that_does_not_match_the_files_is_rejected(tmp_path: Path) -> None:
    directory = written(tmp_path)
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["shape"]["users"] = 31
    (directory / MANIFEST).write_text(json.dumps(manifest))

    with pytest.raises(ArtifactError, match="shape"):
        load_artifact(directory)
    (directory / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        read_manifest(directory)


def test_write_refuses_a_non_empty_or_missing_directory(tmp_path: Path) -> None:
    directory = written(tmp_path)

    with pytest.raises(ArtifactError, match="not empty"):
        write_artifact(make_artifact(), directory)
    with pytest.raises(ArtifactError, match="not a directory"):
        write_artifact(make_artifact(), tmp_path / "absent")


def test_write_refuses_an_inconsistent_artifact(tmp_path: Path) -> None:
    artifact = make_artifact()
    bad = ModelArtifact(**{**vars(artifact), "user_factors": artifact.user_factors[:-1]})
    wrong_dtype = ModelArtifact(**{**vars(artifact), "popularity": artifact.popularity.astype(np.float64)})

    for candidate, problem in ((bad, "user_factors"), (wrong_dtype, "popularity is float64")):
        with pytest.raises(ArtifactError, match=problem):
            write_artifact(candidate, tmp_path)
    assert not list(tmp_path.iterdir())
