"""bench.ledger_scale on a small log: it fills a store, starts a ledger over it and joins labels."""
import subprocess
import sys

from bench.servers import REPO


def test_ledger_scale_runs_on_a_small_log() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.ledger_scale", "--rows", "2000", "--labels", "300",
                           "--rounds", "2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2,000 predictions logged" in done.stdout and "labels/s" in done.stdout, done.stdout
