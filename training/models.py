"""Fitting implicit's matrix-factorisation models from configuration.

Only this module knows implicit's constructors; the rest of training sees a fitted model with
`user_factors` and `item_factors` as float32 numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from implicit.cpu.matrix_factorization_base import MatrixFactorizationBase
from threadpoolctl import threadpool_limits

from recsvc.config import TrainingConfig


def model_parameters(config: TrainingConfig) -> dict[str, Any]:
    """The parameters of the configured model family, as stored in the manifest."""
    family = config.als if config.model == "als" else config.bpr
    return {"model": config.model, **family.model_dump(), "random_state": config.random_state}


def build_model(config: TrainingConfig) -> MatrixFactorizationBase:
    """An unfitted implicit model of the configured family."""
    if config.model == "als":
        als = config.als
        return AlternatingLeastSquares(
            factors=als.factors,
            regularization=als.regularization,
            alpha=als.alpha,
            iterations=als.iterations,
            num_threads=config.num_threads,
            random_state=config.random_state,
        )
    bpr = config.bpr
    return BayesianPersonalizedRanking(
        factors=bpr.factors,
        learning_rate=bpr.learning_rate,
        regularization=bpr.regularization,
        iterations=bpr.iterations,
        num_threads=config.num_threads,
        random_state=config.random_state,
    )


def fit(
    config: TrainingConfig, user_items: sp.csr_matrix, *, progress: bool = False
) -> MatrixFactorizationBase:
    """Fit a fresh model on a user x item confidence matrix.

    BLAS is held to one thread while fitting: implicit parallelises over users itself, and a
    multithreaded BLAS underneath it oversubscribes the cores (implicit warns about exactly this).
    """
    with threadpool_limits(1, "blas"):
        model = build_model(config)  # implicit checks the BLAS threads when a model is built
        model.fit(user_items.astype(np.float32), show_progress=progress)
    return model
