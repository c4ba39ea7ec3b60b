"""Keep large buffers on the heap of a member replica (glibc malloc only; elsewhere nothing).

A 64-row call is 256 KiB of windows; merged with the calls queued behind it and featurised it
makes buffers of megabytes, and the frame buffer it is read into grows read by read. Under
glibc's defaults (mmap from 128 KiB up, the threshold moving with what was freed, the heap's top
trimmed) those were mapped, faulted in page by page and unmapped again call after call: with
eight 64-row calls in flight, page faults were a third of the replica's CPU (perf). A fixed mmap
threshold of 32 MiB and no trimming below 64 MiB keep them on a heap that stays mapped, at the
cost of not handing memory freed below that back to the system.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)
# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's largest (HEAP_MAX / 2 on 64-bit)
TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024  # far above a merged call of max_batch_rows (256: a few MiB)


def keep_large_buffers_mapped() -> bool:
    """Set this process's malloc thresholds; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        logger.warning("mallopt refused the heap thresholds; large buffers stay mapped per call")
    return ok
