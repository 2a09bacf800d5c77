from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from recsvc.config import EventsConfig, EventType
from recsvc.errors import InputError
from recsvc.schema import EVENT_SCHEMA
from training.matrix import encode_events, excluded_matrix, interaction_matrix, min_interactions_mask

NOW = datetime(2024, 5, 1, tzinfo=UTC)
CONFIG = EventsConfig(
    types={"view": EventType(weight=1.0), "purchase": EventType(weight=8.0)}, half_life_days=7.0
)


def events(rows: list[tuple[str, str, str, float]]) -> pa.Table:
    """Rows of (user, item, type, age in days before NOW)."""
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "type": [r[2] for r in rows],
            "ts": [NOW - timedelta(days=r[3]) for r in rows],
            "value": [None] * len(rows),
        },
        schema=EVENT_SCHEMA,
    )


def test_duplicates_sum_with_type_weights_and_decay() -> None:
    encoded = encode_events(
        events(
            [
                ("u1", "a", "view", 0),
                ("u1", "a", "view", 7),  # one half-life old: 0.5
                ("u1", "a", "purchase", 14),  # 8 * 0.25
                ("u2", "b", "view", 0),
            ]
        ),
        CONFIG,
    )
    matrix = interaction_matrix(encoded).toarray()
    u1, u2 = encoded.user_ids.index_of("u1"), encoded.user_ids.index_of("u2")
    a, b = encoded.item_ids.index_of("a"), encoded.item_ids.index_of("b")
    assert matrix[u1, a] == np.float32(1.0 + 0.5 + 2.0)
    assert matrix[u2, b] == 1.0
    assert matrix[u1, b] == 0 and matrix[u2, a] == 0
    assert encoded.type_counts == {"view": 3, "purchase": 1}


def test_decay_is_measured_from_the_newest_event_not_the_clock() -> None:
    old = encode_events(events([("u1", "a", "view", 400), ("u1", "b", "view", 407)]), CONFIG)
    assert sorted(old.weights.tolist()) == [0.5, 1.0]


def test_half_life_can_be_changed_after_encoding() -> None:
    encoded = encode_events(events([("u1", "a", "view", 0), ("u1", "b", "view", 14)]), CONFIG)
    assert sorted(encoded.with_half_life(14.0).weights.tolist()) == [0.5, 1.0]
    assert sorted(encoded.with_half_life(0.0).weights.tolist()) == [1.0, 1.0]


def test_min_interactions_drops_sparse_users_and_items_then_compacts() -> None:
    rows = [("u1", item, "view", 0) for item in "abc"] + [("u2", "a", "view", 0), ("u2", "a", "view", 1)]
    rows += [("u3", item, "view", 0) for item in "ab"]
    encoded = encode_events(events(rows), CONFIG)
    keep = min_interactions_mask(encoded, min_user=2, min_item=2)
    # u2 has one distinct item (two events) -> out; then c has one user -> out.
    kept = encoded.select(keep).compact()
    assert sorted(kept.user_ids.ids.tolist()) == ["u1", "u3"]
    assert sorted(kept.item_ids.ids.tolist()) == ["a", "b"]
    assert interaction_matrix(kept).shape == (2, 2)
    assert interaction_matrix(kept).nnz == 4


EXCLUDING = EventsConfig(
    types={
        "view": EventType(weight=1.0),
        "purchase": EventType(weight=8.0, exclude_from_recommendations=True),
        "dismiss": EventType(weight=0.0, exclude_from_recommendations=True),
    },
    half_life_days=7.0,
)


def test_events_of_excluded_types_are_marked_and_survive_select_compact_and_half_life() -> None:
    rows = [
        ("u1", "a", "view", 0),
        ("u1", "a", "purchase", 0),
        ("u2", "b", "dismiss", 1),
        ("u3", "c", "view", 2),
        ("u3", "b", "view", 2),
    ]
    encoded = encode_events(events(rows), EXCLUDING)
    assert encoded.excluded.tolist() == [False, True, True, False, False]

    kept = encoded.select(np.array([False, True, True, False, True])).compact()
    assert kept.excluded.tolist() == [True, True, False]
    assert kept.with_half_life(1.0).excluded.tolist() == [True, True, False]


def test_excluded_matrix_holds_one_per_cell_of_excluded_events_only() -> None:
    rows = [
        ("u1", "a", "view", 0),
        ("u1", "a", "purchase", 0),
        ("u1", "a", "purchase", 3),
        ("u1", "b", "view", 0),
        ("u2", "b", "dismiss", 1),
    ]
    encoded = encode_events(events(rows), EXCLUDING)

    matrix = excluded_matrix(encoded)

    u1, u2 = encoded.user_ids.index_of("u1"), encoded.user_ids.index_of("u2")
    a, b = encoded.item_ids.index_of("a"), encoded.item_ids.index_of("b")
    assert matrix.dtype == np.float32 and matrix.shape == (2, 2) and matrix.has_canonical_format
    assert {(int(r), int(c)) for r, c in zip(*matrix.nonzero(), strict=True)} == {(u1, a), (u2, b)}
    assert matrix.data.tolist() == [1.0, 1.0]
    # the dismissal weighs nothing, so the confidence matrix has no cell for it
    assert interaction_matrix(encoded)[u2, b] == 0


def test_decades_old_events_keep_their_cells_and_a_warning_names_the_decay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Years of old events beside one new one: kept (not silently dropped), and the user is told."""
    rows = [(f"u{n}", "a", "view", 10_300) for n in range(3)] + [("u0", "b", "purchase", 0)]
    with caplog.at_level(logging.WARNING, logger="training.matrix"):
        encoded = encode_events(events(rows), CONFIG)
    assert interaction_matrix(encoded).nnz == 4
    assert (encoded.weights > 0).all()
    [record] = caplog.records
    message = record.getMessage()
    assert "3 of 4 events (75.0%)" in message and "half_life_days=7.0" in message
    assert (NOW - timedelta(days=10_300)).date().isoformat() in message and NOW.isoformat() in message


def test_no_decay_warning_while_most_events_still_count(caplog: pytest.LogCaptureFixture) -> None:
    rows = [("u0", "a", "view", 10_300), ("u1", "a", "view", 1), ("u1", "b", "view", 0)]
    with caplog.at_level(logging.WARNING, logger="training.matrix"):
        encode_events(events(rows), CONFIG)
    assert caplog.records == []


def test_a_matrix_without_interactions_is_refused_with_the_cause() -> None:
    rows = [("u1", "a", "dismiss", 30), ("u2", "b", "dismiss", 0)]
    encoded = encode_events(events(rows), EXCLUDING)
    with pytest.raises(InputError, match="no interactions to train on") as caught:
        interaction_matrix(encoded)
    detail = caught.value.detail
    assert "all 2 events weigh 0 (2 by their type's weight or value, 0 by decay" in detail
    assert "half_life_days=7.0" in detail and (NOW - timedelta(days=30)).isoformat() in detail
    with pytest.raises(InputError, match="no events are left"):
        interaction_matrix(encoded.select(np.zeros(2, dtype=bool)))
    assert encoded.with_half_life(3.0).half_life_days == 3.0
