"""The planted shop every API and notifier suite trains on, with the clock tests move by hand.

The planted shop has two groups of users: group A buys and views only category-A items, group
B only category-B items, and everyone views one shared item. A model that learned anything
recommends A items to A users; real-time events move a user towards the other category.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from recsvc.artifact import ModelArtifact
from recsvc.config import Settings, load_settings
from training import io

REPO = Path(__file__).resolve().parents[1]
BLOCK = 20  # items per category
USERS_PER_GROUP = 60
APP_KEY = "test-app-key"
ADMIN_KEY = "test-admin-key"
APP = {"X-API-Key": APP_KEY}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
LAST_TRAINING_EVENT = datetime(2024, 1, 31, tzinfo=UTC)
NOW = datetime(2024, 2, 1, 12, 0, tzinfo=UTC)


def items_of(category: str) -> set[str]:
    return {f"{category.lower()}{n}" for n in range(BLOCK)}


def write_planted_shop(folder: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Events (CSV) and catalog (Parquet) of the planted shop; returns their paths."""
    rng = np.random.default_rng(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    events = folder / "events.csv"
    with events.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "type", "ts"])
        for group in ("A", "B"):
            for n in range(USERS_PER_GROUP):
                user = f"g{group}-u{n}"
                moments = sorted(rng.integers(0, 29 * 24, size=9))
                writer.writerow(
                    [user, "shared", "view", (start + timedelta(hours=int(moments[0]))).isoformat()]
                )
                chosen = rng.choice(BLOCK, size=8, replace=False)
                for item, hour in zip(chosen, moments[1:], strict=True):
                    when = (start + timedelta(hours=int(hour))).isoformat()
                    writer.writerow([user, f"{group.lower()}{item}", "view", when])
                    if rng.random() < 0.3:
                        writer.writerow([user, f"{group.lower()}{item}", "purchase", when])
        # The last training event: events posted at NOW are newer, so the engine folds them in.
        writer.writerow(["gA-u0", "shared", "view", LAST_TRAINING_EVENT.isoformat()])
    ids = ["shared", *sorted(items_of("A")), *sorted(items_of("B"))]
    catalog = pa.table(
        {
            "item_id": ids,
            "title": [f"Item {item_id}" for item_id in ids],
            "category": ["S" if item_id == "shared" else item_id[0].upper() for item_id in ids],
            "price": [float(10 + n) for n in range(len(ids))],
            "available": [True] * len(ids),
            "url": [f"https://shop.example/p/{item_id}" for item_id in ids],
        }
    )
    items = folder / "items.parquet"
    io.write_items(catalog, items)
    return events, items


def base_settings() -> Settings:
    """The shipped defaults with a small, quick model and the test keys."""
    settings = load_settings(REPO / "configs" / "default.toml")
    als = settings.training.als.model_copy(update={"factors": 8, "iterations": 20, "regularization": 0.1})
    return settings.model_copy(
        update={
            "training": settings.training.model_copy(update={"als": als}),
            "serving": settings.serving.model_copy(
                update={"api_keys": {APP_KEY: "app", ADMIN_KEY: "admin"}, "max_batch": 50, "max_k": 40}
            ),
        }
    )


@dataclass(frozen=True)
class Models:
    """Two trained artifacts of the planted shop (different seeds), published per test."""

    first: ModelArtifact
    second: ModelArtifact


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
