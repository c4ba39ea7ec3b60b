"""Shared memory for the windows of direct-channel calls between two processes of one node.

A caller whose member replica runs on its node writes each call's windows into its arena, an
anonymous memory file (memfd) that the replica maps too, and the call's frame carries only where
they lie; the replica's model reads them in place. Over TCP loopback the windows cross the
kernel twice and are read into freshly allocated buffers: eight 64-window calls (256 KiB each)
in flight cost a tree replica 583 CPU µs a call there against 207 through the arena, where the
calls that arrive together merge into model calls of up to 256 rows (BENCHMARKS.md, "What changed").

The replica opens the arena through `/proc/<caller pid>/fd/<fd>` while the caller holds it open,
so nothing is named in a file system and nothing outlives the two processes. The caller reserves
the arena's memory up front, so a node without it refuses here and the calls go in the frame.
"""
from __future__ import annotations

import mmap
import os
import re
from collections import deque

import numpy as np

ARENA_BYTES = 4 * 1024 * 1024  # four calls of 256 windows of 128x8, sixteen of 64
_MEMFD_NAME = "ensemble-channel-arena"
_ALIGN = 64  # each slot starts on a cache line
_CALLER_FD = re.compile(r"/proc/\d+/fd/\d+")
_FLOAT32 = np.dtype("<f4")


class ArenaError(OSError):
    """What a replica was asked to map is not a caller's arena."""


def _span(nbytes: int) -> int:
    """Bytes of the ring a slot of `nbytes` takes: whole cache lines, at least one."""
    return max(1, -(-nbytes // _ALIGN)) * _ALIGN


class Slot:
    """Where one call's windows lie in the arena, until its answer is in."""

    __slots__ = ("start", "nbytes", "end", "released")

    def __init__(self, start: int, nbytes: int) -> None:
        self.start, self.nbytes = start, nbytes
        self.end = start + _span(nbytes)
        self.released = False


class Arena:
    """The caller's end: a ring of slots, taken in order and released in any order (answers come
    back in any order); space frees up as the oldest or the newest slots are released. A call that
    does not fit gets no slot and goes in its frame."""

    def __init__(self, size: int = ARENA_BYTES) -> None:
        if not hasattr(os, "memfd_create"):
            raise ArenaError("no anonymous memory files (memfd) on this platform")
        fd = os.memfd_create(_MEMFD_NAME, os.MFD_CLOEXEC)
        try:
            os.posix_fallocate(fd, 0, size)  # memory that is not there fails now, not as SIGBUS later
            self._bytes = np.frombuffer(mmap.mmap(fd, size), dtype=np.uint8)
        except OSError:
            os.close(fd)
            raise
        self._fd: int | None = fd
        self.path = f"/proc/{os.getpid()}/fd/{fd}"
        self._size = size
        self._live: deque[Slot] = deque()  # in the order taken, which is their order in the ring
        self._head = 0  # where the next slot starts if it fits

    def close_fd(self) -> None:
        """Once the replica has mapped the arena (or refused it), the caller's mapping is enough."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def put(self, windows: np.ndarray) -> Slot | None:
        """Copy `windows` (as float32) into a free slot; None when none is large enough."""
        data = np.ascontiguousarray(windows, dtype=_FLOAT32).reshape(-1).view(np.uint8)
        start = self._free_start(data.nbytes)
        if start is None:
            return None
        slot = Slot(start, data.nbytes)
        self._bytes[start:start + data.nbytes] = data
        self._live.append(slot)
        self._head = slot.end
        return slot

    def release(self, slot: Slot) -> None:
        slot.released = True
        while self._live and self._live[0].released:
            self._live.popleft()
        # The newest slots' space is taken again at once: calls that come and go one at a time
        # behind one held by a slow replica reuse the same bytes instead of filling the ring.
        while self._live and self._live[-1].released:
            self._live.pop()
        self._head = self._live[-1].end if self._live else 0

    @property
    def slots_in_use(self) -> int:
        return sum(not slot.released for slot in self._live)

    def _free_start(self, nbytes: int) -> int | None:
        need = _span(nbytes)
        if not self._live:
            return 0 if need <= self._size else None
        tail = self._live[0].start
        if self._head > tail:  # live slots lie in [tail, head): free after head, then before tail
            if self._head + need <= self._size:
                return self._head
            return 0 if need < tail else None
        # Wrapped: live slots lie in [tail, end) and [0, head); free only between. Strictly less,
        # so that head never reaches tail and a full ring never reads as an empty one.
        return self._head if self._head + need < tail else None


def open_arena(path: str) -> memoryview:
    """The replica's end: a read-only view of the arena a caller on this node sent the path of.
    ArenaError when `path` is not a caller's arena, OSError when it cannot be opened."""
    if not _CALLER_FD.fullmatch(path) or not os.readlink(path).startswith(f"/memfd:{_MEMFD_NAME}"):
        raise ArenaError(f"{path} is not a channel arena")
    fd = os.open(path, os.O_RDONLY)
    try:
        return memoryview(mmap.mmap(fd, 0, access=mmap.ACCESS_READ))
    finally:
        os.close(fd)
