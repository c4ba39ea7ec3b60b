"""The serving processes' malloc thresholds, in fresh interpreters (no Ray)."""
from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

# 64-row calls read as a socket delivers them (64 KiB reads), four merged into one model call and
# featurised, as a member replica does; prints the minor page faults of 50 such model calls.
CALLS = """
import resource, sys
import numpy as np
from ensemble.channel import CALL, _Frames
from ensemble.heap import keep_large_buffers_mapped
if sys.argv[1] == "kept":
    assert keep_large_buffers_mapped()
body = np.ones(64 * 128 * 8, dtype=np.float32).tobytes()
stream = (CALL.pack(1, len(body)) + body) * 4
frames = _Frames(CALL)
def calls(n):
    for _ in range(n):
        received = []
        for at in range(0, len(stream), 65536):
            received += frames.feed(stream[at:at + 65536])
        merged = np.concatenate([np.frombuffer(payload, dtype=np.float32) for _, payload in received])
        features = merged.astype(np.float64)
        del received, merged, features
calls(5)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
calls(50)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                           reason="mallopt is glibc's")


def page_faults(setting: str) -> int:
    done = subprocess.run([sys.executable, "-c", CALLS, setting], capture_output=True, text=True, check=True, timeout=60)
    return int(done.stdout.strip())


@glibc
def test_calls_reuse_the_heap_once_large_buffers_stay_mapped():
    default, kept = page_faults("default"), page_faults("kept")
    # glibc's defaults map, fault in and unmap the call buffers every time (about 1,000 faults a call).
    assert default > 50 * 500
    assert kept < default / 20

