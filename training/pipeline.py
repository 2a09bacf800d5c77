"""One training run, end to end: events -> matrix -> fit -> evaluate -> index -> artifact.

These functions are the Python API for notebooks, and the CLI is a thin shell over them, so a
data scientist can run any stage alone (`load_events`, `prepare`, `fit_and_evaluate`, `publish`)
or all of them (`train`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsvc import ann
from recsvc.archive import forgotten_users
from recsvc.artifact import ModelArtifact
from recsvc.config import Settings
from recsvc.errors import InputError
from recsvc.redis_conn import connect_sync, redis_url
from recsvc.registry import Registry
from training import io
from training.evaluate import Evaluation, evaluate
from training.matrix import (
    EncodedEvents,
    encode_events,
    excluded_matrix,
    interaction_matrix,
    min_interactions_mask,
)
from training.models import fit, model_parameters
from training.split import Split, leave_last_split, test_matrix, time_cut_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """Encoded events, their split, and the matrices the model is fitted and judged on."""

    events: EncodedEvents
    split: Split
    train: sp.csr_matrix
    test: sp.csr_matrix
    skipped: dict[str, int]
    files: tuple[str, ...]


@dataclass
class TrainResult:
    """A fitted, evaluated, indexed model that has not been published yet."""

    artifact: ModelArtifact
    evaluation: Evaluation
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def manifest(self) -> dict[str, Any]:
        return self.artifact.manifest


def load_events(
    settings: Settings, paths: Sequence[Path], *, forgotten: Collection[str] | None = None
) -> io.LoadedEvents:
    """Read event files or folders with the configured types, id limit and error policy.

    Events of forgotten users (deleted through the API) are dropped and counted, so a model
    never learns from someone who asked to be forgotten, even from files archived before. They
    are read from the service's Redis (`forgotten_users_if_any`) unless `forgotten` is given:
    every way into training (the CLI, `recsvc tune`, a notebook) then honours them by default.
    """
    if forgotten is None:
        forgotten = forgotten_users_if_any(settings)
    loaded = io.read_events(
        paths,
        event_types=set(settings.events.types),
        max_id_length=settings.events.max_id_length,
        on_error=settings.data.on_error,
    )
    if not forgotten:
        return loaded
    drop = pc.is_in(loaded.table.column("user_id"), value_set=pa.array(sorted(forgotten), pa.string()))
    dropped = int(pc.sum(drop).as_py() or 0)
    if not dropped:
        return loaded
    table = loaded.table.filter(pc.invert(drop))
    skipped = {**loaded.skipped, "forgotten_user": dropped}
    return io.LoadedEvents(table, skipped, loaded.files)


def forgotten_users_if_any(settings: Settings) -> set[str]:
    """Users deleted through the API, from the Redis the service uses; none if it never ran here.

    A configured Redis that cannot be reached stops training rather than risk learning from
    deleted users.
    """
    if redis_url(settings) is None and not settings.redis.embedded_path.exists():
        return set()
    client = connect_sync(settings, timeout=5.0)
    try:
        return forgotten_users(client, settings)
    finally:
        client.close()


def dataset_inputs(
    settings: Settings, events: Path | Sequence[Path] | None, items: Path | None
) -> tuple[list[Path], Path | None]:
    """Event files and catalog for a run: the given files, folders and dataset folders (each file
    once), else the configured dataset folder. The catalog is `items`, else the one dataset
    folder's `items.parquet`; two dataset folders with one each must name one."""
    given = [settings.data.dir] if events is None else [events] if isinstance(events, Path) else list(events)
    empty = [path for path in given if path.is_dir() and not io.event_files_under(path)]
    if empty and len(empty) < len(given):  # e.g. an archive folder before its first run
        log.warning("no event files yet in %s; training on the other inputs", ", ".join(map(str, empty)))
        given = [path for path in given if path not in empty]
    files: list[Path] = []
    catalogs: list[Path] = []
    for path in given:
        found, catalog = io.resolve_dataset(path)
        files += found
        catalogs += [catalog] if catalog is not None else []
    if items is None and len(catalogs) > 1:
        listed = ", ".join(map(str, catalogs))
        raise InputError(f"several catalogs ({listed}): choose one with --items", field="items")
    return list(dict.fromkeys(files)), items if items is not None else next(iter(catalogs), None)


def split_events(settings: Settings, events: EncodedEvents) -> Split:
    """The configured temporal hold-out over single events."""
    evaluation = settings.evaluation
    if evaluation.split == "time_cut":
        return time_cut_split(events.ts_us, quantile=evaluation.time_cut_quantile)
    return leave_last_split(
        events.users,
        events.items,
        events.ts_us,
        holdout=evaluation.holdout_per_user,
        seed=settings.training.random_state,
    )


def prepare(settings: Settings, loaded: io.LoadedEvents) -> Prepared:
    """Encode, filter, split and aggregate: everything before the model sees data."""
    events = encode_events(loaded.table, settings.events)
    keep = min_interactions_mask(
        events,
        min_user=settings.training.min_user_interactions,
        min_item=settings.training.min_item_interactions,
    )
    if not keep.all():
        log.info("min interactions filter keeps %d of %d events", int(keep.sum()), len(keep))
        events = events.select(keep).compact()
    split = split_events(settings, events)
    train = interaction_matrix(events.select(split.train))
    test = test_matrix(events.users, events.items, split.test, train)
    return Prepared(events, split, train, test, loaded.skipped, loaded.files)


def _popularity(events: EncodedEvents) -> npt.NDArray[np.float32]:
    """Decayed confidence summed per item over all events: the fallback ranking for cold users."""
    return np.bincount(events.items, weights=events.weights, minlength=len(events.item_ids)).astype(
        np.float32
    )


def _catalog(items_path: Path | None, item_ids: np.ndarray) -> pa.Table | None:
    if items_path is None:
        return None
    items = io.read_items(items_path)
    log.info(
        "catalog %s: %d items, %d of the model's %d items described",
        items_path,
        items.num_rows,
        int(pc.sum(pc.is_in(pa.array(item_ids), items.column("item_id"))).as_py() or 0),
        len(item_ids),
    )
    return items


def _data_summary(prepared: Prepared) -> dict[str, Any]:
    events = prepared.events
    ts = events.ts_us
    return {
        "files": list(prepared.files),
        "events": len(events),
        "users": len(events.user_ids),
        "items": len(events.item_ids),
        "interactions": int(prepared.train.nnz),
        "held_out_users": int(np.count_nonzero(np.diff(prepared.test.indptr))),
        "held_out_interactions": int(prepared.test.nnz),
        "event_types": events.type_counts,
        "skipped": prepared.skipped,
        "split": prepared.split.cut_description,
        "first_event": _iso(int(ts.min())) if len(ts) else None,
        "last_event": _iso(int(ts.max())) if len(ts) else None,
    }


def _iso(ts_us: int) -> str:
    return str(np.datetime64(ts_us, "us")) + "Z"


def _index_section(
    settings: Settings, item_factors: np.ndarray, user_factors: np.ndarray
) -> tuple[Any, Any, dict[str, Any]]:
    """Both item indexes, with the recall of each measured against exact search."""
    config = settings.index
    rng = np.random.default_rng(settings.training.random_state)
    index = ann.build_index(item_factors, metric="ip", config=config)
    similar = ann.build_index(item_factors, metric="cosine", config=config)
    k = min(config.recall_k, len(item_factors))
    users = rng.choice(len(user_factors), size=min(config.recall_queries, len(user_factors)), replace=False)
    items = rng.choice(len(item_factors), size=min(config.recall_queries, len(item_factors)), replace=False)
    section = {
        "kind": ann.index_kind(index),
        "recall_k": k,
        "recall": ann.measure_recall(index, item_factors, user_factors[users], k=k, metric="ip"),
        "similar_kind": ann.index_kind(similar),
        "similar_recall": ann.measure_recall(
            similar, item_factors, item_factors[items], k=k, metric="cosine"
        ),
        "queries": len(users),
    }
    return index, similar, section


def fit_and_evaluate(
    settings: Settings, prepared: Prepared, *, items_path: Path | None = None, progress: bool = False
) -> TrainResult:
    """Fit on the training split, score model and popularity on the hold-out, index the items."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    model = fit(settings.training, prepared.train, progress=progress)
    timings["fit"] = time.perf_counter() - started

    started = time.perf_counter()
    evaluation = evaluate(
        model,
        prepared.train,
        prepared.test,
        k=settings.evaluation.k,
        max_users=settings.evaluation.max_users,
        seed=settings.training.random_state,
    )
    timings["evaluate"] = time.perf_counter() - started

    # All events, held-out ones included: serving folds a user's whole history in from this and
    # `excluded` (what they bought or dismissed, never recommended), and a refit learns from it.
    all_events = interaction_matrix(prepared.events)
    if settings.training.refit_on_full_data:
        started = time.perf_counter()
        model = fit(settings.training, all_events, progress=progress)
        timings["refit"] = time.perf_counter() - started

    user_factors = np.ascontiguousarray(model.user_factors, dtype=np.float32)
    item_factors = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    started = time.perf_counter()
    index, similar, index_section = _index_section(settings, item_factors, user_factors)
    timings["index"] = time.perf_counter() - started

    manifest: dict[str, Any] = {
        "parameters": {
            **model_parameters(settings.training),
            "half_life_days": settings.events.half_life_days,
            "event_weights": {name: t.model_dump() for name, t in settings.events.types.items()},
            "refit_on_full_data": settings.training.refit_on_full_data,
        },
        "data": _data_summary(prepared),
        "evaluation": {
            "split": settings.evaluation.split,
            "k": settings.evaluation.k,
            "users_evaluated": evaluation.users_evaluated,
        },
        "metrics": {"model": evaluation.model, "popularity": evaluation.popularity},
        "index": index_section,
    }
    artifact = ModelArtifact(
        user_ids=prepared.events.user_ids,
        item_ids=prepared.events.item_ids,
        user_factors=user_factors,
        item_factors=item_factors,
        popularity=_popularity(prepared.events),
        items=_catalog(items_path, prepared.events.item_ids.ids),
        index=index,
        similar_index=similar,
        manifest=manifest,
        user_items=all_events,
        user_excluded=excluded_matrix(prepared.events),
    )
    return TrainResult(artifact, evaluation, timings)


def metric_of(manifest: dict[str, Any], metric: str) -> float | None:
    """A model metric from a manifest, or None when that manifest does not have it."""
    value = manifest.get("metrics", {}).get("model", {}).get(metric)
    return float(value) if value is not None else None


def publish(
    settings: Settings,
    result: TrainResult,
    registry: Registry,
    *,
    promote: bool = False,
    promote_if_better: bool = False,
) -> tuple[str, bool, str]:
    """Write the artifact as a new version; promote it when asked (or when it is better).

    Returns (version, promoted, reason). "Better" compares the configured metric with the
    current model's manifest; both were measured on a hold-out of their own training data.
    The comparison and the promotion happen under the registry's lock, so of two runs
    publishing at once the better model ends up current, whichever finishes last.
    """
    version = registry.publish(result.artifact)
    if promote:
        registry.promote(version)
        return version, True, "promoted as asked"
    if not promote_if_better:
        return version, False, "not promoted (use `recsvc models promote`)"
    metric = settings.evaluation.promote_metric
    comparison = _Comparison(registry, metric, metric_of(result.manifest, metric))
    promoted = registry.promote_if(version, comparison.better)
    return version, promoted, comparison.reason


@dataclass
class _Comparison:
    """Decides whether a new model beats the registry's current one, and remembers why."""

    registry: Registry
    metric: str
    new_score: float | None
    reason: str = "promoted: it is current already"

    def better(self, current: str | None) -> bool:
        """`Registry.promote_if`'s question, asked with the current version read under its lock."""
        metric, new_score = self.metric, self.new_score
        old_score = metric_of(self.registry.manifest(current), metric) if current else None
        if current is None or old_score is None:
            self.reason = f"promoted: no current model to compare {metric} with"
            return True
        if new_score is not None and new_score > old_score:
            self.reason = f"promoted: {metric} {new_score:.4f} > {old_score:.4f} of {current}"
            return True
        shown = "none" if new_score is None else f"{new_score:.4f}"
        self.reason = f"kept {current}: {metric} {shown} <= {old_score:.4f}"
        return False


def train(
    settings: Settings,
    *,
    events: Path | Sequence[Path] | None = None,
    items: Path | None = None,
    progress: bool = False,
    forgotten: Collection[str] | None = None,
) -> TrainResult:
    """Load, prepare, fit, evaluate and index, timing each stage."""
    started = time.perf_counter()
    event_files, items_path = dataset_inputs(settings, events, items)
    loaded = load_events(settings, event_files, forgotten=forgotten)
    load_seconds = time.perf_counter() - started
    started = time.perf_counter()
    prepared = prepare(settings, loaded)
    prepare_seconds = time.perf_counter() - started
    result = fit_and_evaluate(settings, prepared, items_path=items_path, progress=progress)
    result.timings = {"load": load_seconds, "prepare": prepare_seconds, **result.timings}
    return result
