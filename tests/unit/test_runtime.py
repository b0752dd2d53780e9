"""start_up_frozen: what exists on entry leaves the collector's walks, and comes back on exit;
garbage made before entry is collected first, not frozen for good."""

from __future__ import annotations

import gc
import weakref

from postal.runtime import start_up_frozen


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_a_cycle_made_before_is_collected_not_frozen() -> None:
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    with start_up_frozen():
        assert gone() is None
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_live_objects_are_frozen_until_the_end_and_cycles_made_inside_are_still_freed() -> None:
    kept = Node()
    with start_up_frozen():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        made_inside = weakref.ref(Node())  # unreachable at once: a cycle the collector must free
        gc.collect()
        assert made_inside() is None
        assert gc.get_freeze_count() == frozen  # the collection left the frozen alone
    assert gc.get_freeze_count() == 0
    assert kept.me is kept


def test_disabled_it_freezes_nothing() -> None:
    with start_up_frozen(enabled=False):
        assert gc.get_freeze_count() == 0
