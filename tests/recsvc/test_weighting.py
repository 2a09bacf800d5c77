from __future__ import annotations

import numpy as np
import pytest

from recsvc.config import EventsConfig, EventType
from recsvc.errors import InputError
from recsvc.weighting import MAX_EVENT_VALUE, MICROS_PER_DAY, MIN_DECAY, decay_factors, type_weights

CONFIG = EventsConfig(
    types={
        "view": EventType(weight=1.0),
        "purchase": EventType(weight=8.0),
        "rate": EventType(weight=0.5, value="linear"),
        "play": EventType(weight=2.0, value="log1p"),
    },
    half_life_days=10.0,
)
NAMES = ["view", "purchase", "rate", "play"]


def test_decay_halves_every_half_life() -> None:
    reference = 100 * MICROS_PER_DAY
    ts = np.array([reference, reference - 10 * MICROS_PER_DAY, reference - 30 * MICROS_PER_DAY], np.int64)
    decay = decay_factors(ts, reference_us=reference, half_life_days=10.0)
    np.testing.assert_allclose(decay, [1.0, 0.5, 0.125], rtol=1e-6)


def test_future_events_are_not_boosted_and_zero_half_life_disables_decay() -> None:
    ts = np.array([5 * MICROS_PER_DAY, 0], np.int64)
    assert decay_factors(ts, reference_us=0, half_life_days=10.0)[0] == 1.0
    np.testing.assert_array_equal(decay_factors(ts, reference_us=10**12, half_life_days=0.0), [1.0, 1.0])


def test_decades_of_decay_never_reach_zero() -> None:
    """ML-100K's 1998 ratings beside one 2026 event underflowed float32 to 0 and left the matrix."""
    reference = 20_000 * MICROS_PER_DAY
    ages = np.array([0, 64 * 30, 10_300, 20_000], np.int64) * MICROS_PER_DAY  # 20,000 days: 1970
    decay = decay_factors(reference - ages, reference_us=reference, half_life_days=30.0)
    assert decay.dtype == np.float32
    np.testing.assert_array_equal(decay, np.array([1.0, MIN_DECAY, MIN_DECAY, MIN_DECAY], np.float32))
    short = decay_factors(reference - ages, reference_us=reference, half_life_days=1.0)
    assert (short > 0).all() and (short * np.float32(1e-18) > np.finfo(np.float32).tiny).all()


def test_type_weights_scale_by_value_as_configured() -> None:
    codes = np.array([0, 1, 2, 2, 3, 3])
    values = np.array([9.0, 9.0, 4.0, np.nan, np.e - 1, -5.0])
    weights = type_weights(codes, NAMES, values, CONFIG)
    # view ignores its value; purchase too; rate 0.5*4 and 0.5*1 (missing = 1); play 2*log1p(e-1) = 2
    # and a negative play count counts as nothing.
    np.testing.assert_allclose(weights, [1.0, 8.0, 2.0, 0.5, 2.0, 0.0], rtol=1e-6)


def test_a_huge_value_counts_as_the_largest_and_stays_finite() -> None:
    codes = np.array([2, 2, 3])
    weights = type_weights(codes, NAMES, np.array([1e300, MAX_EVENT_VALUE, 1e300]), CONFIG)
    # 1e300 would overflow float32 into an infinite confidence.
    np.testing.assert_allclose(
        weights, [0.5 * MAX_EVENT_VALUE, 0.5 * MAX_EVENT_VALUE, 2.0 * np.log1p(MAX_EVENT_VALUE)], rtol=1e-6
    )
    assert np.isfinite(weights).all()


def test_unknown_type_is_an_input_error() -> None:
    with pytest.raises(InputError, match="'like'"):
        type_weights(np.array([0]), ["like"], None, CONFIG)
