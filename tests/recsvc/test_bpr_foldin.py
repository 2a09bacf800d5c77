"""Real-time BPR recommendations on real data (MovieLens 100K) stay the user's own.

Least squares against BPR's factors once made one view turn every user's list into the same
rarely rated films: 0.5 of 10 items kept, and one film in 188 of 200 lists.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from recsvc.config import Settings
from recsvc.engine import Engine, RecentEvent
from training import pipeline
from training.importers import import_dataset

NOW_US = 1_800_000_000_000_000


@pytest.fixture(scope="module")
def bpr_engine(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    folder = tmp_path_factory.mktemp("ml100k")
    import_dataset("movielens", shared_data / "movielens-100k", folder)
    settings = Settings()
    training = settings.training.model_copy(update={"model": "bpr", "num_threads": 1})
    settings = settings.model_copy(update={"training": training})
    artifact = pipeline.train(settings, events=folder, forgotten=()).artifact
    return Engine(artifact, "v1", settings)


def test_one_view_keeps_a_bpr_users_list_their_own(bpr_engine: Engine) -> None:
    artifact = bpr_engine.artifact
    kept: list[int] = []
    shown: Counter[str] = Counter()
    for row in range(0, 400, 2):
        user = artifact.user_ids.id_at(row)
        before = {item.item_id for item in bpr_engine.recommend(user, k=10, now_us=NOW_US).items}
        rated = artifact.item_ids.id_at(int(artifact.user_items.indices[artifact.user_items.indptr[row]]))
        after = bpr_engine.recommend(user, k=10, recent=[RecentEvent(rated, "view", NOW_US)], now_us=NOW_US)
        assert after.strategy == "realtime"
        kept.append(len(before & {item.item_id for item in after.items}))
        shown.update(item.item_id for item in after.items)
    assert sum(kept) / len(kept) >= 2.5
    assert shown.most_common(1)[0][1] <= 0.3 * len(kept)
