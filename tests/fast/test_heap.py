import gc
import weakref

from deployments.heap import freeze_loaded


class Node:
    def __init__(self) -> None:
        self.other: "Node | None" = None


def test_loading_garbage_is_collected_and_the_rest_left_out_of_collections():
    cycle, kept = Node(), Node()
    cycle.other, cycle.other.other = Node(), cycle  # a cycle only the collector frees
    gone = weakref.ref(cycle)
    del cycle
    try:
        freeze_loaded()
        assert gone() is None
        assert gc.get_freeze_count() > 0 and not any(obj is kept for obj in gc.get_objects())
    finally:
        gc.unfreeze()
