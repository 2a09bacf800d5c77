"""From an event table to dense ids, per-event confidences and the user x item CSR matrix.

Events stay one row each until the split has decided which are training data; only then are
duplicates summed into matrix cells, so nothing from the held-out future leaks into a cell.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsvc.config import EventsConfig
from recsvc.errors import InputError
from recsvc.idmap import IdMap
from recsvc.weighting import decay_factors, type_weights
from training.split import iso_time

log = logging.getLogger(__name__)

# An event decayed to less than this share of its weight is as good as gone: next to fresh events
# a model learns nothing from it. Training warns when decay leaves most events under it.
NEGLIGIBLE_DECAY = 1e-6


@dataclass(frozen=True)
class EncodedEvents:
    """Events as parallel arrays over dense user and item indices."""

    user_ids: IdMap
    item_ids: IdMap
    users: npt.NDArray[np.int32]
    items: npt.NDArray[np.int32]
    ts_us: npt.NDArray[np.int64]
    base_weights: npt.NDArray[np.float32]
    weights: npt.NDArray[np.float32]
    excluded: npt.NDArray[np.bool_]  # of a type with `exclude_from_recommendations` (purchase, dismiss)
    reference_us: int
    half_life_days: float  # the decay in `weights`, measured back from `reference_us`
    type_counts: dict[str, int]

    def __len__(self) -> int:
        return len(self.users)

    def select(self, mask: npt.NDArray[np.bool_]) -> EncodedEvents:
        """The same events restricted to `mask`, with the id maps unchanged."""
        return replace(
            self,
            users=self.users[mask],
            items=self.items[mask],
            ts_us=self.ts_us[mask],
            base_weights=self.base_weights[mask],
            weights=self.weights[mask],
            excluded=self.excluded[mask],
        )

    def with_half_life(self, half_life_days: float) -> EncodedEvents:
        """The same events decayed with another half-life (for tuning it)."""
        decay = decay_factors(self.ts_us, reference_us=self.reference_us, half_life_days=half_life_days)
        return replace(self, weights=self.base_weights * decay, half_life_days=half_life_days)

    def compact(self) -> EncodedEvents:
        """Drop users and items with no events left, renumbering the rest in their old order."""
        kept_users, users = np.unique(self.users, return_inverse=True)
        kept_items, items = np.unique(self.items, return_inverse=True)
        return replace(
            self,
            user_ids=IdMap(self.user_ids.ids[kept_users]),
            item_ids=IdMap(self.item_ids.ids[kept_items]),
            users=users.astype(np.int32),
            items=items.astype(np.int32),
        )


def _dictionary(column: pa.ChunkedArray) -> tuple[npt.NDArray[np.int32], list[str]]:
    encoded = column.combine_chunks().dictionary_encode() if len(column) else pa.array([], pa.string())
    if not isinstance(encoded, pa.DictionaryArray):
        return np.zeros(0, dtype=np.int32), []
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return codes, encoded.dictionary.to_pylist()


def encode_events(table: pa.Table, config: EventsConfig) -> EncodedEvents:
    """Dense-encode ids (in order of first appearance) and weigh each event.

    Decay is measured from the newest event in the data, not from the wall clock, so training
    the same files twice gives the same model. When it leaves most events next to nothing (years
    of history beside a few new events), a warning says so: the model then learns from the few.
    """
    users, user_names = _dictionary(table.column("user_id"))
    items, item_names = _dictionary(table.column("item_id"))
    type_codes, type_names = _dictionary(table.column("type"))
    ts_us = table.column("ts").cast(pa.int64()).to_numpy().astype(np.int64, copy=False)
    values = None
    if "value" in table.column_names and table.column("value").null_count < len(table):
        values = pc.fill_null(table.column("value"), np.nan).to_numpy().astype(np.float64, copy=False)
    reference_us = int(ts_us.max()) if len(ts_us) else 0
    base_weights = type_weights(type_codes, type_names, values, config)
    decay = decay_factors(ts_us, reference_us=reference_us, half_life_days=config.half_life_days)
    _warn_if_mostly_decayed(ts_us, decay, reference_us, config.half_life_days)
    counts = np.bincount(type_codes, minlength=len(type_names))
    excluded_types = np.array(
        [config.types[name].exclude_from_recommendations for name in type_names], dtype=bool
    )
    return EncodedEvents(
        user_ids=IdMap(np.array(user_names, dtype=str)),
        item_ids=IdMap(np.array(item_names, dtype=str)),
        users=users,
        items=items,
        ts_us=ts_us,
        base_weights=base_weights,
        weights=base_weights * decay,
        excluded=excluded_types[type_codes],
        reference_us=reference_us,
        half_life_days=config.half_life_days,
        type_counts={name: int(count) for name, count in zip(type_names, counts, strict=True)},
    )


def _warn_if_mostly_decayed(
    ts_us: npt.NDArray[np.int64], decay: npt.NDArray[np.float32], reference_us: int, half_life_days: float
) -> None:
    """Warn when decay leaves more than half of the events under `NEGLIGIBLE_DECAY` of their weight.

    Relative to one new event, 28-year-old ratings are rightly worth next to nothing; but then
    the model is fitted on the new event alone, and whoever trains it has to hear that.
    """
    faded = int(np.count_nonzero(decay < NEGLIGIBLE_DECAY))
    if faded * 2 <= len(decay):
        return
    log.warning(
        "decay leaves %s of %s events (%.1f%%) with less than a millionth of their weight, so the "
        "model learns next to nothing from them: half_life_days=%s measured from the newest event "
        "(%s), the oldest is from %s; train on a recent window of events, or raise half_life_days "
        "(0 turns decay off)",
        f"{faded:,}",
        f"{len(decay):,}",
        100.0 * faded / len(decay),
        half_life_days,
        iso_time(reference_us),
        iso_time(int(ts_us.min())),
    )


def interaction_matrix(events: EncodedEvents) -> sp.csr_matrix:
    """Sum the confidences of repeated (user, item) events into one CSR cell each.

    A matrix without a single cell is refused: fitted on it, a model is noise that would still be
    evaluated and published, so the error says why no event weighed anything.
    """
    shape = (len(events.user_ids), len(events.item_ids))
    matrix = sp.csr_matrix((events.weights, (events.users, events.items)), shape=shape, dtype=np.float32)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    if matrix.nnz == 0:
        raise InputError(f"no interactions to train on: {_zero_weights(events)}")
    return matrix


def _zero_weights(events: EncodedEvents) -> str:
    """Why the events weigh nothing: how many weigh 0, by type or value and by decay, and when."""
    if len(events) == 0:
        return "no events are left for training"
    by_type = int(np.count_nonzero(events.base_weights == 0))
    by_decay = int(np.count_nonzero((events.weights == 0) & (events.base_weights != 0)))
    return (
        f"all {len(events):,} events weigh 0 ({by_type:,} by their type's weight or value, "
        f"{by_decay:,} by decay with half_life_days={events.half_life_days} measured from the "
        f"newest event, {iso_time(events.reference_us)}); the oldest is from "
        f"{iso_time(int(events.ts_us.min()))}, the newest from {iso_time(int(events.ts_us.max()))}"
    )


def excluded_matrix(events: EncodedEvents) -> sp.csr_matrix:
    """1.0 in each (user, item) cell with an event of an excluded type: never recommend these."""
    shape = (len(events.user_ids), len(events.item_ids))
    rows, cols = events.users[events.excluded], events.items[events.excluded]
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def min_interactions_mask(events: EncodedEvents, *, min_user: int, min_item: int) -> npt.NDArray[np.bool_]:
    """Events of users and items with enough distinct partners to learn from.

    One pass: users are counted first, then items among the remaining users, so the result is
    deterministic and cheap; a user may end a little under `min_user` after items are dropped.
    """
    keep = np.ones(len(events), dtype=bool)
    if min_user <= 1 and min_item <= 1:
        return keep
    pairs = np.unique(events.users.astype(np.int64) * len(events.item_ids) + events.items)
    pair_users = pairs // len(events.item_ids)
    pair_items = pairs % len(events.item_ids)
    user_ok = np.bincount(pair_users, minlength=len(events.user_ids)) >= min_user
    item_counts = np.bincount(pair_items[user_ok[pair_users]], minlength=len(events.item_ids))
    item_ok = item_counts >= min_item
    keep &= user_ok[events.users] & item_ok[events.items]
    return keep
