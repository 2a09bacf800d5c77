"""One immutable model version on disk: factors, id maps, popularity, catalog, indexes, manifest.

Layout of a version directory (schema version 1), all free of pickle:

    user_factors.npy  item_factors.npy   float32 (n, d)      np.save, allow_pickle=False
    user_ids.npy      item_ids.npy       numpy unicode (n,)  np.save, allow_pickle=False
    popularity.npy                       float32 (n_items,)
    items.parquet                        ITEM_SCHEMA catalog, only when the artifact has one
    user_items.{indptr,indices,data}.npy     optional CSR (users x items), float32 confidences of
                                             all of a user's training events (train and held out)
    user_excluded.{indptr,indices,data}.npy  optional CSR, 1.0 where the user had an event of a
                                             type excluded from recommendations (purchase, dismiss)
    index.faiss       similar.faiss      faiss.write_index (inner product; cosine)
    manifest.json                        written last: training's sections plus schema_version,
                                         created_at, shape and {file: {sha256, bytes}}

The two CSR matrices are what serving folds a user's history in from and filters with; older
artifacts without them still load (the fields are None). Their index arrays are int32 whenever
the values fit, which is what scipy would convert them to anyway, so mapping them stays zero-copy.

Each array is its own `.npy` file rather than one `.npz`: an `.npz` is a zip and cannot be
memory-mapped, while `np.load(path, mmap_mode="r")` maps an `.npy` directly, so serving replicas
share the factors through the page cache instead of each holding a copy. With `mmap=True` (the
default) `load_artifact` maps the factor matrices, the CSR arrays and both FAISS indexes; all of
them are then read-only. Sizes (and the CSR arrays' lengths) are checked on every load; the
SHA-256 checksums and the CSR index bounds and order only with `verify=True`.

Every file is fsynced before the manifest is written, so a directory with a manifest is
complete even after a power cut; the registry then publishes it with one rename.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from recsvc import ann
from recsvc.errors import ArtifactError
from recsvc.idmap import IdMap

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
USER_FACTORS = "user_factors.npy"
ITEM_FACTORS = "item_factors.npy"
USER_IDS = "user_ids.npy"
ITEM_IDS = "item_ids.npy"
POPULARITY = "popularity.npy"
ITEMS = "items.parquet"
INDEX = "index.faiss"
SIMILAR_INDEX = "similar.faiss"
REQUIRED_FILES = (USER_FACTORS, ITEM_FACTORS, USER_IDS, ITEM_IDS, POPULARITY, INDEX, SIMILAR_INDEX)
USER_ITEMS = "user_items"
USER_EXCLUDED = "user_excluded"
SPARSE_MATRICES = (USER_ITEMS, USER_EXCLUDED)
SPARSE_PARTS = ("indptr", "indices", "data")
_INT32_MAX = np.iinfo(np.int32).max


def sparse_files(name: str) -> tuple[str, ...]:
    """The three `.npy` files one CSR matrix of an artifact is stored in."""
    return tuple(f"{name}.{part}.npy" for part in SPARSE_PARTS)


@dataclass(frozen=True, eq=False)
class ModelArtifact:
    """Everything one model version serves from; rows of the factors follow the id maps."""

    user_ids: IdMap
    item_ids: IdMap
    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]
    popularity: npt.NDArray[np.float32]
    items: pa.Table | None
    index: faiss.Index  # inner product over item_factors: recommendations
    similar_index: faiss.Index  # cosine over item_factors: similar items
    manifest: dict[str, Any] = field(default_factory=dict)
    user_items: sp.csr_matrix | None = None  # users x items, summed confidences of all events
    user_excluded: sp.csr_matrix | None = None  # users x items, 1.0: never recommend to this user


def write_artifact(
    artifact: ModelArtifact, directory: Path, *, created_at: datetime | None = None
) -> dict[str, Any]:
    """Write `artifact` into an existing empty directory; returns the manifest written."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: not a directory", path=str(directory))
    if any(directory.iterdir()):
        raise ArtifactError(f"{directory}: not empty; artifacts are never overwritten", path=str(directory))
    shape = _check_consistent(artifact, directory)

    arrays = {
        USER_FACTORS: artifact.user_factors,
        ITEM_FACTORS: artifact.item_factors,
        USER_IDS: artifact.user_ids.ids,
        ITEM_IDS: artifact.item_ids.ids,
        POPULARITY: artifact.popularity,
    }
    for name, matrix in _sparse_matrices(artifact).items():
        arrays.update(zip(sparse_files(name), _csr_arrays(matrix), strict=True))
    for name, array in arrays.items():
        with open(directory / name, "wb") as out:
            np.save(out, array, allow_pickle=False)
    if artifact.items is not None:
        pq.write_table(artifact.items, directory / ITEMS)
    ann.write_index(artifact.index, directory / INDEX)
    ann.write_index(artifact.similar_index, directory / SIMILAR_INDEX)

    names = [*arrays, *([ITEMS] if artifact.items is not None else []), INDEX, SIMILAR_INDEX]
    manifest = {
        **artifact.manifest,
        "schema_version": SCHEMA_VERSION,
        "created_at": (created_at or datetime.now(UTC)).astimezone(UTC).isoformat(),
        "shape": shape,
        "files": {name: _checksum(directory / name, sync=True) for name in names},
    }
    write_json_atomically(directory / MANIFEST, manifest)
    return read_manifest(directory)  # as stored: numpy scalars in the sections become plain JSON


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of an artifact directory; ArtifactError if absent, malformed or too new."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{path}: missing file", path=str(path)) from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable manifest: {exc}", path=str(path)) from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: manifest is not a JSON object", path=str(path))
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ArtifactError(
            f"{path}: unknown schema_version {version!r} (this code reads {SCHEMA_VERSION})",
            path=str(path),
        )
    return manifest


def load_artifact(directory: Path, *, verify: bool = False, mmap: bool = True) -> ModelArtifact:
    """Read an artifact; `verify` recomputes every checksum, `mmap` maps factors and indexes."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    files = _check_files(directory, manifest, verify=verify)
    mode: Literal["r"] | None = "r" if mmap else None
    shape = manifest.get("shape") or {}
    sparse = {
        name: _load_csr(directory, name, files, shape, mmap_mode=mode, full_check=verify)
        for name in SPARSE_MATRICES
    }
    artifact = ModelArtifact(
        user_ids=_load_ids(directory / USER_IDS),
        item_ids=_load_ids(directory / ITEM_IDS),
        user_factors=_load_array(directory / USER_FACTORS, "f", 2, mmap_mode=mode),
        item_factors=_load_array(directory / ITEM_FACTORS, "f", 2, mmap_mode=mode),
        popularity=_load_array(directory / POPULARITY, "f", 1),
        items=_load_table(directory / ITEMS) if ITEMS in files else None,
        index=ann.read_index(directory / INDEX, mmap=mmap),
        similar_index=ann.read_index(directory / SIMILAR_INDEX, mmap=mmap),
        manifest=manifest,
        user_items=sparse[USER_ITEMS],
        user_excluded=sparse[USER_EXCLUDED],
    )
    if _check_consistent(artifact, directory) != manifest.get("shape"):
        raise ArtifactError(f"{directory / MANIFEST}: shape does not match the files", path=str(directory))
    return artifact


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    """Replace `path` with `document` so readers see the old file or the new one, never a mix.

    Callers that may race must serialise on a lock: the temporary file name is fixed.
    """
    try:
        text = json.dumps(document, indent=2, sort_keys=True, default=_json_value)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot write as JSON: {exc}", path=str(path)) from exc
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        out.write(text + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make the entries of a directory (new, renamed or removed files) durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _json_value(value: object) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _checksum(path: Path, *, sync: bool = False) -> dict[str, Any]:
    """SHA-256 and size of a file, read in chunks (artifacts may be gigabytes)."""
    with open(path, "rb") as source:
        digest = hashlib.file_digest(source, "sha256").hexdigest()
        if sync:
            os.fsync(source.fileno())
        return {"sha256": digest, "bytes": os.fstat(source.fileno()).st_size}


def _check_files(directory: Path, manifest: dict[str, Any], *, verify: bool) -> dict[str, Any]:
    """The manifest's files, each present with its recorded size (and checksum with `verify`)."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArtifactError(f"{directory / MANIFEST}: no 'files' section", path=str(directory / MANIFEST))
    for name in REQUIRED_FILES:
        if name not in files:
            raise ArtifactError(f"{directory / MANIFEST}: does not list {name}", path=str(directory / name))
    for name, expected in files.items():
        path = directory / name
        if Path(name).name != name or not isinstance(expected, dict):
            raise ArtifactError(f"{directory / MANIFEST}: bad entry for {name!r}", path=str(path))
        if not path.is_file():
            raise ArtifactError(f"{path}: missing file", path=str(path))
        size = path.stat().st_size
        if size != expected.get("bytes"):
            recorded = expected.get("bytes")
            raise ArtifactError(f"{path}: {size} bytes, the manifest says {recorded}", path=str(path))
        if verify and _checksum(path)["sha256"] != expected.get("sha256"):
            raise ArtifactError(f"{path}: checksum mismatch", path=str(path))
    return files


def _load_array(
    path: Path, kind: Literal["U", "f", "i"], ndim: int, *, mmap_mode: Literal["r"] | None = None
) -> npt.NDArray[Any]:
    try:
        array: npt.NDArray[Any] = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable array: {exc}", path=str(path)) from exc
    wanted = {"U": "a unicode", "f": "a float32", "i": "an int32 or int64"}[kind]
    bad_int = kind == "i" and array.dtype not in (np.int32, np.int64)
    if (
        array.ndim != ndim
        or array.dtype.kind != kind
        or (kind == "f" and array.dtype != np.float32)
        or bad_int
    ):
        raise ArtifactError(
            f"{path}: expected {wanted} {ndim}-d array, got {array.dtype} {array.shape}", path=str(path)
        )
    return array


def _sparse_matrices(artifact: ModelArtifact) -> dict[str, sp.csr_matrix]:
    matrices = {USER_ITEMS: artifact.user_items, USER_EXCLUDED: artifact.user_excluded}
    return {name: matrix for name, matrix in matrices.items() if matrix is not None}


def _csr_arrays(matrix: sp.csr_matrix) -> tuple[npt.NDArray[Any], ...]:
    """indptr, indices, data of `matrix` made canonical, with int32 indices where they fit."""
    if not matrix.has_canonical_format:  # sorted, no duplicates: what loading relies on
        matrix = matrix.copy()
        matrix.sum_duplicates()
    fits = matrix.nnz <= _INT32_MAX and matrix.shape[1] <= _INT32_MAX
    index_dtype = np.int32 if fits else np.int64
    return (
        np.asarray(matrix.indptr, dtype=index_dtype),
        np.asarray(matrix.indices, dtype=index_dtype),
        np.asarray(matrix.data, dtype=np.float32),
    )


def _load_csr(
    directory: Path,
    name: str,
    files: dict[str, Any],
    shape: dict[str, Any],
    *,
    mmap_mode: Literal["r"] | None,
    full_check: bool,
) -> sp.csr_matrix | None:
    """One optional CSR matrix from its three `.npy` files: None when absent, an error if partial."""
    names = sparse_files(name)
    present = [part for part in names if part in files]
    if not present:
        return None
    if len(present) != len(names):
        missing = sorted(set(names) - set(present))
        raise ArtifactError(
            f"{directory / MANIFEST}: lists only part of {name} (missing {missing})", path=str(directory)
        )
    indptr, indices = (_load_array(directory / part, "i", 1, mmap_mode=mmap_mode) for part in names[:2])
    data = _load_array(directory / names[2], "f", 1, mmap_mode=mmap_mode)
    path = directory / names[0]
    rows, columns = shape.get("users"), shape.get("items")
    if not isinstance(rows, int) or not isinstance(columns, int):
        raise ArtifactError(f"{directory / MANIFEST}: no shape for {name}", path=str(directory / MANIFEST))
    problem = _csr_problem(indptr, indices, data, (rows, columns), full_check=full_check)
    if problem:
        raise ArtifactError(f"{path}: {name} is not a valid CSR matrix: {problem}", path=str(path))
    return sp.csr_matrix((data, indices, indptr), shape=(rows, columns), copy=False)


def _csr_problem(
    indptr: npt.NDArray[Any],
    indices: npt.NDArray[Any],
    data: npt.NDArray[Any],
    shape: tuple[int, int],
    *,
    full_check: bool,
) -> str | None:
    """Why these arrays are not a canonical CSR matrix of `shape`, or None.

    The cheap checks (lengths) always run; the ones that read every entry (bounds, order) only
    with `full_check`, so mapping a large artifact does not page all of it in.
    """
    if len(indptr) != shape[0] + 1:
        return f"{len(indptr)} indptr entries for the shape's {shape[0]} rows"
    if indptr.dtype != indices.dtype:
        return f"indptr is {indptr.dtype} but indices are {indices.dtype}"
    if len(indices) != len(data) or (len(indptr) and (indptr[0] != 0 or indptr[-1] != len(indices))):
        return f"{len(indices)} indices and {len(data)} values do not match indptr"
    if not full_check or not len(indices):
        return None
    if np.any(np.diff(indptr) < 0):
        return "indptr decreases"
    if indices.min() < 0 or indices.max() >= shape[1]:
        return f"a column index lies outside 0..{shape[1] - 1}"
    row_starts = np.zeros(len(indices), dtype=bool)
    row_starts[indptr[:-1][np.diff(indptr) > 0]] = True
    if np.any((np.diff(indices) <= 0) & ~row_starts[1:]):
        return "column indices are not strictly increasing within a row"
    return None


def _load_ids(path: Path) -> IdMap:
    try:
        return IdMap(_load_array(path, "U", 1))
    except ValueError as exc:  # duplicate ids
        raise ArtifactError(f"{path}: {exc}", path=str(path)) from exc


def _load_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ArtifactError(f"{path}: unreadable catalog: {exc}", path=str(path)) from exc


def _check_consistent(artifact: ModelArtifact, directory: Path) -> dict[str, int]:
    """The artifact's shape {users, items, factors}; ArtifactError if its parts disagree."""
    users, items = len(artifact.user_ids), len(artifact.item_ids)
    factors = artifact.item_factors.shape[1] if artifact.item_factors.ndim == 2 else -1
    expected = {
        "user_factors": ((users, factors), artifact.user_factors),
        "item_factors": ((items, factors), artifact.item_factors),
        "popularity": ((items,), artifact.popularity),
    }
    problems = [
        f"{name} is {array.dtype} {array.shape}, expected float32 {shape}"
        for name, (shape, array) in expected.items()
        if array.shape != shape or array.dtype != np.float32
    ]
    for name, index in (("index", artifact.index), ("similar_index", artifact.similar_index)):
        if index.ntotal != items or index.d != factors:
            problems.append(f"{name} holds {index.ntotal} x {index.d}, expected {items} x {factors}")
    if artifact.items is not None and "item_id" not in artifact.items.column_names:
        problems.append("the items table has no item_id column")
    for name, matrix in _sparse_matrices(artifact).items():
        is_csr = sp.issparse(matrix) and matrix.format == "csr"
        if not is_csr or matrix.shape != (users, items) or matrix.dtype != np.float32:
            problems.append(
                f"{name} is {type(matrix).__name__} {matrix.dtype} {matrix.shape}, "
                f"expected float32 CSR {(users, items)}"
            )
    if problems:
        detail = "; ".join(problems)
        raise ArtifactError(f"{directory}: inconsistent artifact: {detail}", path=str(directory))
    return {"users": users, "items": items, "factors": factors}
