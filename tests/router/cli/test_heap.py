"""The CLI's servers take their startup heap out of the garbage collector's generations."""

from __future__ import annotations

import gc

from router.cli._common import freeze_startup_heap


def test_freezing_the_startup_heap_leaves_live_objects_out_of_collections() -> None:
    before = gc.get_freeze_count()
    kept = [object() for _ in range(1000)]
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= before + len(kept)
    finally:
        gc.unfreeze()
