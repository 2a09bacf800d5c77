"""Fixtures of the training suites: a tiny dataset whose right answer is known by construction."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

BLOCK = 20  # items per taste block


def write_planted_events(path: Path, *, users_per_group: int = 60, seed: int = 0) -> None:
    """Two groups of users, each liking only its own block of 20 items, plus one item everyone views.

    A popularity ranking can only recommend the shared item and the other block's items equally;
    a model that finds the structure recommends the user's own block.
    """
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "type", "ts"])
        for group in (0, 1):
            for n in range(users_per_group):
                user = f"g{group}-u{n}"
                items = rng.choice(BLOCK, size=8, replace=False) + group * BLOCK
                moments = sorted(rng.integers(0, 30 * 24, size=len(items) + 1))
                writer.writerow(
                    [user, "shared", "view", (start + timedelta(hours=int(moments[0]))).isoformat()]
                )
                for item, hour in zip(items, moments[1:], strict=True):
                    when = (start + timedelta(hours=int(hour))).isoformat()
                    writer.writerow([user, f"i{item}", "view", when])
                    if rng.random() < 0.3:
                        writer.writerow([user, f"i{item}", "purchase", when])


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    path = tmp_path / "events.csv"
    write_planted_events(path)
    return path


@pytest.fixture
def planted_block() -> dict[int, set[str]]:
    """The items each group of the planted dataset likes, by group number."""
    return {group: {f"i{n + BLOCK * group}" for n in range(BLOCK)} for group in (0, 1)}
