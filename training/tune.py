"""Random search over ALS hyperparameters, judged on a validation split carved from training data.

The hold-out that `recsvc train` reports on is never seen here: tuning splits the training part
again with the same temporal rule, so the chosen parameters do not overfit the reported metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsvc.config import AlsConfig, Settings
from training.evaluate import evaluate
from training.matrix import interaction_matrix
from training.models import fit
from training.pipeline import dataset_inputs, load_events, prepare, split_events
from training.split import test_matrix

FACTORS = (16, 32, 64, 128)
ITERATIONS = (10, 15, 25)
HALF_LIVES = (0.0, 7.0, 14.0, 30.0, 90.0)


@dataclass(frozen=True)
class Trial:
    """One point of the search and what it scored on the validation split."""

    params: dict[str, float]
    metrics: dict[str, float]
    seconds: float


@dataclass
class TuneReport:
    metric: str
    popularity: dict[str, float]
    trials: list[Trial] = field(default_factory=list)

    def ranked(self) -> list[Trial]:
        return sorted(self.trials, key=lambda trial: trial.metrics.get(self.metric, 0.0), reverse=True)

    @property
    def best(self) -> Trial:
        return self.ranked()[0]

    def table(self) -> str:
        keys = ("factors", "regularization", "alpha", "iterations", "half_life_days")
        header = "".join(f"{key:>16}" for key in keys) + f"{self.metric:>12}{'seconds':>9}"
        lines = [header]
        for trial in self.ranked():
            cells = "".join(f"{trial.params[key]:>16.4g}" for key in keys)
            lines.append(f"{cells}{trial.metrics.get(self.metric, 0.0):>12.4f}{trial.seconds:>9.1f}")
        lines.append(f"popularity baseline {self.metric}: {self.popularity.get(self.metric, 0.0):.4f}")
        return "\n".join(lines)

    def best_toml(self) -> str:
        params = self.best.params
        return (
            f"[events]\nhalf_life_days = {params['half_life_days']}\n\n[training.als]\n"
            f"factors = {int(params['factors'])}\nregularization = {params['regularization']:.4g}\n"
            f"alpha = {params['alpha']:.4g}\niterations = {int(params['iterations'])}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "popularity": self.popularity,
            "best": self.best.params,
            "trials": [trial.__dict__ for trial in self.ranked()],
        }


def sample_params(rng: np.random.Generator) -> dict[str, float]:
    """One random point; regularisation and alpha are searched on a log scale."""
    return {
        "factors": float(rng.choice(FACTORS)),
        "regularization": float(10 ** rng.uniform(-3, 0)),
        "alpha": float(10 ** rng.uniform(-0.3, 1.7)),
        "iterations": float(rng.choice(ITERATIONS)),
        "half_life_days": float(rng.choice(HALF_LIVES)),
    }


def tune(
    settings: Settings, *, events: Path | Sequence[Path] | None = None, trials: int = 20, seed: int = 0
) -> TuneReport:
    """Try the configured parameters first, then `trials - 1` random ones; rank them."""
    event_files, _ = dataset_inputs(settings, events, None)
    prepared = prepare(settings, load_events(settings, event_files))
    history = prepared.events.select(prepared.split.train)
    validation = split_events(settings, history)
    metric = settings.evaluation.promote_metric
    k = int(metric.partition("@")[2])

    rng = np.random.default_rng(seed)
    current = {**settings.training.als.model_dump(), "half_life_days": settings.events.half_life_days}
    points = [{name: float(value) for name, value in current.items()}]
    points += [sample_params(rng) for _ in range(max(trials - 1, 0))]

    report: TuneReport | None = None
    for params in points:
        started = time.perf_counter()
        decayed = history.with_half_life(params["half_life_days"])
        train = interaction_matrix(decayed.select(validation.train))
        test = test_matrix(decayed.users, decayed.items, validation.test, train)
        als = AlsConfig(
            factors=int(params["factors"]),
            regularization=params["regularization"],
            alpha=params["alpha"],
            iterations=int(params["iterations"]),
        )
        model = fit(settings.training.model_copy(update={"model": "als", "als": als}), train)
        result = evaluate(
            model,
            train,
            test,
            k=k,
            max_users=settings.evaluation.max_users,
            seed=settings.training.random_state,
        )
        if report is None:
            report = TuneReport(metric, result.popularity)
        report.trials.append(Trial(params, result.model, time.perf_counter() - started))
    assert report is not None  # points always holds the configured parameters
    return report
