"""The cyclic garbage collector's settings for the long-running processes (scheduler, workers, API).

Set once per process at start-up by its entry point (`tune_collector`), not around each campaign
run: thresholds are process-wide, so a per-run raise needed a lock and a count of runs in flight
to know when to restore them, and every process that runs or serves gains from them anyway.
"""

from __future__ import annotations

import gc

# The collector's first threshold (CPython's default: 700). A campaign run's batch keeps some 10^5
# objects alive at once (users, outcomes, messages). CPython collects after every 700 net new
# objects and walks everything alive at each tenth of a tenth of those collections, so at the
# default threshold the collector re-walked whole batches again and again: a sixth of a run's time.
COLLECTOR_THRESHOLD = 50_000


def tune_collector() -> None:
    """Raise the first threshold to `COLLECTOR_THRESHOLD` (never lower it) and freeze what exists.

    Freezing moves the objects alive now (modules, settings, the app) out of the collector's
    sight: they live as long as the process, and walking them at every full collection is
    wasted. Call it at start-up, before a model is loaded: a model swapped out later must stay
    collectable. Idempotent: a second call changes nothing (it freezes nothing more).
    """
    first, second, third = gc.get_threshold()
    if first < COLLECTOR_THRESHOLD:
        gc.set_threshold(COLLECTOR_THRESHOLD, second, third)
    if gc.get_freeze_count() == 0:
        gc.freeze()
