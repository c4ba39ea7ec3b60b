"""What the benchmarks' smoke tests share: wrk or a skip, one bench module run, the processes it left."""
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.servers import REPO
from bench.wrk import WrkMissing, ensure_wrk


def need_wrk() -> None:
    """wrk, installed when missing where the harness may (apt-get, as root); elsewhere the test skips."""
    try:
        ensure_wrk()
    except WrkMissing as exc:
        pytest.skip(str(exc))


def run_bench(module: str, args: list[str], out: Path) -> dict[str, Any]:
    """`python -m <module> <args> --out <out>` to completion; its results."""
    done = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def left_running(pids: list[int]) -> list[int]:
    """Those of `pids` still running (a zombie has stopped)."""
    return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
