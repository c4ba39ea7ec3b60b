"""The channel's shared-memory arena: its ring of slots and what a replica agrees to map (no Ray)."""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import pytest

from ensemble.arena import Arena, ArenaError, Slot, open_arena


def block(rows: int, value: float) -> np.ndarray:
    return np.full((rows, 4, 2), value, dtype=np.float32)


def test_slots_never_overlap_and_keep_their_windows_until_released_in_any_order():
    arena = Arena(64 * 1024)
    view = open_arena(arena.path)  # what the replica reads
    rng = random.Random(5)
    live: list[tuple[Slot, np.ndarray]] = []
    refused = 0
    for step in range(3000):
        if live and (rng.random() < 0.5 or len(live) > 12):
            slot, data = live.pop(rng.randrange(len(live)))
            assert bytes(view[slot.start:slot.start + slot.nbytes]) == data.tobytes()
            arena.release(slot)
            continue
        data = block(rng.choice([1, 3, 17, 100, 300]), float(step))
        slot = arena.put(data)
        if slot is None:
            refused += 1
            continue
        assert 0 <= slot.start and slot.start + slot.nbytes <= 64 * 1024 and slot.start % 64 == 0
        for other, _ in live:
            assert slot.end <= other.start or other.end <= slot.start
        live.append((slot, data))
    assert 0 < refused < 1000  # full at times, not stuck
    for slot, data in live:
        assert bytes(view[slot.start:slot.start + slot.nbytes]) == data.tobytes()
        arena.release(slot)
    assert arena.slots_in_use == 0
    assert arena.put(block(2000, 1.0)) is not None  # empty again: a call of the whole ring fits
    assert arena.put(block(2049, 1.0)) is None  # larger than the ring: goes in its frame


def test_a_slot_held_by_a_slow_call_keeps_its_space_while_later_ones_come_and_go():
    arena = Arena(4096)
    slow = arena.put(block(32, 1.0))  # 1 KiB at the start
    for step in range(50):  # the ring wraps around the held slot, never over it
        slot = arena.put(block(32, 2.0))
        assert slot is not None and (slot.end <= slow.start or slot.start >= slow.end)
        arena.release(slot)
    assert arena.slots_in_use == 1
    filler = [arena.put(block(32, 3.0)) for _ in range(3)]
    assert all(filler) and arena.put(block(32, 4.0)) is None  # only the held slot's space is left
    arena.release(slow)
    assert arena.put(block(16, 4.0)).start == 0  # the freed space, before the live slots


def test_a_replica_maps_only_a_callers_arena():
    arena = Arena(4096)
    assert len(open_arena(arena.path)) == 4096
    with tempfile.TemporaryFile() as regular:
        with pytest.raises(ArenaError):
            open_arena(f"/proc/{os.getpid()}/fd/{regular.fileno()}")
    for path in ("/etc/hostname", f"/proc/{os.getpid()}/fd/{arena.path.rsplit('/', 1)[1]}/../../environ"):
        with pytest.raises(ArenaError):
            open_arena(path)
    arena.close_fd()
    with pytest.raises(OSError):
        open_arena(arena.path)  # once the caller closed it, nobody else can map it
