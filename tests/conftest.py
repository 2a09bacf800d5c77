"""Fixtures shared by every suite: settings isolated in a temp folder, and the real datasets."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def find_shared_data() -> Path:
    """`shared/data` beside the checkout (CI clones the repo with shared/ next to it)."""
    for parent in REPO.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"no shared/data folder above {REPO}: the real datasets are missing")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return find_shared_data()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The shipped defaults with every folder redirected into this test's temp dir."""
    monkeypatch.setenv("RECSVC_DATA__DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RECSVC_REGISTRY__DIR", str(tmp_path / "models"))
    monkeypatch.setenv("RECSVC_REDIS__EMBEDDED_PATH", str(tmp_path / "redis" / "recsvc.db"))
    return load_settings(REPO / "configs" / "default.toml")
