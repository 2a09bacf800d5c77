"""The folder of model versions and which one is current.

    root/
      v000001/ v000002/ ...    immutable artifacts, numbered in publish order
      .staging-<uuid>/         an artifact being written (or left by a crashed writer)
      registry.json            {"current": "v000002", "history": ["v000001"]}
      registry.lock            flock'ed around every change of registry.json

A version appears only by renaming a complete staging directory, so a reader never sees half a
version. `registry.json` is replaced whole (temporary file, then `os.replace`), so `current()`
is one small file read that servers can poll; changes to it take an exclusive `flock` on
`registry.lock`, so concurrent promoters in threads or processes never lose an update. The
root must be on a local filesystem (flock and rename atomicity).

`history` is a stack of previously current versions: promote pushes the outgoing version,
rollback pops it back. Promote and rollback make a version current only after loading it as a
server would, so a broken version directory (empty, half copied, a corrupt manifest) is never
made current; it is still listed, marked with why it cannot be served.

Reading never creates anything: the root folder is made by the first `publish`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from recsvc.artifact import (
    MANIFEST,
    ModelArtifact,
    fsync_directory,
    load_artifact,
    read_manifest,
    write_artifact,
    write_json_atomically,
)
from recsvc.errors import ArtifactError, NotFoundError, RegistryError

STATE = "registry.json"
LOCK = "registry.lock"
STAGING_PREFIX = ".staging-"
STALE_STAGING = timedelta(hours=1)
_VERSION = re.compile(r"v(\d{6,})")
_MAX_PUBLISH_ATTEMPTS = 100

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class VersionInfo:
    """One published version, as listed by `Registry.versions`."""

    version: str
    created_at: datetime | None  # None when the manifest cannot be read
    current: bool
    path: Path
    manifest: dict[str, Any]  # empty when the manifest cannot be read
    error: str | None = None  # why the version cannot be served, as far as its manifest tells


class Registry:
    """Publishes, lists, promotes and rolls back model versions under one root folder."""

    def __init__(self, root: Path, *, clock: Clock | None = None) -> None:
        self.root = Path(root)
        self._clock = clock or (lambda: datetime.now(UTC))

    def publish(self, write: Callable[[Path], dict[str, Any]] | ModelArtifact) -> str:
        """Write a new version aside and make it visible with one rename; current is unchanged.

        `write` is an artifact, or a function that writes one into the (empty) directory it is
        given. If it fails, nothing is published and its partial output is removed.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_staging()
        staging = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            if isinstance(write, ModelArtifact):
                write_artifact(write, staging, created_at=self._clock())
            else:
                write(staging)
            read_manifest(staging)  # a writer that wrote no valid artifact publishes nothing
            version = self._rename_to_next_version(staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_directory(self.root)
        return version

    def versions(self) -> list[VersionInfo]:
        """Every published version, oldest first; a broken one is listed with its `error`.

        Only manifests are read, so a version whose manifest is sound but whose files are not is
        found out by `promote` (which loads it), not here. No root folder means no versions.
        """
        current = self.current()
        return [self._info(name, current) for name in self._version_names()]

    def current(self) -> str | None:
        """The version servers should serve, or None before the first promotion."""
        current: str | None = self._read_state()["current"]
        return current

    def promote(self, version: str) -> None:
        """Make `version` current; promoting the current version again changes nothing.

        The version is loaded first: an unknown one is a `NotFoundError`, one that does not
        load (incomplete, corrupt) a `RegistryError`, and neither changes anything.
        """
        self.promote_if(version, lambda _current: True)

    def promote_if(self, version: str, better: Callable[[str | None], bool]) -> bool:
        """Make `version` current if `better(current)` says so; returns whether it is current.

        `better` is called with the current version (None before the first promotion) while the
        registry is locked, so no other promotion can slip in between its decision and this
        one's: concurrent "promote if better" runs each compare against the true current model.
        `better` is not called when `version` is current already. Checked as in `promote`.
        """
        self._require_servable(version, "promote")  # outside the lock: versions are immutable
        with self._locked():
            state = self._read_state()
            if state["current"] == version:
                return True
            if not better(state["current"]):
                return False
            if state["current"] is not None:
                state["history"].append(state["current"])
            state["current"] = version
            write_json_atomically(self.root / STATE, state)
            return True

    def rollback(self) -> str:
        """Make the previously current version current again and return it.

        A previous version that is gone or no longer loads is refused (`RegistryError`) and
        nothing changes; promote the version wanted instead.
        """
        with self._locked():
            state = self._read_state()
            if not state["history"]:
                raise RegistryError("nothing to roll back to: no earlier promoted version")
            previous = state["history"][-1]
            if not (self.root / previous).is_dir():
                raise RegistryError(f"cannot roll back to {previous}: its directory is gone")
            self._require_servable(previous, "roll back to")
            state["history"].pop()
            state["current"] = previous
            write_json_atomically(self.root / STATE, state)
            return str(previous)

    def path(self, version: str) -> Path:
        """The directory of a published version; NotFoundError if there is no such version."""
        path = self.root / version
        if not _VERSION.fullmatch(version) or not path.is_dir():
            raise NotFoundError(f"no model version {version!r} in {self.root}", version=version)
        return path

    def manifest(self, version: str) -> dict[str, Any]:
        """The manifest of a published version."""
        return read_manifest(self.path(version))

    def load(self, version: str | None = None, *, verify: bool = False, mmap: bool = True) -> ModelArtifact:
        """Load a version (the current one by default); see `load_artifact`."""
        if version is None:
            version = self.current()
            if version is None:
                raise RegistryError(f"no model version has been promoted in {self.root}")
        return load_artifact(self.path(version), verify=verify, mmap=mmap)

    def _require_servable(self, version: str, doing: str) -> None:
        """Load `version` as a server would; RegistryError naming `doing` if it cannot be."""
        try:
            self.load(version)
        except ArtifactError as exc:
            raise RegistryError(f"cannot {doing} {version}: {exc.detail}", version=version) from exc

    def _info(self, name: str, current: str | None) -> VersionInfo:
        path = self.root / name
        try:
            manifest = read_manifest(path)
            created_at = _created_at(path, manifest)
        except ArtifactError as exc:
            return VersionInfo(
                name, created_at=None, current=name == current, path=path, manifest={}, error=exc.detail
            )
        return VersionInfo(name, created_at=created_at, current=name == current, path=path, manifest=manifest)

    def _version_names(self) -> list[str]:
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:  # nothing published yet; reading creates nothing
            return []
        names = [entry.name for entry in entries if _VERSION.fullmatch(entry.name)]
        return sorted(names, key=_number)

    def _rename_to_next_version(self, staging: Path) -> str:
        for _ in range(_MAX_PUBLISH_ATTEMPTS):
            version = f"v{self._last_number() + 1:06d}"
            try:
                # rename(2) onto a non-empty directory fails, so losing a race to another
                # publisher (whose version already holds files) raises instead of replacing it.
                staging.rename(self.root / version)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                continue
            return version
        raise RegistryError(f"could not claim a version number in {self.root}; too many publishers")

    def _last_number(self) -> int:
        """The highest version number ever used, counting versions named in the state file.

        Counting the state file too means a deleted newest version never has its number reused.
        """
        state = self._read_state()
        named = [*self._version_names(), *state["history"], *([state["current"]] if state["current"] else [])]
        return max((_number(name) for name in named if _VERSION.fullmatch(name)), default=0)

    def _read_state(self) -> dict[str, Any]:
        path = self.root / STATE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"current": None, "history": []}
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{path}: unreadable registry state: {exc}", path=str(path)) from exc
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("current"), str | None)
            or not isinstance(state.get("history"), list)
        ):
            raise RegistryError(f"{path}: malformed registry state", path=str(path))
        return {"current": state.get("current"), "history": state["history"]}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock locks belong to the open file, so threads each opening the file exclude each
        # other as well as processes do (POSIX fcntl locks would not).
        with open(self.root / LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _remove_stale_staging(self) -> None:
        """Remove staging directories nobody has written to for an hour (crashed publishers)."""
        cutoff = (self._clock() - STALE_STAGING).timestamp()
        for entry in self.root.iterdir():
            if entry.name.startswith(STAGING_PREFIX) and _last_write(entry) < cutoff:
                shutil.rmtree(entry, ignore_errors=True)


def _number(version: str) -> int:
    return int(version[1:])


def _created_at(directory: Path, manifest: dict[str, Any]) -> datetime:
    value = manifest.get("created_at")
    try:
        return datetime.fromisoformat(str(value))
    except ValueError as exc:
        path = directory / MANIFEST
        raise ArtifactError(f"{path}: bad created_at {value!r}", path=str(path)) from exc


def _last_write(directory: Path) -> float:
    """The newest modification time of a directory and the files directly in it."""
    try:
        times = [directory.stat().st_mtime, *(entry.stat().st_mtime for entry in directory.iterdir())]
    except FileNotFoundError:  # another publisher finished or removed it meanwhile
        return float("inf")
    return max(times)
