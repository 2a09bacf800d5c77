"""From an event table to dense ids, per-event confidences and the user x item CSR matrix.

Events stay one row each until the split has decided which are training data; only then are
duplicates summed into matrix cells, so nothing from the held-out future leaks into a cell.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from recsvc.config import EventsConfig
from recsvc.idmap import IdMap
from recsvc.weighting import decay_factors, type_weights


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
        return replace(self, weights=self.base_weights * decay)

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
    the same files twice gives the same model.
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
        type_counts={name: int(count) for name, count in zip(type_names, counts, strict=True)},
    )


def interaction_matrix(events: EncodedEvents) -> sp.csr_matrix:
    """Sum the confidences of repeated (user, item) events into one CSR cell each."""
    shape = (len(events.user_ids), len(events.item_ids))
    matrix = sp.csr_matrix((events.weights, (events.users, events.items)), shape=shape, dtype=np.float32)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


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
