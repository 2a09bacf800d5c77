"""The collector's start-up tuning: a higher first threshold, start-up objects frozen, once.

The autouse `untuned_collector` fixture (tests/conftest.py) restores the thresholds and
unfreezes after each test.
"""

from __future__ import annotations

import gc

from recsvc.gc_tuning import COLLECTOR_THRESHOLD, tune_collector


def test_tuning_raises_the_first_threshold_and_freezes_once() -> None:
    gc.set_threshold(700, 10, 10)
    assert gc.get_freeze_count() == 0  # nothing froze this test process before
    tune_collector()
    assert gc.get_threshold() == (COLLECTOR_THRESHOLD, 10, 10)
    frozen = gc.get_freeze_count()
    assert frozen > 0
    created_since = [[n] for n in range(1_000)]  # tracked objects a second freeze would take in
    tune_collector()
    assert gc.get_threshold() == (COLLECTOR_THRESHOLD, 10, 10)
    # At most as many as before: frozen objects can still be freed meanwhile (an idle worker
    # thread of an earlier test exiting), but a second freeze would add the 1,000 lists.
    assert gc.get_freeze_count() <= frozen and len(created_since) == 1_000


def test_tuning_never_lowers_a_higher_threshold() -> None:
    gc.set_threshold(2 * COLLECTOR_THRESHOLD, 20, 30)
    tune_collector()
    assert gc.get_threshold() == (2 * COLLECTOR_THRESHOLD, 20, 30)
