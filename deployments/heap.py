"""A replica's heap once what it serves with is loaded."""
import gc


def freeze_loaded() -> None:
    """Collect what loading left behind, then leave the rest out of the collector's walks: it lives
    as long as the replica, and a full collection walked all of it (about 70 ms in a router
    replica, 65 in a process holding a torch net), stalling every call in flight. Called before
    the replica serves, so the collection here stalls nothing."""
    gc.collect()
    gc.freeze()
