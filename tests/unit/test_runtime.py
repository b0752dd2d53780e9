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


def in_the_collectors_generations(target: object) -> bool:
    """Whether the collector walks `target`: frozen objects are in none of its generations."""
    return any(tracked is target for tracked in gc.get_objects())


def test_live_objects_are_frozen_until_the_end_and_cycles_made_inside_are_still_freed() -> None:
    kept = Node()
    assert in_the_collectors_generations(kept)
    with start_up_frozen():
        assert gc.get_freeze_count() > 0
        assert not in_the_collectors_generations(kept)
        made_inside = weakref.ref(Node())  # unreachable at once: a cycle the collector must free
        gc.collect()
        assert made_inside() is None
        # The collection left the frozen alone. (Not the freeze count, which also falls when a
        # frozen object's last reference goes, as other tests' lingering threads may let it.)
        assert not in_the_collectors_generations(kept)
    assert gc.get_freeze_count() == 0
    assert in_the_collectors_generations(kept)
    assert kept.me is kept


def test_disabled_it_freezes_nothing() -> None:
    with start_up_frozen(enabled=False):
        assert gc.get_freeze_count() == 0
