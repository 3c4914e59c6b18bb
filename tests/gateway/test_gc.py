"""The standalone gateway's garbage-collection settings (apps.gateway.app.freeze_heap): the
startup heap out of the collector's reach, so that a full collection no longer walks it."""

from __future__ import annotations

import gc
import time

from apps.gateway.app import GC_THRESHOLDS, freeze_heap


def test_freezing_the_heap_leaves_a_full_collection_nothing_of_it_to_walk():
    thresholds = gc.get_threshold()
    try:
        # Given a heap like the gateway's after startup (the test process has Django loaded)
        heap = [{"i": i, "l": [i]} for i in range(100_000)]
        start = time.perf_counter()
        gc.collect()
        before = time.perf_counter() - start

        # When it is frozen
        freeze_heap()
        start = time.perf_counter()
        gc.collect()
        after = time.perf_counter() - start

        # Then a full collection skips it, and young objects are collected less often
        assert gc.get_freeze_count() >= len(heap)
        assert after < before / 5
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
