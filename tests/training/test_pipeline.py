"""The whole training run on data whose right answer is known by construction."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import scipy.sparse as sp
from registry_support import lock_is_held

from recsvc import ann
from recsvc.config import Settings
from recsvc.keys import Keys
from recsvc.registry import Registry
from training import pipeline


def small(settings: Settings) -> Settings:
    als = settings.training.als.model_copy(update={"factors": 8, "iterations": 20, "regularization": 0.1})
    return settings.model_copy(update={"training": settings.training.model_copy(update={"als": als})})


def test_model_finds_the_planted_blocks_and_beats_popularity(
    settings: Settings, planted: Path, planted_block: dict[int, set[str]]
) -> None:
    result = pipeline.train(small(settings), events=planted)
    metrics = result.manifest["metrics"]
    assert metrics["model"]["ndcg@10"] > metrics["popularity"]["ndcg@10"] + 0.1
    artifact = result.artifact
    for user in ("g0-u3", "g1-u7"):
        row = artifact.user_ids.index_of(user)
        assert row is not None
        _, ids = ann.search(artifact.index, artifact.user_factors[row : row + 1], 10, metric="ip")
        names = [artifact.item_ids.id_at(int(i)) for i in ids[0] if i >= 0]
        assert len(set(names) & planted_block[int(user[1])]) >= 8, names


def test_manifest_describes_data_split_parameters_and_index(settings: Settings, planted: Path) -> None:
    manifest = pipeline.train(small(settings), events=planted).manifest
    data = manifest["data"]
    assert data["users"] == 120 and data["items"] == 2 * 20 + 1
    assert data["event_types"]["view"] == 120 * 9
    assert data["held_out_users"] > 100
    assert manifest["parameters"]["model"] == "als" and manifest["parameters"]["factors"] == 8
    assert manifest["index"]["kind"] == "flat" and manifest["index"]["recall"] == 1.0
    assert set(manifest["metrics"]["model"]) == {
        f"{name}@10" for name in ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")
    }


def test_bpr_trains_through_the_same_pipeline(settings: Settings, planted: Path) -> None:
    bpr = settings.training.bpr.model_copy(update={"factors": 8, "iterations": 200})
    config = settings.model_copy(
        update={"training": settings.training.model_copy(update={"model": "bpr", "bpr": bpr})}
    )
    manifest = pipeline.train(config, events=planted).manifest
    assert manifest["parameters"]["model"] == "bpr"
    assert manifest["metrics"]["model"]["ndcg@10"] > manifest["metrics"]["popularity"]["ndcg@10"]


def test_promote_if_better_keeps_a_better_current_model(settings: Settings, planted: Path) -> None:
    registry = Registry(settings.registry.dir)
    good = pipeline.train(small(settings), events=planted)
    first, promoted, _ = pipeline.publish(settings, good, registry, promote_if_better=True)
    assert promoted and registry.current() == first

    weak_als = settings.training.als.model_copy(update={"factors": 1, "iterations": 1})
    weak = settings.model_copy(update={"training": settings.training.model_copy(update={"als": weak_als})})
    second, promoted, reason = pipeline.publish(
        weak, pipeline.train(weak, events=planted), registry, promote_if_better=True
    )
    assert not promoted and registry.current() == first, reason

    third, promoted, _ = pipeline.publish(settings, good, registry, promote_if_better=False)
    assert not promoted and [v.version for v in registry.versions()] == [first, second, third]


def scored(result: pipeline.TrainResult, metric: str, score: float) -> pipeline.TrainResult:
    """The same model claiming another score on `metric`."""
    manifest = {**result.manifest, "metrics": {"model": {metric: score}, "popularity": {metric: 0.0}}}
    return dataclasses.replace(result, artifact=dataclasses.replace(result.artifact, manifest=manifest))


def test_of_two_runs_promoting_if_better_at_once_the_better_model_stays_current(
    settings: Settings, planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run A (score 0.5) reads the current model (0.1); run B (0.9) promotes at that moment.

    A must then compare with B's model, not the one it read: before the comparison and the
    promotion shared the registry lock, A promoted its worse model over B's. B is run as soon
    as the lock lets another process in, so the order is fixed without timing anything.
    """
    config = small(settings)
    loaded = pipeline.load_events(config, [planted], forgotten=())
    trained = pipeline.fit_and_evaluate(config, pipeline.prepare(config, loaded))
    metric = settings.evaluation.promote_metric
    ours, theirs = Registry(settings.registry.dir), Registry(settings.registry.dir)
    ours.promote(ours.publish(scored(trained, metric, 0.1).artifact))
    their_runs: list[tuple[str, bool, str]] = []

    def their_run() -> None:
        their_runs.append(
            pipeline.publish(settings, scored(trained, metric, 0.9), theirs, promote_if_better=True)
        )

    real_manifest = Registry.manifest

    def manifest_then_they_promote(self: Registry, version: str) -> dict[str, Any]:
        manifest = real_manifest(self, version)
        if self is ours and not their_runs and not lock_is_held(ours.root):
            their_run()
        return manifest

    monkeypatch.setattr(Registry, "manifest", manifest_then_they_promote)
    version, promoted, reason = pipeline.publish(
        settings, scored(trained, metric, 0.5), ours, promote_if_better=True
    )
    if not their_runs:  # they waited for the lock we held while deciding: they come after us
        their_run()

    ((their_version, they_promoted, their_reason),) = their_runs
    assert (version, their_version) == ("v000002", "v000003")
    assert promoted and they_promoted, (reason, their_reason)  # each beat what it compared with
    assert ours.current() == their_version, (reason, their_reason)


def test_artifact_holds_every_event_and_what_each_user_bought(settings: Settings, planted: Path) -> None:
    result = pipeline.train(small(settings), events=planted)
    artifact = result.artifact
    prepared = pipeline.prepare(small(settings), pipeline.load_events(small(settings), [planted]))
    seen: set[tuple[str, str]] = set()
    bought: set[tuple[str, str]] = set()
    with planted.open() as handle:
        for row in csv.DictReader(handle):
            seen.add((row["user_id"], row["item_id"]))
            if row["type"] == "purchase":
                bought.add((row["user_id"], row["item_id"]))

    def cells(matrix: sp.csr_matrix) -> set[tuple[str, str]]:
        return {
            (artifact.user_ids.id_at(int(u)), artifact.item_ids.id_at(int(i)))
            for u, i in zip(*matrix.nonzero(), strict=True)
        }

    assert artifact.user_items is not None and artifact.user_excluded is not None
    assert cells(artifact.user_items) == seen  # held-out events included, unlike the training matrix
    assert artifact.user_items.nnz > prepared.train.nnz
    assert cells(artifact.user_excluded) == bought and set(artifact.user_excluded.data.tolist()) == {1.0}
    np.testing.assert_allclose(artifact.user_items.sum(), prepared.events.weights.sum(), rtol=1e-5)


def test_users_forgotten_through_the_api_are_left_out_by_default(
    redis_settings: Settings, redis_client: redis.Redis, planted: Path
) -> None:
    """The Python API (a notebook, `recsvc tune`) honours deletions without being told to."""
    redis_client.sadd(Keys(redis_settings.redis.prefix).forgotten(), "g0-u1")
    rows = sum(line.startswith("g0-u1,") for line in planted.read_text().splitlines())
    loaded = pipeline.load_events(redis_settings, [planted])
    assert loaded.skipped == {"forgotten_user": rows}
    assert "g0-u1" not in set(loaded.table.column("user_id").to_pylist())
    artifact = pipeline.train(small(redis_settings), events=planted).artifact
    assert artifact.user_ids.index_of("g0-u1") is None
    assert artifact.user_ids.index_of("g0-u2") is not None
    everyone = pipeline.load_events(redis_settings, [planted], forgotten=())
    assert "g0-u1" in set(everyone.table.column("user_id").to_pylist())
