"""Setting a process's niceness reaches every one of its threads, or says why not."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ensemble import niceness

ROOT = Path(__file__).resolve().parents[2]
# In a child process, so that this one keeps its niceness: a thread started before the call
# must be reniced too, and one started after it inherits the value.
CHILD = """
import os, threading
from ensemble.niceness import set_niceness
release = threading.Event()
threading.Thread(target=release.wait).start()
refused = set_niceness(19)
later = threading.Thread(target=release.wait)
later.start()
print(refused, sorted({os.getpriority(os.PRIO_PROCESS, int(tid)) for tid in os.listdir("/proc/self/task")}))
release.set()
"""


@pytest.mark.skipif(not os.path.isdir(niceness.TASKS), reason="needs Linux's /proc/self/task")
def test_every_thread_gets_the_niceness() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "[19]"]


def test_a_refusal_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(which: int, who: int, value: int) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "setpriority", refuse)
    monkeypatch.setattr(os, "listdir", lambda path: ["1"])
    assert "needs CAP_SYS_NICE" in niceness.set_niceness(0)
