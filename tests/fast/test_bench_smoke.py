"""The harness end to end at tiny durations: the no-op Ray Serve app only, one connection count.

Starts a real local Ray (its own, in a subprocess the harness stops), so it is a `serve` test.
wrk is installed by the harness when missing (apt-get, as root); elsewhere the test skips.
"""
import json
from pathlib import Path

import pytest

from bench import run
from tests.fast.bench_runs import left_running, need_wrk

pytestmark = pytest.mark.serve


def test_noop_run_measures_writes_and_leaves_nothing_running(tmp_path: Path) -> None:
    need_wrk()
    code = run.main(["--source", "worktree", "--systems", "noop", "--settings", "default", "--connections", "2",
                     "--duration", "1", "--warmup", "0", "--quiet-wait", "0", "--no-plots", "--results-dir", str(tmp_path)])
    assert code == 0
    results = json.loads((tmp_path / "latest.json").read_text())
    (noop,) = results["runs"]
    (p,) = noop["points"]
    assert p["requests"] > 0 and p["non2xx"] == 0 and p["cpu_s"] > 0 and p["peak_rss_mb"] > 0
    assert "Main comparison" in next(tmp_path.glob("*.md")).read_text()
    assert len(noop["pids"]) > 3  # the runner, GCS, raylet, controller, proxy, replica...
    assert not left_running(noop["pids"])
