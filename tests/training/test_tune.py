from __future__ import annotations

import tomllib
from pathlib import Path

from recsvc.config import Settings, load_settings
from training.tune import tune


def test_tune_ranks_trials_and_starts_from_the_configured_parameters(
    settings: Settings, planted: Path
) -> None:
    report = tune(settings, events=planted, trials=4, seed=1)
    assert len(report.trials) == 4
    configured = report.trials[0].params
    assert configured["factors"] == settings.training.als.factors
    assert configured["half_life_days"] == settings.events.half_life_days
    scores = [trial.metrics["ndcg@10"] for trial in report.ranked()]
    assert scores == sorted(scores, reverse=True)
    assert report.best.metrics["ndcg@10"] == max(scores)
    assert report.best.metrics["ndcg@10"] > report.popularity["ndcg@10"]


def test_best_toml_is_a_valid_config_with_the_best_parameters(
    settings: Settings, planted: Path, tmp_path: Path
) -> None:
    report = tune(settings, events=planted, trials=3, seed=2)
    parsed = tomllib.loads(report.best_toml())
    assert parsed["training"]["als"]["factors"] == int(report.best.params["factors"])
    path = tmp_path / "best.toml"
    path.write_text(report.best_toml())
    assert load_settings(path).training.als.iterations == int(report.best.params["iterations"])
