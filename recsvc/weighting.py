"""Confidence weights of events: the type's weight, scaled by the event's value, decayed by age.

Training and real-time fold-in both turn events into confidences, so both use this one
function: a purchase weighs the same in the nightly model and in the answer to the next request.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from recsvc.config import EventsConfig
from recsvc.errors import InputError

MICROS_PER_DAY = 86_400 * 1_000_000
# The largest event value that counts; a larger one counts as this. Values are ratings, play
# counts or prices, which say nothing more beyond it, and an unbounded one overflowed float32
# (from 1e39) into an infinite confidence that broke fold-in for that user for good (the event
# stays in their history) and would break training. The API refuses larger values.
MAX_EVENT_VALUE = 1e9
# The least an event's decay can leave of its weight: 2 ** -64, reached after 64 half-lives. Decay
# in float32 once underflowed to exactly 0 past 150 half-lives (ML-100K's 1998 ratings beside one
# 2026 event), and a zero confidence drops the event from the matrix without a word, down to an
# empty model. At the floor an event still means nothing to a model next to a fresh one, but it
# keeps its cell, and times any type weight from 1e-18 up it stays a normal float32.
MIN_DECAY = 2.0**-64


def decay_factors(
    ts_us: npt.NDArray[np.int64], *, reference_us: int, half_life_days: float
) -> npt.NDArray[np.float32]:
    """0.5 ** (age / half-life), never below `MIN_DECAY`; events newer than the reference count
    fully (no boost)."""
    if half_life_days <= 0:
        return np.ones(len(ts_us), dtype=np.float32)
    age_days = np.maximum(reference_us - ts_us, 0).astype(np.float64) / MICROS_PER_DAY
    return np.maximum(np.exp2(-age_days / half_life_days), MIN_DECAY).astype(np.float32)


def type_weights(
    type_codes: npt.NDArray[np.integer],
    type_names: Sequence[str],
    values: npt.NDArray[np.float64] | None,
    config: EventsConfig,
) -> npt.NDArray[np.float32]:
    """Per-event weight before decay, from dictionary-encoded types (codes index `type_names`).

    A missing value (NaN) counts as 1 for value-scaled types; negative values count as 0, so a
    bad rating can lower but never invert a preference; values above `MAX_EVENT_VALUE` count as it.
    """
    unknown = [name for name in type_names if name not in config.types]
    if unknown:
        raise InputError(f"unknown event type(s) {sorted(unknown)}; configure them under [events.types]")
    per_type = np.array([config.types[name].weight for name in type_names], dtype=np.float32)
    weights: npt.NDArray[np.float32] = per_type[type_codes]
    if values is None:
        return weights
    for code, name in enumerate(type_names):
        transform = config.types[name].value
        if transform == "ignore":
            continue
        rows = type_codes == code
        scale = np.nan_to_num(values[rows], nan=1.0).clip(min=0.0, max=MAX_EVENT_VALUE)
        if transform == "log1p":
            scale = np.log1p(scale)
        weights[rows] *= scale.astype(np.float32)
    return weights
