"""The registry of model versions: monotonic publishing, atomic promote and rollback, crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from registry_support import lock_is_held
from test_artifact import make_artifact  # the one small artifact every artifact test uses

from recsvc.artifact import MANIFEST, ModelArtifact, write_artifact
from recsvc.errors import ArtifactError, NotFoundError, RegistryError
from recsvc.registry import Registry

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifact() -> ModelArtifact:
    return make_artifact()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def state(root: Path) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((root / "registry.json").read_text())
    return result


def test_versions_are_monotonic_and_listed_oldest_first(tmp_path: Path, artifact: ModelArtifact) -> None:
    clock = Clock()
    registry = Registry(tmp_path / "models", clock=clock)
    published = []
    for hours in range(3):
        clock.now += timedelta(hours=hours)
        published.append(registry.publish(artifact))

    assert published == ["v000001", "v000002", "v000003"]
    listed = registry.versions()
    assert [v.version for v in listed] == published
    created = [v.created_at for v in listed if v.created_at is not None]
    assert created == sorted(created) and len(created) == len(listed)
    assert listed[0].created_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert [v.path for v in listed] == [registry.path(v) for v in published]
    assert not any(v.current for v in listed) and registry.current() is None


def test_publishing_does_not_change_current(tmp_path: Path, artifact: ModelArtifact) -> None:
    registry = Registry(tmp_path)
    first = registry.publish(artifact)
    registry.promote(first)

    second = registry.publish(lambda directory: write_artifact(artifact, directory))

    assert registry.current() == first
    assert [(v.version, v.current) for v in registry.versions()] == [(first, True), (second, False)]


def test_promote_then_rollback(tmp_path: Path, artifact: ModelArtifact) -> None:
    registry = Registry(tmp_path)
    v1, v2, v3 = (registry.publish(artifact) for _ in range(3))
    server = Registry(tmp_path)  # another process's view of the same folder

    registry.promote(v1)
    assert server.current() == v1
    registry.promote(v2)
    registry.promote(v2)  # again: a no-op
    registry.promote(v3)
    assert server.current() == v3
    assert state(tmp_path) == {"current": v3, "history": [v1, v2]}

    assert registry.rollback() == v2 and server.current() == v2
    assert registry.rollback() == v1 and server.current() == v1
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()
    assert server.current() == v1


def test_rollback_before_any_promotion_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError):
        Registry(tmp_path).rollback()


@pytest.mark.parametrize("version", ["v000009", "../v000001", "latest", ".staging-x", ""])
def test_unknown_versions_are_not_found(tmp_path: Path, artifact: ModelArtifact, version: str) -> None:
    registry = Registry(tmp_path)
    registry.publish(artifact)

    for call in (registry.promote, registry.path, registry.manifest, registry.load):
        with pytest.raises(NotFoundError):
            call(version)
    assert registry.current() is None


def test_load_reads_the_current_version_by_default(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    with pytest.raises(RegistryError, match="promoted"):
        registry.load()
    first = registry.publish(make_artifact(seed=1))
    second = registry.publish(make_artifact(seed=2))
    registry.promote(second)

    np.testing.assert_array_equal(registry.load().user_factors, make_artifact(seed=2).user_factors)
    np.testing.assert_array_equal(
        registry.load(first, verify=True).user_factors, make_artifact(seed=1).user_factors
    )
    assert registry.manifest(second)["shape"] == {"users": 30, "items": 20, "factors": 8}


def test_a_writer_that_fails_publishes_nothing_and_leaves_nothing(
    tmp_path: Path, artifact: ModelArtifact
) -> None:
    registry = Registry(tmp_path)
    registry.publish(artifact)

    def crashing_writer(directory: Path) -> dict[str, Any]:
        write_artifact(artifact, directory)
        (directory / MANIFEST).unlink()  # as if it died before the manifest
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        registry.publish(crashing_writer)
    with pytest.raises(ArtifactError, match="missing file"):
        registry.publish(lambda directory: {})  # wrote nothing at all

    assert [v.version for v in registry.versions()] == ["v000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v000001"]
    assert registry.publish(artifact) == "v000002"


def test_stale_staging_left_by_a_killed_publisher_is_cleaned_later(
    tmp_path: Path, artifact: ModelArtifact
) -> None:
    clock = Clock()
    registry = Registry(tmp_path, clock=clock)
    for name in (".staging-old", ".staging-recent"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "user_factors.npy").write_bytes(b"half")
    old = (clock.now - timedelta(hours=2)).timestamp()
    for path in (tmp_path / ".staging-old", tmp_path / ".staging-old" / "user_factors.npy"):
        os.utime(path, (old, old))
    clock.now = datetime.fromtimestamp((tmp_path / ".staging-recent").stat().st_mtime, UTC)

    assert registry.versions() == []
    registry.publish(artifact)

    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging-recent", "v000001"]


def test_a_publisher_that_loses_the_rename_race_takes_the_next_number(
    tmp_path: Path, artifact: ModelArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(tmp_path)
    registry.publish(artifact)
    winner = sorted(p.read_bytes() for p in (tmp_path / "v000001").iterdir())
    stale_views = [0]  # the first look predates the other publisher's v000001
    real = Registry._last_number
    monkeypatch.setattr(
        Registry, "_last_number", lambda self: stale_views.pop() if stale_views else real(self)
    )

    assert registry.publish(artifact) == "v000002"
    assert not stale_views  # the rename onto v000001 was tried, failed, and retried
    assert sorted(p.read_bytes() for p in (tmp_path / "v000001").iterdir()) == winner


def test_version_numbers_are_never_reused(tmp_path: Path, artifact: ModelArtifact) -> None:
    registry = Registry(tmp_path)
    registry.publish(artifact)
    registry.promote(registry.publish(artifact))
    registry.promote("v000001")
    for path in (tmp_path / "v000002").iterdir():
        path.unlink()
    (tmp_path / "v000002").rmdir()  # someone deleted the newest version by hand

    assert registry.publish(artifact) == "v000003"


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path, artifact: ModelArtifact) -> None:
    registry = Registry(tmp_path)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(registry.publish(artifact))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [f"v00000{n}" for n in range(1, 5)]
    assert [v.version for v in registry.versions()] == sorted(results)


def alternate_promotes(root: Path, versions: tuple[str, str], times: int) -> None:
    """Promote two versions in turn; no other worker promotes them, so none is a no-op."""
    registry = Registry(root)
    for n in range(times):
        registry.promote(versions[n % 2])


def assert_every_promote_recorded(root: Path, pairs: list[tuple[str, str]], times: int) -> None:
    recorded = [*state(root)["history"], state(root)["current"]]
    assert len(recorded) == len(pairs) * times
    for first, second in pairs:
        assert (recorded.count(first), recorded.count(second)) == (times // 2, times // 2)


def test_concurrent_promotes_from_threads_lose_no_update(tmp_path: Path, artifact: ModelArtifact) -> None:
    registry = Registry(tmp_path)
    versions = [registry.publish(artifact) for _ in range(8)]
    pairs = list(zip(versions[::2], versions[1::2], strict=True))
    barrier = threading.Barrier(len(pairs))

    def worker(pair: tuple[str, str]) -> None:
        barrier.wait()
        alternate_promotes(tmp_path, pair, 40)

    threads = [threading.Thread(target=worker, args=(pair,)) for pair in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert_every_promote_recorded(tmp_path, pairs, 40)


def test_concurrent_promotes_from_processes_lose_no_update(tmp_path: Path, artifact: ModelArtifact) -> None:
    registry = Registry(tmp_path)
    versions = [registry.publish(artifact) for _ in range(6)]
    pairs = list(zip(versions[::2], versions[1::2], strict=True))
    script = (
        "import sys; from pathlib import Path; from recsvc.registry import Registry\n"
        "registry = Registry(Path(sys.argv[1])); print('ready', flush=True); sys.stdin.readline()\n"
        "for n in range(40): registry.promote(sys.argv[2 + n % 2])\n"
    )
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(tmp_path), *pair],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for pair in pairs
    ]
    for worker in workers:  # start them together, once every one has imported
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.close()
    assert [worker.wait(timeout=60) for worker in workers] == [0] * len(workers)
    for worker in workers:
        assert worker.stdout is not None
        worker.stdout.close()

    assert_every_promote_recorded(tmp_path, pairs, 40)
    assert registry.current() in versions


def emptied(version: Path) -> None:
    """As if the version's files were never copied (or were deleted by hand)."""
    for path in version.iterdir():
        path.unlink()


def corrupt_manifest(version: Path) -> None:
    (version / MANIFEST).write_text("{not json")


def missing_file(version: Path) -> None:
    """A half-copied version: its manifest lists a file that is not there."""
    (version / "item_factors.npy").unlink()


BREAKAGES = [emptied, corrupt_manifest, missing_file]


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_version_that_does_not_load_is_never_promoted(
    tmp_path: Path, artifact: ModelArtifact, breakage: Callable[[Path], None]
) -> None:
    registry = Registry(tmp_path)
    good = registry.publish(artifact)
    registry.promote(good)
    broken = registry.publish(artifact)
    breakage(registry.path(broken))
    before = state(tmp_path)

    with pytest.raises(RegistryError, match=f"cannot promote {broken}: "):
        registry.promote(broken)
    with pytest.raises(RegistryError, match=f"cannot promote {broken}: "):
        registry.promote_if(broken, lambda current: True)

    assert state(tmp_path) == before and registry.current() == good


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_rollback_refuses_a_previous_version_that_no_longer_loads(
    tmp_path: Path, artifact: ModelArtifact, breakage: Callable[[Path], None]
) -> None:
    registry = Registry(tmp_path)
    first, second = registry.publish(artifact), registry.publish(artifact)
    registry.promote(first)
    registry.promote(second)
    breakage(registry.path(first))

    with pytest.raises(RegistryError, match=f"cannot roll back to {first}: "):
        registry.rollback()

    assert state(tmp_path) == {"current": second, "history": [first]}


def test_a_broken_version_is_listed_with_why(tmp_path: Path, artifact: ModelArtifact) -> None:
    registry = Registry(tmp_path)
    good = registry.publish(artifact)
    registry.promote(good)
    (tmp_path / "v000002").mkdir()  # made by hand, or a copy that never started
    corrupt = registry.publish(artifact)
    corrupt_manifest(registry.path(corrupt))
    no_date = registry.publish(artifact)
    manifest = json.loads((registry.path(no_date) / MANIFEST).read_text())
    (registry.path(no_date) / MANIFEST).write_text(json.dumps({**manifest, "created_at": "yesterday"}))

    listed = registry.versions()

    assert [(v.version, v.current) for v in listed] == [
        (good, True),
        ("v000002", False),
        (corrupt, False),
        (no_date, False),
    ]
    assert listed[0].error is None and listed[0].created_at is not None
    assert listed[0].manifest == registry.manifest(good)
    errors = {v.version: v.error for v in listed[1:]}
    assert "manifest.json: missing file" in str(errors["v000002"])
    assert "unreadable manifest" in str(errors[corrupt])
    assert "bad created_at 'yesterday'" in str(errors[no_date])
    assert all(v.created_at is None and v.manifest == {} for v in listed[1:])


def test_reading_a_registry_that_does_not_exist_creates_nothing(
    tmp_path: Path, artifact: ModelArtifact
) -> None:
    root = tmp_path / "not" / "there"
    registry = Registry(root)

    assert registry.versions() == [] and registry.current() is None
    with pytest.raises(NotFoundError):
        registry.manifest("v000001")
    with pytest.raises(NotFoundError):
        registry.promote("v000001")
    assert not (tmp_path / "not").exists()

    assert registry.publish(artifact) == "v000001"  # publishing is what creates it
    assert [v.version for v in registry.versions()] == ["v000001"]


def test_promote_if_decides_under_the_lock_with_the_current_version(
    tmp_path: Path, artifact: ModelArtifact
) -> None:
    registry = Registry(tmp_path)
    v1, v2, v3 = (registry.publish(artifact) for _ in range(3))
    asked: list[tuple[str | None, bool]] = []

    def better(answer: bool) -> Callable[[str | None], bool]:
        def decide(current: str | None) -> bool:
            asked.append((current, lock_is_held(tmp_path)))
            return answer

        return decide

    assert registry.promote_if(v1, better(True)) and registry.current() == v1
    assert not registry.promote_if(v2, better(False)) and registry.current() == v1
    assert registry.promote_if(v3, better(True)) and registry.current() == v3
    assert registry.promote_if(v3, better(False))  # current already: nothing to decide
    assert asked == [(None, True), (v1, True), (v1, True)]
    assert state(tmp_path) == {"current": v3, "history": [v1]}
    assert not lock_is_held(tmp_path)
