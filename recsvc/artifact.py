"""One immutable model version on disk: factors, id maps, popularity, catalog, indexes, manifest.

Layout of a version directory (schema version 1), all free of pickle:

    user_factors.npy  item_factors.npy   float32 (n, d)      np.save, allow_pickle=False
    user_ids.npy      item_ids.npy       numpy unicode (n,)  np.save, allow_pickle=False
    popularity.npy                       float32 (n_items,)
    items.parquet                        ITEM_SCHEMA catalog, only when the artifact has one
    index.faiss       similar.faiss      faiss.write_index (inner product; cosine)
    manifest.json                        written last: training's sections plus schema_version,
                                         created_at, shape and {file: {sha256, bytes}}

Each array is its own `.npy` file rather than one `.npz`: an `.npz` is a zip and cannot be
memory-mapped, while `np.load(path, mmap_mode="r")` maps an `.npy` directly, so serving replicas
share the factors through the page cache instead of each holding a copy. With `mmap=True` (the
default) `load_artifact` maps the factor matrices and both FAISS indexes; all of them are then
read-only. Sizes are checked on every load; the SHA-256 checksums only with `verify=True`.

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
    path: Path, kind: Literal["U", "f"], ndim: int, *, mmap_mode: Literal["r"] | None = None
) -> npt.NDArray[Any]:
    try:
        array: npt.NDArray[Any] = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable array: {exc}", path=str(path)) from exc
    wanted = "a unicode" if kind == "U" else "a float32"
    if array.ndim != ndim or array.dtype.kind != kind or (kind == "f" and array.dtype != np.float32):
        raise ArtifactError(
            f"{path}: expected {wanted} {ndim}-d array, got {array.dtype} {array.shape}", path=str(path)
        )
    return array


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
    if problems:
        detail = "; ".join(problems)
        raise ArtifactError(f"{directory}: inconsistent artifact: {detail}", path=str(directory))
    return {"users": users, "items": items, "factors": factors}
