"""A whole process's scheduling niceness. Linux keeps it per thread: setting it for the process
means setting it for each thread, and threads started later inherit their starter's."""
from __future__ import annotations

import os

TASKS = "/proc/self/task"


def set_niceness(value: int) -> str | None:
    """Give every thread of this process the niceness `value`: None when done, else why not
    (a lower value than now needs CAP_SYS_NICE, which root has)."""
    try:
        threads = [int(tid) for tid in os.listdir(TASKS)]
    except OSError as exc:
        return f"this process's threads are not listed ({exc})"
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, value)
        except ProcessLookupError:
            continue  # the thread ended meanwhile
        except PermissionError as exc:
            return f"niceness {value} refused ({exc}): a lower value than now needs CAP_SYS_NICE"
    return None
