"""A real model on planted data, shared by the engine and catalog suites (fixtures in conftest).

Two groups of users each like only their own block of items: group "a" the items A0..A19 of
category "A", group "b" the items B0..B19 of category "B"; everyone also views one item "shared"
(no category). About a third of the views are followed by a purchase. The model is trained by
the real pipeline, written and mapped back from disk read-only, as a server would serve it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsvc.artifact import ModelArtifact, load_artifact, write_artifact
from recsvc.config import Settings, load_settings
from training import pipeline

REPO = Path(__file__).resolve().parents[2]
BLOCK = 20
USERS_PER_GROUP = 100
START = datetime(2024, 1, 1, tzinfo=UTC)
# Every training event lies in January 2024; "now" in the tests is a little after.
NOW = datetime(2024, 2, 3, tzinfo=UTC)
NOW_US = int(NOW.timestamp() * 1_000_000)


def block(group: str) -> set[str]:
    """The items a group likes: "A" or "B"."""
    return {f"{group}{n}" for n in range(BLOCK)}


def us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def write_events(path: Path, *, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "item_id", "type", "ts"])
        for group in ("A", "B"):
            for n in range(USERS_PER_GROUP):
                user = f"{group.lower()}{n}"
                picks = rng.choice(BLOCK, size=8, replace=False)
                hours = sorted(rng.integers(0, 30 * 24, size=len(picks) + 1).tolist())
                writer.writerow([user, "shared", "view", (START + timedelta(hours=hours[0])).isoformat()])
                for pick, hour in zip(picks.tolist(), hours[1:], strict=True):
                    when = (START + timedelta(hours=hour)).isoformat()
                    writer.writerow([user, f"{group}{pick}", "view", when])
                    if rng.random() < 0.3:
                        writer.writerow([user, f"{group}{pick}", "purchase", when])


def items_table() -> pa.Table:
    rows = [
        {
            "item_id": f"{group}{n}",
            "title": f"{group} item {n}",
            "category": group,
            "price": 10.0 + n,
            "available": True,
            "url": f"https://shop.example/{group}{n}",
            "image_url": None,
        }
        for group in ("A", "B")
        for n in range(BLOCK)
    ]
    rows.append(
        {"item_id": "shared", "title": "Gift card", "category": None, "price": None, "available": True}
    )
    rows.append({"item_id": "catalog-only", "title": "Not in the model", "category": "A", "available": True})
    return pa.Table.from_pylist(rows)


@dataclass(frozen=True)
class Planted:
    artifact: ModelArtifact
    settings: Settings
    directory: Path
    now_us: int = NOW_US  # a few days after the newest training event

    @staticmethod
    def block(group: str) -> set[str]:
        """The items a group likes: "A" or "B"."""
        return block(group)


def small(settings: Settings, model: str = "als") -> Settings:
    training = settings.training
    als = training.als.model_copy(update={"factors": 4, "iterations": 20, "regularization": 0.1})
    bpr = training.bpr.model_copy(update={"factors": 8, "iterations": 200})
    update = {"model": model, "als": als, "bpr": bpr, "num_threads": 1}
    return settings.model_copy(update={"training": training.model_copy(update=update)})


def train_planted(root: Path, model: str = "als") -> Planted:
    root.mkdir(parents=True, exist_ok=True)
    events, items = root / "events.csv", root / "items.parquet"
    write_events(events)
    pq.write_table(items_table(), items)
    settings = small(load_settings(REPO / "configs" / "default.toml"), model)
    result = pipeline.train(settings, events=events, items=items)
    directory = root / "artifact"
    directory.mkdir()
    write_artifact(result.artifact, directory)
    return Planted(load_artifact(directory, verify=True, mmap=True), settings, directory)
